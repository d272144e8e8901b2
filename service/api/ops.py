"""Operations endpoints: /health."""

from __future__ import annotations

from litestar import get
from litestar.datastructures import State
from litestar.response import Response

from service.api.native import runtime_of
from service.api.schemas import Health


@get("/health", summary="Liveness and readiness: 200 once the model is loaded", sync_to_thread=False)
def health(state: State) -> Response[Health]:
    """Model status; never waits on the model."""
    runtime = runtime_of(state)
    s = runtime.scheduler
    if runtime.status == "ok" and s is not None:
        body = Health(status="ok", model=runtime.model_name, manifest=runtime.manifest,
                      model_sha256=runtime.model_sha256,
                      workers=s.workers, busy=s.busy, queued=s.queued)
        return Response(body, status_code=200)
    body = Health(status=runtime.status, model=runtime.model_name, detail=runtime.detail)  # type: ignore[arg-type]
    return Response(body, status_code=503, headers={"Retry-After": str(runtime.settings.retry_after_s)})


HANDLERS = [health]
