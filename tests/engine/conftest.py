"""The engine-facing suite runs on both engines: ctransformers on the GGML file the project's writer
made, llama.cpp on a GGUF copy of the same tensors (service/formats/ggml_to_gguf.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from service.engine.base import Backend
from tests.support.engines import ENGINES, require_llamacpp


@pytest.fixture(scope="session")
def gguf_copy(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Factory: a GGUF copy of a GGML model (made once per model)."""
    copies: dict[Path, Path] = {}

    def copy(model: Path) -> Path:
        if model not in copies:
            from service.formats.ggml_to_gguf import ggml_to_gguf

            copies[model] = ggml_to_gguf(model, tmp_path_factory.mktemp("gguf") / "model.gguf")
        return copies[model]

    return copy


def opener(engine: str, gguf_copy: Callable[[Path], Path]) -> tuple[Callable[[Path], Backend], list]:
    """(open(model) -> a Backend for `model` on `engine` with one thread, what to close afterwards)."""
    opened: list = []

    def open_backend(model: Path) -> Backend:
        if engine == "ctransformers":
            from service.engine.ctransformers_backend import Engine

            backend = Engine(model, threads=1)
            opened.append(backend)
            return backend
        require_llamacpp()
        from service.engine.llamacpp_backend import LlamaContext
        from service.runtime.loading import gguf_tokenizer_for

        gguf = gguf_copy(model)
        context = LlamaContext(gguf, parallel=1, threads=1, tokenizer=gguf_tokenizer_for(model, gguf))
        opened.append(context)
        return context.slots[0]

    return open_backend, opened


@pytest.fixture(params=ENGINES)
def open_backend(request: pytest.FixtureRequest, gguf_copy) -> Iterator[Callable[[Path], Backend]]:
    """Factory: a Backend for a GGML model on this test's engine (closed at teardown)."""
    open_, opened = opener(request.param, gguf_copy)
    yield open_
    for thing in opened:
        thing.close()


@pytest.fixture(scope="module", params=ENGINES)
def long_backend(request: pytest.FixtureRequest, gguf_copy, long_model: Path) -> Iterator[Backend]:
    """The long model on each engine, one instance for the module's tests."""
    open_, opened = opener(request.param, gguf_copy)
    yield open_(long_model)
    for thing in opened:
        thing.close()
