"""A converted model served end to end: manifest at /health, size verified at load, BPE in use."""

from __future__ import annotations

import time

from litestar.testing import TestClient

from service.api.app import create_app
from service.config import Settings
from service.formats.convert import convert_checkpoint
from tests.support.gpt2_reference import (
    SMALL_MERGES,
    byte_level_vocab,
    random_state,
    write_checkpoint,
)


def converted(tmp_path, quant: str = "q8_0"):
    vocab = byte_level_vocab(SMALL_MERGES)
    state = random_state(n_vocab=len(vocab), n_ctx=128, n_embd=64, n_layer=2, scale=0.1, seed=3,
                         prefix="transformer.")
    src = write_checkpoint(tmp_path / "hf", state, vocab, SMALL_MERGES, n_head=4, n_ctx=128)
    convert_checkpoint(src, tmp_path / "models" / f"tiny-{quant}", quant, source_repo="local/tiny")
    return tmp_path / "models" / f"tiny-{quant}" / "model.bin"


def started(client: TestClient) -> dict:
    for _ in range(300):
        r = client.get("/health")
        if r.json().get("state") not in ("unloaded", "loading"):  # the default model, preloaded
            return r.json()
        time.sleep(0.02)
    raise AssertionError("still loading")


def test_converted_model_serves_with_its_manifest_and_tokenizer(tmp_path):  # found in the models dir
    model = converted(tmp_path)
    settings = Settings(models_dir=str(tmp_path / "models"), log_file=str(tmp_path / "log.jsonl"), threads=1,
                        allowed_hosts="testserver.local")
    with TestClient(create_app(settings)) as c:
        health = started(c)
        assert health["status"] == "ok" and health["model"] == "tiny-q8_0"
        manifest = health["manifest"]
        assert manifest["quant"] == "q8_0" and manifest["source"]["repo"] == "local/tiny"
        assert manifest["size"] == model.stat().st_size and len(manifest["sha256"]) == 64
        r = c.post("/generate", json={"prompt": "Hello world", "max_new_tokens": 4, "seed": 2})
        assert r.status_code == 200 and r.json()["model"] == "tiny-q8_0"
        ids = c.post("/tokenize", json={"text": " world"}).json()["tokens"]
        assert ids == [byte_level_vocab(SMALL_MERGES)["Ġworld"]]  # the BPE from tokenizer.json, one merged token


def test_model_whose_size_disagrees_with_its_manifest_is_refused(tmp_path, settings_for):
    model = converted(tmp_path)
    with open(model, "ab") as f:
        f.write(b"\0" * 64)  # e.g. a file replaced or damaged after it was verified
    with TestClient(create_app(settings_for(model))) as c:
        health = started(c)
        assert health["status"] == "ok" and health["state"] == "error"  # the server runs; this model cannot
        assert "size" in health["detail"] and "manifest" in health["detail"]
        assert c.post("/generate", json={"prompt": "hi"}).status_code == 503
