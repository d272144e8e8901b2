"""Strict request bodies and X-Request-ID on every response, over real HTTP against a live server."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    from tests.support.server import LiveServer

    live = LiveServer(tiny_model, tmp_path_factory.mktemp("strict") / "log.jsonl")
    yield live.url
    live.stop()


@pytest.mark.parametrize(("body", "field", "words"), [
    ('{"prompt": "a", "max_new_tokens": "5"}', "max_new_tokens", "must be an integer, got a string"),
    ('{"prompt": "a", "temperature": "0.5"}', "temperature", "must be a number, got a string"),
    ('{"prompt": "a", "temperature": "NaN"}', "temperature", "must be a number, got a string"),
    ('{"prompt": "a", "temperature": 1e999}', "temperature", "finite number"),
    ('{"prompt": "a", "top_p": -1e999}', "top_p", "finite number"),
    ('{"prompt": "a", "seed": true}', "seed", "must be an integer or null, got true or false"),
    ('{"prompt": 5}', "prompt", "must be a string, got an integer"),
    ('{"prompt": "a", "stop": "x"}', "stop", "must be an array, got a string"),
    ('{"prompt": "a", "bogus": 1}', "bogus", "unknown field"),
])
def test_wrong_types_are_refused_naming_the_field(server, body, field, words):
    r = httpx.post(server + "/generate", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request" and error["field"] == field
    assert words in error["message"] and error["message"].startswith(field + ": ")
    assert r.headers["x-request-id"]


def test_a_body_that_is_not_an_object_or_not_json(server):
    r = httpx.post(server + "/generate", content="[1]", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "the request body must be a JSON object"
    r = httpx.post(server + "/generate", content='{"prompt":', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"


def test_valid_bodies_still_work(server):
    r = httpx.post(server + "/generate", json={"prompt": "a", "max_new_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    r = httpx.post(server + "/generate", json={"prompt": "a", "max_new_tokens": 2, "temperature": 1})  # int for float
    assert r.status_code == 200


@pytest.mark.parametrize(("method", "path", "status", "kwargs"), [
    ("GET", "/no/such/route", 404, {}),
    ("GET", "/generate", 405, {}),
    ("DELETE", "/health", 405, {}),
    ("POST", "/generate", 413, {"content": b'{"prompt": "' + b"a" * 1_100_000 + b'"}',
                                "headers": {"Content-Type": "application/json"}}),
    ("POST", "/generate", 415, {"content": b'{"prompt": "a"}', "headers": {"Content-Type": "text/plain"}}),
    ("POST", "/generate", 400, {"content": b"{", "headers": {"Content-Type": "application/json"}}),
    ("GET", "/health", 200, {}),
])
def test_every_response_carries_a_request_id(server, method, path, status, kwargs):
    r = httpx.request(method, server + path, **kwargs)
    assert r.status_code == status
    assert len(r.headers["x-request-id"]) == 32
    r = httpx.request(method, server + path, headers={"X-Request-ID": "trace-42", **kwargs.pop("headers", {})}, **kwargs)
    assert r.headers["x-request-id"] == "trace-42"


def test_the_body_is_decoded_once_and_strictly(settings_for, tiny_model, monkeypatch):
    """The strict hook's Struct is the handler's `data`: Litestar's own JSON decode never runs for
    a body a handler takes as a Struct (it would decode every body a second time, laxly)."""
    import litestar.connection.request as litestar_request
    from litestar.testing import TestClient

    from service.api.app import create_app
    from tests.api.test_api import wait_ready

    decoded: list[bytes] = []
    real = litestar_request.decode_json

    def counting(body, *args, **kwargs):
        decoded.append(body)
        return real(body, *args, **kwargs)

    monkeypatch.setattr(litestar_request, "decode_json", counting)
    with TestClient(create_app(settings_for(tiny_model))) as client:
        wait_ready(client)
        r = client.post("/generate", json={"prompt": "a", "max_new_tokens": 2, "temperature": 1})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2})
        assert r.status_code == 200, r.text
        r = client.post("/generate", json={"prompt": "a", "max_new_tokens": "2"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "max_new_tokens"
    assert decoded == []
