"""The tests' long-running model: a random GPT-2 that never picks end-of-text (one shape, one place)."""

from __future__ import annotations

import os

from service.formats.ggml.tiny import make_tiny_gpt2


def write_long_model(path: str | os.PathLike[str], ftype: str = "f32") -> str:
    """Write it at `path` (about 200 tokens/s on one thread in f32); returns the file's sha256."""
    return make_tiny_gpt2(path, n_embd=384, n_layer=6, scale=0.3, no_eos=True, ftype=ftype)
