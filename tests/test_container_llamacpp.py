"""The image with the llama.cpp engine compiled in (`--build-arg WITH_LLAMACPP=1`): a GGUF model on llama.cpp.

The builder stage compiles llama-cpp-python (docker/build-llamacpp.sh); the runtime stage must still
have no compiler, and the engine must run: a GGUF-only models dir is served on llama.cpp, named so in
/health and the log, and its greedy text is the host's llama.cpp engine's on the same file (where the
host has the engine: the same kernels, chosen from the same CPU).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from service.formats.ggml.tiny import make_tiny_gpt2
from service.formats.ggml_to_gguf import ggml_to_gguf
from tests.support.server import LiveServer, free_port
from tests.test_container import HEALTHY_TIMEOUT_S, build_image, run, wait_healthy

pytestmark = pytest.mark.container

BODY = {"prompt": "hello", "max_new_tokens": 8, "temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def llama_image(request: pytest.FixtureRequest) -> Iterator[str]:
    """The image built with WITH_LLAMACPP=1 (removed afterwards; its layer cache stays)."""
    tag = build_image(request, "minivault-llamacpp-test", "WITH_LLAMACPP=1")
    yield tag
    run(["docker", "rmi", "--no-prune", tag], check=False)


@pytest.fixture(scope="module")
def gguf_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding one GGUF model and nothing else (written by the project's own writers)."""
    root = tmp_path_factory.mktemp("gguf-models")
    make_tiny_gpt2(root / "src.bin", n_embd=64, n_layer=2)  # returns the file's sha256
    (root / "models" / "tiny").mkdir(parents=True)
    ggml_to_gguf(root / "src.bin", root / "models" / "tiny" / "model.gguf")
    return root / "models"


def test_the_llamacpp_image_has_no_compiler(llama_image: str) -> None:
    probe = "for c in gcc cc c++ g++ clang make cmake ninja; do command -v $c; done; true"
    out = run(["docker", "run", "--rm", "--user", "0", "--entrypoint", "sh", llama_image, "-c", probe]).stdout
    assert "/" not in out, f"build tools in the runtime image: {out}"


def test_the_llamacpp_image_serves_a_gguf_model_on_llamacpp(llama_image: str, gguf_models: Path,
                                                            tmp_path: Path) -> None:
    port = free_port()
    name = f"mvllama{uuid.uuid4().hex[:10]}"
    run(["docker", "run", "--detach", "--name", name, "-e", "MINIVAULT_THREADS=1",
         "-v", f"{gguf_models}:/models:ro", "-p", f"127.0.0.1:{port}:8000", llama_image])
    try:
        wait_healthy(name, HEALTHY_TIMEOUT_S)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            health = client.get("/health").json()
            assert health["model"] == "tiny" and health["engine"] == "llamacpp", health
            done = client.post("/generate", json=BODY)
        assert done.status_code == 200, done.text
        result = done.json()
        assert result["usage"]["completion_tokens"] == 8 and result["finish_reason"] == "length", result
        deadline = time.monotonic() + 10  # the log is written by a thread
        while (log := run(["docker", "exec", name, "cat", "/logs/log.jsonl"], check=False)).stdout.strip() == "":
            assert time.monotonic() < deadline, log.stderr
            time.sleep(0.2)
        record = json.loads(log.stdout.splitlines()[-1])
        assert record["id"] == result["id"] and record["engine"] == "llamacpp", record
    finally:
        run(["docker", "rm", "--force", name], check=False)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return  # the host has no llama.cpp engine to compare with
    host = LiveServer(gguf_models / "tiny" / "model.gguf", tmp_path / "log.jsonl", MINIVAULT_THREADS="1")
    try:
        assert httpx.get(f"{host.url}/health", timeout=10).json()["engine"] == "llamacpp"
        there = httpx.post(f"{host.url}/generate", json=BODY, timeout=60).json()
    finally:
        host.stop()
    assert there["response"] == result["response"], (there, result)
