"""Which engine runs a model, and with which of its files.

ctransformers runs GGML files (model.bin); llama.cpp runs GGUF files (model.gguf) and is an
optional extra. `auto` puts a model that has a GGUF file on llama.cpp when it is installed, and
anything else on ctransformers. A model asked to run on llama.cpp with only a GGML file gets a
GGUF copy of the same tensors at load (formats/ggml_to_gguf.py); one asked to run on ctransformers
with only a GGUF file is refused with the command that converts it.

Never imports litestar or an engine library.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from service.runtime.catalog import sibling

CTRANSFORMERS, LLAMACPP = "ctransformers", "llamacpp"


def llamacpp_installed() -> bool:
    """Whether llama-cpp-python can be imported (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


class Choice:
    """An engine for a model: its name, the file it runs (None: made at load), and why not, if it cannot."""

    def __init__(self, engine: str, path: Path | None, problem: str | None = None) -> None:
        self.engine = engine
        self.path = path
        self.problem = problem


def choose(path: Path, wanted: str) -> Choice:
    """The engine and file for the model whose catalog file is `path`, given `wanted` (auto or a name)."""
    ggml = path if path.suffix == ".bin" else sibling(path, ".bin")
    gguf = path if path.suffix == ".gguf" else sibling(path, ".gguf")
    if wanted == "auto":
        wanted = LLAMACPP if gguf is not None and (llamacpp_installed() or ggml is None) else CTRANSFORMERS
    if wanted == CTRANSFORMERS:
        if ggml is None:
            return Choice(CTRANSFORMERS, None, f"{path.name} is a GGUF file and ctransformers runs GGML files: "
                          f"convert it with `minivault import {path}`, or run it on llama.cpp "
                          "(pip install 'minivault[llamacpp]')")
        return Choice(CTRANSFORMERS, ggml)
    problem = None if llamacpp_installed() else (
        "the llamacpp engine needs llama-cpp-python: pip install 'minivault[llamacpp]'"
        + (f", or convert {path.name} to GGML with `minivault import {path}`" if ggml is None else
           ", or run this model on ctransformers (MINIVAULT_ENGINE=ctransformers)"))
    return Choice(LLAMACPP, gguf, problem)  # gguf None: converted from the GGML file at load
