"""A llama.cpp build that dies on this CPU is refused at load (engine/llamacpp_check.py).

The probe is a real child process: with the installed build and a model made by the project's
writer it really loads and decodes; a child that really dies of a signal (SIGSEGV, SIGILL: what a
build compiled for instructions the CPU does not run does) makes the load fail with the command
that rebuilds it, and a server shows that reason instead of going down at the first prompt.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from litestar.testing import TestClient

from tests.support.engines import require_llamacpp

require_llamacpp()

import llama_cpp  # noqa: E402

from service.api.app import create_app  # noqa: E402
from service.engine import llamacpp_check  # noqa: E402
from service.engine.llamacpp_backend import LlamaContext  # noqa: E402
from service.engine.llamacpp_check import UnfitBuild, check_build, probe_command  # noqa: E402
from service.formats.ggml.tiny import make_tiny_gpt2  # noqa: E402
from service.formats.ggml_to_gguf import ggml_to_gguf  # noqa: E402
from service.runtime.loading import gguf_tokenizer_for  # noqa: E402

LIBRARY = str(Path(llama_cpp.__file__).parent)


def dies_of(name: str, runs: Path) -> list[str]:
    """A child that notes its run in `runs`, then dies of the signal `name`."""
    code = (f"import os, signal, sys; open(sys.argv[1], 'a').write('run\\n'); "
            f"os.kill(os.getpid(), signal.{name})")
    return [sys.executable, "-c", code, str(runs)]


@pytest.fixture(autouse=True)
def fresh_verdicts(monkeypatch):
    """This test's verdicts only: the probes here must not decide other tests' loads."""
    monkeypatch.setattr(llamacpp_check, "_VERDICTS", {})


@pytest.fixture(scope="module")
def q4_gguf(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unfit")
    make_tiny_gpt2(folder / "model.bin", ftype="q4_0")
    return ggml_to_gguf(folder / "model.bin", folder / "model.gguf")


def test_the_probe_really_loads_and_decodes(q4_gguf, tmp_path):
    ok = subprocess.run(probe_command(q4_gguf, LIBRARY), capture_output=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    (tmp_path / "not.gguf").write_bytes(b"not a model")
    refused = subprocess.run(probe_command(tmp_path / "not.gguf", LIBRARY), capture_output=True, timeout=120)
    assert refused.returncode == 2  # the load failed: left to the load in the server's process
    check_build(q4_gguf, LIBRARY)  # the installed build runs here: no error


@pytest.mark.parametrize("name", ["SIGSEGV", "SIGILL"])
def test_a_probe_killed_by_a_signal_refuses_the_build_once_per_kind_of_model(q4_gguf, tmp_path, name):
    runs = tmp_path / "runs"
    with pytest.raises(UnfitBuild) as err:
        check_build(q4_gguf, LIBRARY, probe=dies_of(name, runs))
    message = str(err.value)
    assert f"died of {name}" in message and LIBRARY in message and str(q4_gguf) in message
    assert "sh docker/build-llamacpp.sh" in message and "MINIVAULT_ENGINE=ctransformers" in message
    with pytest.raises(UnfitBuild):  # the same library and tensor types: the verdict stands, no new probe
        check_build(q4_gguf, LIBRARY, probe=dies_of(name, runs))
    assert runs.read_text() == "run\n"
    check_build(q4_gguf, LIBRARY + "-rebuilt", probe=[sys.executable, "-c", "pass"])  # another build: probed


def test_a_context_on_an_unfit_build_is_not_opened(q4_gguf, tmp_path):
    with pytest.raises(UnfitBuild):
        check_build(q4_gguf, LIBRARY, probe=dies_of("SIGSEGV", tmp_path / "runs"))
    with pytest.raises(UnfitBuild, match="died of SIGSEGV"):
        LlamaContext(q4_gguf, parallel=1, threads=1, tokenizer=gguf_tokenizer_for(q4_gguf, q4_gguf))


def test_a_server_on_an_unfit_build_says_why_and_how_to_rebuild(q4_gguf, tmp_path, settings_for):
    with pytest.raises(UnfitBuild):
        check_build(q4_gguf, LIBRARY, probe=dies_of("SIGILL", tmp_path / "runs"))
    with TestClient(create_app(settings_for(q4_gguf, engine="llamacpp"))) as client:
        for _ in range(500):
            health = client.get("/health").json()
            if health["state"] != "loading":
                break
            time.sleep(0.02)
        assert health["state"] == "error"
        [model] = health["models"]
        assert "died of SIGILL" in model["detail"] and "build-llamacpp.sh" in model["detail"]
        r = client.post("/generate", json={"prompt": "a"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "model_not_ready"
        assert "died of SIGILL" in r.json()["error"]["message"]
