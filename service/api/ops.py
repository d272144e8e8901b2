"""Operations endpoints: /health, /metrics (Prometheus) and the playground page at /."""

from __future__ import annotations

from importlib.resources import files

import msgspec
from litestar import Request, get
from litestar.datastructures import State
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Response
from prometheus_client.exposition import choose_encoder

from service.api.native import runtime_of
from service.api.schemas import ErrorBody, Health, ModelHealth

PLAYGROUND = files("service.api").joinpath("static", "playground.html")
# everything the page needs is inline; it may talk to this server only, and never be framed
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@get("/health", summary="Liveness, with each model's state: 200 while the server runs, 503 draining",
     sync_to_thread=False, opt={"public": True})
def health(state: State) -> Response[Health]:
    """Every model's state (unloaded, loading, loaded, error); never waits on a model."""
    runtime = runtime_of(state)
    models = runtime.models
    entries = [msgspec.convert(slot.describe(), ModelHealth) for slot in models.slots.values()]
    loaded = [slot.scheduler for slot in models.loaded()]
    default = models.slots.get(models.default) if models.default else None
    body = Health(
        status="draining" if runtime.status == "draining" else "ok", model=models.default,
        state=default.state if default else None, detail=default.detail if default else None,
        manifest=default.loaded.manifest if default and default.loaded else None,
        model_sha256=default.loaded.sha256 if default and default.loaded else None,
        engine=default.engine if default else runtime.engine, workers=sum(s.workers for s in loaded),
        busy=sum(s.busy for s in loaded),
        queued=sum(s.queued for s in loaded), models=entries)
    if runtime.status == "draining":
        return Response(body, status_code=503, headers={"Retry-After": str(runtime.settings.retry_after_s)})
    return Response(body, status_code=200)


@get("/metrics", summary="Prometheus metrics (text format)", sync_to_thread=False, opt={"metrics": True},
     media_type=MediaType.TEXT, responses={
         401: ResponseSpec(ErrorBody, description="API keys are on, /metrics is not public, and the key is missing "
                           "or wrong.", generate_examples=False),
         404: ResponseSpec(ErrorBody, description="Metrics are off (MINIVAULT_METRICS=false).",
                           generate_examples=False)})
def metrics(request: Request, state: State) -> Response[bytes]:
    """Counters, histograms and gauges of this server, from its own registry."""
    m = runtime_of(state).metrics
    if m is None:
        raise NotFoundException("metrics are off (MINIVAULT_METRICS=false)")
    # the text format, or OpenMetrics when the scraper asks for it (Prometheus does)
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(m.registry), headers={"Content-Type": content_type})


@get("/", summary="The playground: a page to try prompts and watch tokens stream", sync_to_thread=False,
     opt={"public": True}, include_in_schema=False, media_type=MediaType.HTML)
def playground(state: State) -> Response[bytes]:
    """The one static page (no external assets); it asks for the API key when keys are on."""
    page = PLAYGROUND.read_bytes()
    if state.keyring is not None:
        page = page.replace(b'<body data-keys="off">', b'<body data-keys="on">', 1)
    return Response(page, media_type=MediaType.HTML, headers=_PAGE_HEADERS)


HANDLERS = [health, metrics, playground]
