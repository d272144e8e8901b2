"""A llama.cpp build that dies on this CPU is refused at load, with the command that rebuilds it.

pip compiles llama-cpp-python from source, by default for the build machine's own CPU flags
(`-march=native`). On a machine that reports instructions it cannot run (a VM that reports AMX,
say), those kernels die of SIGILL or SIGSEGV at the first prompt of more than one token, and the
server would go down with every request in flight. So before a model is opened, a child process
decodes a short prompt with the same library and the same model file; a child killed by a signal
means the build does not run here. A verdict holds for the process, per library and tensor types.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

PROBE_TOKENS = 16  # a prompt of several tokens: single-token decodes take other kernels
PROBE_TIMEOUT_S = 600.0  # a large model on a slow disk; the probe is one load and one decode


class UnfitBuild(ValueError):
    """llama.cpp as installed dies on this machine."""


def check_build(model_path: Path, library: str, probe: Sequence[str] | None = None) -> None:
    """Raise UnfitBuild if `library` (llama-cpp-python's path) dies decoding a prompt of model_path."""
    key = (library, _tensor_types(model_path))
    if key not in _VERDICTS:
        _VERDICTS[key] = _probe(list(probe) if probe is not None else probe_command(model_path, library))
    outcome = _VERDICTS[key]
    if outcome is not None:
        raise UnfitBuild(
            f"llama.cpp ({library}) died of {outcome} decoding a test prompt of {model_path}: it was compiled "
            "for instructions this CPU does not run (pip builds it for the CPU's reported flags). Rebuild it "
            f"with explicit ones: sh docker/build-llamacpp.sh {sys.executable} (README: Building the llama.cpp "
            "engine), or run this model on ctransformers (MINIVAULT_ENGINE=ctransformers)")


def probe_command(model_path: Path, library: str) -> list[str]:
    """The child's command: this file run by path (the child needs neither MiniVault nor its folder)."""
    return [sys.executable, "-c", _RUN_THIS, __file__, str(model_path), library]


# run_path, not `python FILE`, which would put service/engine (base.py, sampling.py...) on sys.path
_RUN_THIS = "import runpy, sys; sys.argv[:2] = sys.argv[1:2]; runpy.run_path(sys.argv[0], run_name='__main__')"

# (library, tensor types) -> the signal its probe died of, or None: one probe per kind of model
_VERDICTS: dict[tuple[str, frozenset[str]], str | None] = {}


def _probe(command: list[str]) -> str | None:
    """The name of the signal that killed the probe, or None if it did not die of one."""
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None  # slow, not dead: the load in this process decides
    if done.returncode >= 0:
        return None  # a load error is reported by the load in this process, with its own words
    try:
        return signal.Signals(-done.returncode).name
    except ValueError:
        return f"signal {-done.returncode}"


def _tensor_types(model_path: Path) -> frozenset[str]:
    """The GGML types of a GGUF file's tensors (its kernels), or none if it cannot be read."""
    from service.formats.gguf import read_gguf

    try:
        return frozenset(t.ggml_type for t in read_gguf(model_path).tensors.values())
    except (OSError, ValueError):
        return frozenset()


def _decode(model_path: str, library: str) -> int:
    """The probe: load the model and decode PROBE_TOKENS tokens in one call (0 on success)."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a dying probe leaves no core file behind
    sys.path.insert(0, str(Path(library).parent))  # the very llama-cpp-python the server imported
    from llama_cpp import llama_cpp as lc

    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        return 2
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 64, 64, 64, 2, 2
    ctx = lc.llama_init_from_model(model, cp)
    if not ctx:
        return 2
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    tokens = (lc.llama_token * PROBE_TOKENS)(*(i % n_vocab for i in range(PROBE_TOKENS)))
    return 0 if lc.llama_decode(ctx, lc.llama_batch_get_one(tokens, PROBE_TOKENS)) == 0 else 3


if __name__ == "__main__":
    sys.exit(_decode(sys.argv[1], sys.argv[2]))
