"""Engines seen from outside: a GGUF model served by llama.cpp beside a GGML model on ctransformers
in one live server, each named in /health, /v1/models and the log; four streams batched at once."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.engines import require_llamacpp
from tests.support.server import new_records, read_log

require_llamacpp()

from service.formats.ggml_to_gguf import ggml_to_gguf  # noqa: E402


@pytest.fixture
def server(start_server, tmp_path: Path, gpt2_vocab_model: Path, long_model: Path):
    """gguf (a GGUF file and its tokenizer.json only), ggml (a GGML file): both served."""
    root = tmp_path / "models"
    (root / "gguf").mkdir(parents=True)
    ggml_to_gguf(long_model, root / "gguf" / "model.gguf")
    (root / "ggml").mkdir()
    shutil.copyfile(gpt2_vocab_model, root / "ggml" / "model.bin")
    shutil.copyfile(gpt2_vocab_model.parent / "tokenizer.json", root / "ggml" / "tokenizer.json")
    return start_server(root, MINIVAULT_MODEL="", MINIVAULT_MODELS_DIR=str(root), MINIVAULT_PRELOAD="none",
                        MINIVAULT_PARALLEL="4")


def test_each_model_runs_on_its_engine_and_says_so(server):
    before = len(read_log(server.log_file))
    health = httpx.get(server.url + "/health").json()
    engines = {m["id"]: m["engine"] for m in health["models"]}
    assert engines == {"gguf": "llamacpp", "ggml": "ctransformers"}
    listed = {m["id"]: m["engine"] for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert listed == engines
    for model in ("gguf", "ggml"):
        r = httpx.post(server.url + "/generate", json={"prompt": "Hello", "model": model, "max_new_tokens": 8,
                                                        "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model
    records = new_records(server.log_file, before, 2)  # waits for both records to be written
    assert {r["model"]: r["engine"] for r in records} == engines
    entry = next(m for m in httpx.get(server.url + "/health").json()["models"] if m["id"] == "gguf")
    assert entry["state"] == "loaded" and entry["workers"] == 4  # four sequence slots in one context


def test_four_streams_on_llamacpp_all_progress_before_any_ends(server):
    before = len(read_log(server.log_file))
    firsts: dict[int, float] = {}
    ends: dict[int, float] = {}

    def stream(i: int) -> None:
        body = {"prompt": f"Stream {i}", "model": "gguf", "max_new_tokens": 64, "temperature": 0}
        with httpx.stream("POST", server.url + "/generate/stream", json=body, timeout=60) as r:
            assert r.status_code == 200
            for chunk in r.iter_text():
                if chunk:
                    firsts.setdefault(i, time.monotonic())
        ends[i] = time.monotonic()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(firsts) == len(ends) == 4
    assert max(firsts.values()) < min(ends.values())
    records = new_records(server.log_file, before, 4)
    assert [r["status"] for r in records] == ["ok"] * 4
    assert all(r["engine"] == "llamacpp" and r["usage"]["completion_tokens"] == 64 for r in records)


def test_a_gguf_model_on_ctransformers_fails_with_the_command_that_converts_it(start_server, tmp_path, long_model):
    root = tmp_path / "models"
    (root / "only").mkdir(parents=True)
    ggml_to_gguf(long_model, root / "only" / "model.gguf")
    server = start_server(root, MINIVAULT_MODEL="", MINIVAULT_MODELS_DIR=str(root), MINIVAULT_ENGINE="ctransformers")
    r = httpx.post(server.url + "/generate", json={"prompt": "Hi"}, timeout=30)
    assert r.status_code == 503
    assert "minivault import" in r.text and "GGUF" in r.text
    entry = httpx.get(server.url + "/health").json()["models"][0]
    assert entry["state"] == "error" and entry["engine"] == "ctransformers"
