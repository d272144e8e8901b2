"""The engines a test can run on, and the skip for the one that is an optional extra."""

from __future__ import annotations

import pytest

from service.runtime.engines import CTRANSFORMERS, LLAMACPP

ENGINES = (CTRANSFORMERS, LLAMACPP)


def require_llamacpp() -> None:
    """Skip this test (or module) when llama-cpp-python is not installed, saying how to get it."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'minivault[llamacpp]')")
