"""Random-weight GPT-2 models in GGML format, for tests and benchmarks."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from service.formats.ggml.format import HParams, gpt2_tensor_shapes, write_gpt2

EOT = b"<|endoftext|>"

# A few multi-byte UTF-8 tokens, so a character can span token boundaries.
_EXTRA = [
    " the", " a", "ing", " Hello", " world", "é", "ü", "日本", "語", "🙂",
    "\xe2\x80".encode("latin-1").decode("latin-1"),
]


def byte_vocab(extra: list[bytes] | None = None) -> list[bytes]:
    """256 single-byte tokens, then `extra` tokens, then <|endoftext|> last (as GPT-2)."""
    tokens = [bytes([b]) for b in range(256)]
    for t in extra if extra is not None else [s.encode("utf-8") for s in _EXTRA[:-1]] + [b"\xe2\x80"]:
        if t not in tokens:
            tokens.append(t)
    return tokens + [EOT]


def random_tensors(hp: HParams, seed: int = 0, scale: float = 0.02) -> Iterator[tuple[str, np.ndarray]]:
    """GPT-2-initialised random weights (normal * scale, ones for gains, zeros for biases)."""
    rng = np.random.default_rng(seed)
    for name, shape in gpt2_tensor_shapes(hp).items():
        if name.endswith("/g"):
            yield name, np.ones(shape, np.float32)
        elif name.endswith("/b"):
            yield name, np.zeros(shape, np.float32)
        else:
            yield name, (rng.standard_normal(shape, dtype=np.float32) * scale)


def make_tiny_gpt2(
    path: str | os.PathLike[str],
    *,
    vocab: list[bytes] | None = None,
    n_embd: int = 64,
    n_head: int = 4,
    n_layer: int = 2,
    n_ctx: int = 1024,
    ftype: str = "f32",
    seed: int = 0,
    scale: float = 0.02,
    no_eos: bool = False,
) -> str:
    """Write a random-weight GPT-2 GGML file and return its sha256.

    With `no_eos`, end-of-text is never sampled, so generations run to max_new_tokens.
    """
    vocab = vocab if vocab is not None else byte_vocab()
    hp = HParams(len(vocab), n_ctx, n_embd, n_head, n_layer, ftype)
    tensors = random_tensors(hp, seed, scale)
    if no_eos:
        tensors = _with_eos_silenced(tensors, vocab.index(EOT))
    return write_gpt2(path, hp, vocab, tensors)


def _with_eos_silenced(tensors: Iterator[tuple[str, np.ndarray]], eos: int) -> Iterator[tuple[str, np.ndarray]]:
    """Make end-of-text ~100 logits below every other token, whatever the input.

    The final norm's dimension 0 is pinned to a constant (gain 0, bias 50); an untied lm_head
    reads that dimension as +1 for every token and -1 for <|endoftext|>.
    """
    for name, array in tensors:
        if name == "model/ln_f/g":
            array[0] = 0.0
        elif name == "model/ln_f/b":
            array[0] = 50.0
        yield name, array
        if name == "model/wte":
            head = array.copy()
            head[:, 0] = 1.0
            head[eos] = 0.0
            head[eos, 0] = -1.0
            yield "model/lm_head", head


def make_scripted_gpt2(
    path: str | os.PathLike[str], vocab: list[bytes], script: list[int], *, n_embd: int = 128
) -> str:
    """Write a GPT-2 whose greedy next token at position p is script[p], whatever the input.

    Every block is zero (the residual passes through), wte is zero and wpe[p] is the unit
    vector e_p, so the final state at position p is layer-normed e_p; lm_head row t has a
    large weight on each position whose scripted token is t. A real ctransformers model with
    a known output: for testing streaming, UTF-8 and stop strings exactly.
    """
    n_ctx = n_embd
    if len(script) > n_ctx:
        raise ValueError(f"script of {len(script)} tokens is longer than n_ctx={n_ctx}")
    hp = HParams(len(vocab), n_ctx, n_embd, 2, 1, "f32")  # ggml crashes with one head
    shapes = dict(random_tensors(hp, 0, 0.0))
    for name, array in shapes.items():
        if not name.endswith("/g"):
            array[...] = 0.0
    shapes["model/wpe"] = np.eye(n_ctx, n_embd, dtype=np.float32)
    head = np.zeros((len(vocab), n_embd), np.float32)
    for p, token in enumerate(script):
        head[token, p] = 10.0
    tensors = list(shapes.items()) + [("model/lm_head", head)]
    return write_gpt2(path, hp, vocab, tensors)
