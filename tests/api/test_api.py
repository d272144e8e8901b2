"""The HTTP API through Litestar's test client, on real tiny models."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from litestar.testing import TestClient

from service.api.app import create_app
from tests.support.server import read_log


def wait_ready(client: TestClient) -> None:
    """Until the default model (preloaded at start) is loaded or has failed."""
    for _ in range(500):
        if client.get("/health").json().get("state") in ("loaded", "error"):
            return
        time.sleep(0.02)


@pytest.fixture
def client(tiny_model, settings_for):
    settings = settings_for(tiny_model)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        c.log_file = settings.log_file  # type: ignore[attr-defined]
        yield c


def test_minimal_request_gets_full_response_and_one_log_record(client):
    r = client.post("/generate", json={"prompt": "Hello there!"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"id", "response", "model", "finish_reason", "usage", "timings"}
    assert body["model"] == "tiny"
    assert body["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] == len(client.post("/tokenize", json={"text": "Hello there!"}).json()["tokens"])
    assert 0 < body["usage"]["completion_tokens"] <= 128
    assert set(body["timings"]) == {"queue_ms", "first_token_ms", "total_ms", "tokens_per_second",
                                    "prompt_ms", "prompt_tokens_per_second", "decode_ms"}
    assert r.headers["x-request-id"] == body["id"]
    client.__exit__(None, None, None)  # flush the log
    (record,) = [x for x in read_log(Path(client.log_file)) if x["endpoint"] == "/generate"]
    assert record["id"] == body["id"]
    assert record["prompt"] == "Hello there!" and record["response"] == body["response"]
    assert record["status"] == "ok" and record["finish_reason"] == body["finish_reason"]
    assert record["usage"] == body["usage"]
    assert record["params"]["max_new_tokens"] == 128 and isinstance(record["params"]["seed"], int)


def test_stream_is_plain_text_with_request_id(client):
    with client.stream("POST", "/generate/stream", json={"prompt": "Once upon a time", "max_new_tokens": 8}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        text = b"".join(r.iter_bytes()).decode()
        rid = r.headers["x-request-id"]
    client.__exit__(None, None, None)
    (record,) = [x for x in read_log(Path(client.log_file)) if x["id"] == rid]
    assert record["response"] == text and record["endpoint"] == "/generate/stream"


def test_seeded_requests_repeat(client):
    body = {"prompt": "Hello", "max_new_tokens": 30, "seed": 42, "temperature": 1.0}
    a, b = (client.post("/generate", json=body).json()["response"] for _ in range(2))
    assert a == b


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"prompt": ""}, "prompt", ">= 1"),
        ({}, "prompt", "prompt"),
        ({"prompt": "x", "max_token": 5}, "max_token", "unknown field"),
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens", ">= 1"),
        ({"prompt": "x", "max_new_tokens": 5000}, "max_new_tokens", "<= 1024"),
        ({"prompt": "x", "temperature": -0.1}, "temperature", ">= 0.0"),
        ({"prompt": "x", "top_k": -1}, "top_k", ">= 0"),
        ({"prompt": "x", "top_p": 0}, "top_p", "> 0.0"),
        ({"prompt": "x", "top_p": 1.5}, "top_p", "<= 1.0"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty", "> 0.0"),
        ({"prompt": "x", "seed": -1}, "seed", ">= 0"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "length <= 4"),
        ({"prompt": "x", "stop": [""]}, "stop[0]", "length >= 1"),
        ({"prompt": 5}, "prompt", "must be a string"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/generate/stream"])
def test_invalid_fields_are_422_naming_field_and_limit(client, path, body, field, words):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request"
    assert err["field"] == field
    assert words in err["message"]
    assert r.headers["x-request-id"]


def test_malformed_json_is_400(client):
    r = client.post("/generate", content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_json"


def test_context_overflow_is_422_with_both_numbers(client):
    r = client.post("/generate/stream", json={"prompt": "y" * 1000, "max_new_tokens": 100})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "context_length_exceeded" and err["field"] == "max_new_tokens"
    assert "1000" in err["message"] and "100" in err["message"] and "1024" in err["message"]


def test_rejected_requests_are_not_logged(client):
    client.post("/generate", json={"prompt": ""})
    client.__exit__(None, None, None)
    assert read_log(Path(client.log_file)) == []


def test_unknown_route_and_method_use_the_error_shape(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = client.get("/generate")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


def test_tokenize_and_detokenize_round_trip(client):
    r = client.post("/tokenize", json={"text": "Hello world 日本"})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 0
    assert client.post("/detokenize", json={"tokens": body["tokens"]}).json() == {"text": "Hello world 日本"}


def test_detokenize_names_the_bad_id(client):
    r = client.post("/detokenize", json={"tokens": [1, 2, 99999]})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "unknown_token" and err["field"] == "tokens[2]" and "99999" in err["message"]
    r = client.post("/detokenize", json={"tokens": [-1]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "tokens[0]"


def test_health_reports_model(client, tiny_model):
    from service.formats.manifest import file_sha256

    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    sha = file_sha256(tiny_model)
    assert {k: v for k, v in body.items() if k != "models"} == {
        "status": "ok", "model": "tiny", "state": "loaded", "model_sha256": sha, "engine": "ctransformers",
        "workers": 1, "busy": 0, "queued": 0}
    [entry] = body["models"]
    assert entry["id"] == "tiny" and entry["state"] == "loaded" and entry["model_sha256"] == sha
    assert entry["workers"] == 1 and entry["load_seconds"] > 0 and entry["memory_mb"] > 0


def test_unloadable_model_is_health_error_and_503(settings_for, tmp_path):
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"ggml but not really")
    with TestClient(create_app(settings_for(bad))) as c:
        wait_ready(c)
        r = c.get("/health")  # the server runs; the model's state says why it cannot serve
        assert r.status_code == 200 and r.json()["state"] == "error" and "broken.bin" in r.json()["detail"]
        assert r.json()["models"][0]["state"] == "error"
        r = c.post("/generate", json={"prompt": "hi"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "model_not_ready"
        assert "failed to load" in r.json()["error"]["message"] and "broken.bin" in r.json()["error"]["message"]
        assert r.headers["retry-after"]


def test_openapi_documents_limits(client):
    schema = client.get("/schema/openapi.json").json()
    props = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert props["top_p"]["exclusiveMinimum"] == 0.0 and props["top_p"]["maximum"] == 1.0
    assert props["stop"]["maxItems"] == 4
    assert "greedy" in props["temperature"]["description"]


def test_served_tokenizer_is_gpt2_bpe_from_tokenizer_json(gpt2_vocab_model, settings_for):
    with TestClient(create_app(settings_for(gpt2_vocab_model))) as c:
        wait_ready(c)
        text = "Hello world! It's 2026 — naïve café, 日本語 🙂"
        r = c.post("/tokenize", json={"text": text})
        from tests.fixtures.gpt2_vocab import reference_tokenizer

        assert r.json()["tokens"] == reference_tokenizer().encode(text).ids
        assert c.post("/tokenize", json={"text": "Hello world"}).json() == {"tokens": [15496, 995], "count": 2}
        assert c.post("/detokenize", json={"tokens": r.json()["tokens"]}).json()["text"] == text
        r = c.post("/generate", json={"prompt": "Hello world", "max_new_tokens": 5, "seed": 1})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 2
        r = c.post("/detokenize", json={"tokens": [50257]})
        assert r.status_code == 422 and "50257" in r.json()["error"]["message"]
