"""Several models in one server, loaded on demand: choice by `model`, lazy loading, keep-alive
unload, LRU eviction, an isolated load failure, rescans; seen through /health, /v1/models, the log
and /metrics of a live server."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.formats.ggml.tiny import make_tiny_gpt2
from tests.support.server import read_log


@pytest.fixture
def models_dir(tmp_path: Path, long_model: Path) -> Path:
    """alpha, beta, gamma (tiny, different weights), slow (never ends early), broken (not a model)."""
    root = tmp_path / "models"
    for seed, name in enumerate(("alpha", "beta", "gamma")):
        (root / name).mkdir(parents=True)
        make_tiny_gpt2(root / name / "model.bin", seed=seed + 1, scale=0.5)
    (root / "slow").mkdir()
    shutil.copyfile(long_model, root / "slow" / "model.bin")
    (root / "broken").mkdir()
    (root / "broken" / "model.bin").write_bytes(b"ggml but not really")
    return root


@pytest.fixture
def serve(start_server, models_dir: Path):
    """Start a live server on the models dir (no MINIVAULT_MODEL, nothing preloaded unless asked)."""

    def start(**env: str):
        return start_server(models_dir, **({"MINIVAULT_MODEL": "", "MINIVAULT_MODELS_DIR": str(models_dir),
                                            "MINIVAULT_PRELOAD": "none"} | env))

    return start


def states(url: str) -> dict[str, str]:
    return {m["id"]: m["state"] for m in httpx.get(url + "/health").json()["models"]}


def wait_state(url: str, model: str, state: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while (now := states(url))[model] != state:
        assert time.monotonic() < deadline, f"{model} never became {state}: {now}"
        time.sleep(0.05)
    return now


def generate(url: str, model: str | None, **body) -> httpx.Response:
    payload = {"prompt": "abc", "max_new_tokens": 8, "temperature": 0} | body
    if model is not None:
        payload["model"] = model
    return httpx.post(url + "/generate", json=payload, timeout=60)


def test_requests_choose_a_model_and_each_loads_on_first_use(serve, models_dir):
    server = serve()
    url = server.url
    health = httpx.get(url + "/health")
    assert health.status_code == 200 and health.json().get("model") is None  # several, no default
    assert set(states(url).values()) == {"unloaded"}

    r = generate(url, None)  # several models and no default: the error lists them
    assert r.status_code == 422 and r.json()["error"]["field"] == "model"
    assert all(name in r.json()["error"]["message"] for name in ("alpha", "beta", "gamma", "slow"))

    r = generate(url, "nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"
    assert "alpha" in r.json()["error"]["message"]

    a = generate(url, "alpha")
    assert a.status_code == 200 and a.json()["model"] == "alpha"
    assert states(url) == {"alpha": "loaded", "beta": "unloaded", "gamma": "unloaded", "slow": "unloaded",
                           "broken": "unloaded"}
    b = generate(url, "beta")
    assert b.status_code == 200 and b.json()["model"] == "beta"
    assert a.json()["response"] != b.json()["response"]  # different weights, different greedy text
    assert generate(url, "alpha").json()["response"] == a.json()["response"]

    listed = httpx.get(url + "/v1/models").json()["data"]
    assert {m["id"]: m["state"] for m in listed} == states(url)
    assert httpx.get(url + "/v1/models/gamma").json()["state"] == "unloaded"
    assert httpx.get(url + "/v1/models/nope").status_code == 404
    c = httpx.post(url + "/v1/completions", json={"model": "gamma", "prompt": "abc", "max_tokens": 4,
                                                  "temperature": 0}, timeout=60)
    assert c.status_code == 200 and c.json()["model"] == "gamma"
    t = httpx.post(url + "/tokenize", json={"text": "abc", "model": "beta"})
    assert t.status_code == 200 and t.json()["count"] == 3

    records = read_log(server.log_file)
    assert [r["model"] for r in records if r["status"] == "ok"] == ["alpha", "beta", "alpha", "gamma"]
    metrics = httpx.get(url + "/metrics").text
    assert 'minivault_model_loaded{model="gamma"} 1.0' in metrics
    assert 'minivault_model_loaded{model="slow"} 0.0' in metrics
    assert 'minivault_model_events_total{event="loaded",model="alpha"} 1.0' in metrics


def test_a_model_that_fails_to_load_fails_only_its_own_requests(serve):
    url = serve(MINIVAULT_MODEL="alpha", MINIVAULT_PRELOAD="alpha,broken").url
    assert wait_state(url, "broken", "error")["alpha"] == "loaded"
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "alpha" and health["state"] == "loaded"
    [broken] = [m for m in health["models"] if m["id"] == "broken"]
    assert "broken" in broken["detail"] and "model.bin" in broken["detail"]
    r = generate(url, "broken")
    assert r.status_code == 503 and r.json()["error"]["type"] == "model_not_ready"
    assert "failed to load" in r.json()["error"]["message"] and r.headers["retry-after"]
    assert generate(url, None).json()["model"] == "alpha"  # the default serves on


def test_an_idle_model_is_unloaded_after_keep_alive_and_loads_again(serve):
    server = serve(MINIVAULT_KEEP_ALIVE_S="0.5")
    url = server.url
    first = generate(url, "alpha")
    assert first.status_code == 200
    wait_state(url, "alpha", "unloaded")
    again = generate(url, "alpha")
    assert again.status_code == 200 and again.json()["response"] == first.json()["response"]
    assert 'minivault_model_events_total{event="unloaded_keep_alive",model="alpha"}' in httpx.get(url + "/metrics").text


def test_least_recently_used_idle_model_makes_room(serve):
    url = serve(MINIVAULT_MAX_LOADED_MODELS="2").url
    for name in ("alpha", "beta"):
        assert generate(url, name).status_code == 200
    assert generate(url, "alpha").status_code == 200  # alpha is now the more recent
    assert generate(url, "gamma").status_code == 200  # beta, least recently used, goes
    now = states(url)
    assert (now["alpha"], now["beta"], now["gamma"]) == ("loaded", "unloaded", "loaded")
    assert generate(url, "beta").status_code == 200  # and now alpha
    now = states(url)
    assert (now["alpha"], now["beta"], now["gamma"]) == ("unloaded", "loaded", "loaded")


def test_the_memory_budget_unloads_the_least_recently_used_idle_model(start_server, tmp_path, long_model):
    root = tmp_path / "big"
    for name in ("a", "b", "c"):  # 43 MiB each, 9 MiB of KV cache: two fit in 110 MiB, three do not
        (root / name).mkdir(parents=True)
        shutil.copyfile(long_model, root / name / "model.bin")
    server = start_server(root, MINIVAULT_MODEL="", MINIVAULT_MODELS_DIR=str(root), MINIVAULT_PRELOAD="none",
                          MINIVAULT_MODEL_MEMORY_MB="110")
    url = server.url
    for name in ("a", "b"):
        assert generate(url, name).status_code == 200
    assert (states(url)["a"], states(url)["b"]) == ("loaded", "loaded")
    assert generate(url, "c").status_code == 200
    assert states(url) == {"a": "unloaded", "b": "loaded", "c": "loaded"}
    measured = {m["id"]: m["memory_mb"] for m in httpx.get(url + "/health").json()["models"]}
    assert all(40 < measured[name] < 60 for name in "abc"), measured  # the file, as resident memory
    assert 'minivault_model_events_total{event="unloaded_evicted",model="a"} 1.0' in httpx.get(url + "/metrics").text


def test_a_generating_model_is_never_unloaded_to_make_room(serve):
    server = serve(MINIVAULT_MAX_LOADED_MODELS="1")
    url = server.url
    done: dict = {}

    def long_stream() -> None:
        with httpx.stream("POST", url + "/generate/stream", json={"prompt": "abc", "model": "slow",
                                                                 "max_new_tokens": 600}, timeout=120) as r:
            done["text"] = "".join(r.iter_text())
            done["status"] = r.status_code

    thread = threading.Thread(target=long_stream)
    thread.start()
    deadline = time.monotonic() + 20
    while httpx.get(url + "/health").json()["busy"] == 0:
        assert time.monotonic() < deadline, "the slow model never started generating"
        time.sleep(0.02)
    r = generate(url, "alpha")
    assert r.status_code == 503 and r.json()["error"]["type"] == "model_capacity"
    assert "MINIVAULT_MAX_LOADED_MODELS=1" in r.json()["error"]["message"] and r.headers["retry-after"]
    assert states(url)["slow"] == "loaded"
    thread.join(120)
    assert done["status"] == 200 and done["text"]
    assert generate(url, "alpha").status_code == 200  # once idle, slow makes room
    assert states(url)["slow"] == "unloaded"
    [slow] = [r for r in read_log(server.log_file) if r["model"] == "slow"]
    assert slow["status"] == "ok" and slow["usage"]["completion_tokens"] == 600


def test_a_model_bigger_than_the_memory_budget_is_refused_with_the_reason(serve):
    url = serve(MINIVAULT_MODEL_MEMORY_MB="1").url
    r = generate(url, "alpha")
    assert r.status_code == 503 and r.json()["error"]["type"] == "model_capacity"
    assert "MINIVAULT_MODEL_MEMORY_MB=1" in r.json()["error"]["message"] and r.headers["retry-after"]
    r = httpx.post(url + "/v1/completions", json={"model": "alpha", "prompt": "abc"}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable_error"


def test_new_models_are_seen_without_a_restart(serve, models_dir, tiny_model):
    server = serve()
    url = server.url
    (models_dir / "delta").mkdir()
    shutil.copyfile(tiny_model, models_dir / "delta" / "model.bin")
    assert generate(url, "delta").json()["model"] == "delta"  # an unknown name rescans the dir
    (models_dir / "epsilon").mkdir()
    shutil.copyfile(tiny_model, models_dir / "epsilon" / "model.bin")
    server.proc.send_signal(signal.SIGHUP)  # a rescan without a request for it
    deadline = time.monotonic() + 10
    while "epsilon" not in states(url):
        assert time.monotonic() < deadline, "SIGHUP did not rescan the models dir"
        time.sleep(0.05)
    assert states(url)["epsilon"] == "unloaded"


def test_per_model_workers_and_threads_from_models_toml(serve, models_dir):
    (models_dir / "models.toml").write_text('[alpha]\nworkers = 2\nthreads = 1\n\n[beta]\nthreads = 1\n')
    url = serve(MINIVAULT_WORKERS="1").url
    assert generate(url, "alpha").status_code == 200
    models = {m["id"]: m for m in httpx.get(url + "/health").json()["models"]}
    assert (models["alpha"]["workers"], models["alpha"]["threads"]) == (2, 1)
    assert models["beta"]["workers"] == 1
    assert httpx.get(url + "/health").json()["workers"] == 2  # loaded instances, over every model


def test_a_request_waits_for_its_model_up_to_the_load_timeout(serve):
    url = serve(MINIVAULT_LOAD_TIMEOUT_S="0.001").url
    r = generate(url, "slow")  # its load takes longer than a millisecond
    assert r.status_code == 503 and "still loading" in r.json()["error"]["message"]
    assert "MINIVAULT_LOAD_TIMEOUT_S" in r.json()["error"]["message"]
    wait_state(url, "slow", "loaded")  # the load goes on; the next request is served
    assert generate(url, "slow").status_code == 200
