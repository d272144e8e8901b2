"""The OpenAPI schema documents real limits, errors and media types; /schema works offline."""

from __future__ import annotations

import re

import pytest
from litestar.testing import TestClient

from service.api.app import create_app


@pytest.fixture(scope="module")
def client(tiny_model, tmp_path_factory):
    from service.config import Settings

    settings = Settings(model=str(tiny_model), log_file=str(tmp_path_factory.mktemp("oa") / "log.jsonl"), threads=1,
                        allowed_hosts="testserver.local")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def schema(client):
    r = client.get("/schema/openapi.json")
    assert r.status_code == 200
    return r.json()


def test_limits_inside_lists_and_unions_are_documented(schema):
    comp = schema["components"]["schemas"]
    gen = comp["GenerateRequest"]["properties"]
    assert gen["stop"]["items"] == {"type": "string", "minLength": 1, "maxLength": 256} and gen["stop"]["maxItems"] == 4
    seed = next(s for s in gen["seed"]["anyOf"] if s["type"] == "integer")
    assert seed["minimum"] == 0 and seed["maximum"] == 2**63 - 1
    assert comp["DetokenizeRequest"]["properties"]["tokens"]["items"] == {
        "type": "integer", "minimum": 0, "maximum": 2**31 - 1}
    oai = comp["CompletionRequest"]["properties"]
    assert {"type": "string", "minLength": 1, "maxLength": 256} in oai["stop"]["anyOf"]
    assert oai["n"]["maximum"] == 8 and oai["logprobs"]["anyOf"][0]["maximum"] == 5
    assert oai["presence_penalty"]["minimum"] == -2.0 and oai["max_tokens"]["anyOf"][0]["minimum"] == 0
    assert sorted(comp["ChatMessage"]["properties"]["role"]["enum"]) == ["assistant", "developer", "system", "user"]
    usage = comp["CompletionUsage"]
    assert "prompt_tokens_details" in usage["required"]
    details = comp["PromptTokensDetails"]["properties"]["cached_tokens"]
    assert details["minimum"] == 0 and "prefix reuse" in details["description"]
    assert "cache_prompt" in oai and "cache_prompt" in comp["ChatRequest"]["properties"]


def test_every_route_documents_its_errors_and_media_types(schema):
    paths = schema["paths"]
    stream = paths["/generate/stream"]["post"]["responses"]
    assert set(stream["200"]["content"]) == {"text/plain", "text/event-stream"}
    for path in ("/generate", "/generate/stream", "/tokenize", "/detokenize"):
        responses = paths[path]["post"]["responses"]
        assert {"400", "413", "422", "429", "500", "503"} <= set(responses), path
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    for path in ("/v1/completions", "/v1/chat/completions"):
        responses = paths[path]["post"]["responses"]
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
        assert {"400", "404", "413", "429", "500", "503"} <= set(responses), path
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorBody")
        assert "422" not in responses
    assert paths["/v1/completions"]["post"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"].endswith("/Completion")
    assert "/v1/models" in paths and "/v1/models/{model_id}" in paths


def test_the_docs_page_loads_everything_from_minivault_itself(client):
    page = client.get("/schema")
    assert page.status_code == 200 and "swagger-container" in page.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert urls and all(u.startswith("/schema/assets/") for u in urls), urls
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 100, url
