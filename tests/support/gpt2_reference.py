"""Reference GPT-2 for conversion tests: random Hugging Face checkpoints and a numpy forward pass.

The forward pass works straight from a Hugging Face state dict (Conv1D weights stored
(in, out), keys with or without the "transformer." prefix), independently of the converter.
With `ggml_tables`, GELU and the softmax exponential are rounded through float16 the way
ggml's lookup tables do it, so an f32 GGML model can be checked to ~1e-6 rather than ~1e-3.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Mapping

import numpy as np
from safetensors.numpy import save_file

from service.tokenizer.bpe import bytes_to_unicode

EOT = "<|endoftext|>"

# Merges for a small byte-level vocabulary ("Ġ" stands for a space).
SMALL_MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("in", "g"), ("Ġ", "a"), ("e", "r"),
    ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld"), ("Ġ", "H"), ("e", "l"),
    ("l", "o"), ("el", "lo"), ("Ã", "©"), ("Ġ", "s"), ("o", "n"),
]  # fmt: skip


def byte_level_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """The 256 byte symbols, then one token per merge, then <|endoftext|>."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[EOT] = len(vocab)
    return vocab


def random_merges(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` merges of random existing tokens, each making a new token (for full-size vocabularies)."""
    rng = np.random.default_rng(seed)
    tokens = list(bytes_to_unicode().values())
    seen, merges = set(tokens), []
    while len(merges) < n:
        a, b = tokens[rng.integers(len(tokens))], tokens[rng.integers(min(len(tokens), 256))]
        if a + b not in seen and len(a + b) <= 12:
            seen.add(a + b)
            tokens.append(a + b)
            merges.append((a, b))
    return merges


def random_state(
    *, n_vocab: int, n_ctx: int, n_embd: int, n_layer: int, scale: float, seed: int = 0, prefix: str = "",
    wte_scale: float | None = None, untied_head: bool = False,
) -> dict[str, np.ndarray]:
    """A random GPT-2 state dict in Hugging Face layout (float32).

    Matrices are normal * scale; token embeddings (and an untied head) normal * wte_scale,
    which sets how peaked the next-token distribution is, since the final layer norm
    makes logits about wte_scale * sqrt(n_embd) wide. Gains are 1 + 0.1 * normal and
    biases 0.1 * normal, so a swapped or misplaced vector shows up in the logits.
    """
    wte_scale = scale if wte_scale is None else wte_scale
    rng = np.random.default_rng(seed)
    e = n_embd

    def normal(*shape: int, s: float = scale) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(s)

    state = {"wte.weight": normal(n_vocab, e, s=wte_scale), "wpe.weight": normal(n_ctx, e)}
    for i in range(n_layer):
        p = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            state[p + ln + ".weight"] = 1 + normal(e, s=0.1)
            state[p + ln + ".bias"] = normal(e, s=0.1)
        for layer, (n_in, n_out) in {"attn.c_attn": (e, 3 * e), "attn.c_proj": (e, e),
                                     "mlp.c_fc": (e, 4 * e), "mlp.c_proj": (4 * e, e)}.items():  # fmt: skip
            state[p + layer + ".weight"] = normal(n_in, n_out)
            state[p + layer + ".bias"] = normal(n_out, s=0.1)
    state["ln_f.weight"] = 1 + normal(e, s=0.1)
    state["ln_f.bias"] = normal(e, s=0.1)
    state = {prefix + k: v for k, v in state.items()}
    if untied_head:
        state["lm_head.weight"] = normal(n_vocab, e, s=wte_scale)
    return state


def write_checkpoint(
    folder: Path, state: Mapping[str, np.ndarray], vocab: dict[str, int], merges: list[tuple[str, str]], *,
    n_head: int, n_ctx: int, config: Mapping[str, object] | None = None,
) -> Path:
    """Write a Hugging Face GPT-2 folder: config.json, model.safetensors, vocab.json, merges.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    wte = next(v for k, v in state.items() if k.endswith("wte.weight"))
    n_layer = len({m.group(1) for k in state if (m := re.search(r"(?:^|\.)h\.(\d+)\.", k))})
    cfg = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": wte.shape[0],
        "n_positions": n_ctx, "n_ctx": n_ctx, "n_embd": wte.shape[1], "n_head": n_head, "n_layer": n_layer,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "bos_token_id": vocab[EOT],
        "eos_token_id": vocab[EOT],
    } | dict(config or {})  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(dict(state), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# --- forward pass ---------------------------------------------------------------------


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu(x: np.ndarray, ggml_tables: bool) -> np.ndarray:
    if ggml_tables:  # ggml looks GELU up in a table indexed by the float16 input
        x32 = x.astype(np.float16).astype(np.float32)
        y = np.float32(0.5) * x32 * (1 + np.tanh(np.float32(0.7978845608) * x32 * (1 + np.float32(0.044715) * x32 * x32)))
        return _f16(y)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _softmax(s: np.ndarray, ggml_tables: bool) -> np.ndarray:
    s = s - s.max(-1, keepdims=True)
    e = _f16(np.exp(_f16(s))) if ggml_tables else np.exp(s)
    return e / e.sum(-1, keepdims=True)


def round_activations(x: np.ndarray, kind: str | None) -> np.ndarray:
    """Round matmul inputs the way ggml does before multiplying by weights of a given type.

    f16 weights take float16 activations; block-quantised weights take activations
    quantised to 8 bits per block of 32 by ggml's vectorised quantize_row_q8_0/q8_1
    (multiply by 127/amax, round half to even; q8_0 keeps the scale as float16, q8_1 as float32).
    """
    if kind is None:
        return x
    if kind == "f16":
        return _f16(x)
    blocks = x.astype(np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(-1, keepdims=True)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0)
    q = np.rint(blocks * inv)
    d = amax / np.float32(127)
    if kind == "q8_0":
        d = d.astype(np.float16)
    return (q * d.astype(np.float64)).reshape(x.shape)


def forward(
    state: Mapping[str, np.ndarray], tokens: list[int], *, n_head: int, ggml_tables: bool = False,
    activations: str | None = None,
) -> np.ndarray:
    """Next-token logits (float64) at every position of `tokens`: shape (len(tokens), n_vocab).

    `activations` rounds every weight-matrix input as ggml does for that weight type
    (see round_activations); None keeps them exact.
    """
    w = {k.removeprefix("transformer."): np.asarray(v, np.float64) for k, v in state.items()}

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return round_activations(x, activations) @ w[name + ".weight"] + w[name + ".bias"]

    t = len(tokens)
    x = w["wte.weight"][tokens] + w["wpe.weight"][:t]
    n_layer = len({k.split(".")[1] for k in w if k.startswith("h.")})  # keys are h.<i>.<...>
    d = x.shape[1] // n_head
    future = np.triu(np.ones((t, t), bool), 1)
    for i in range(n_layer):
        p = f"h.{i}."
        h = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = linear(h, p + "attn.c_attn")
        q, k, v = (m.reshape(t, n_head, d).transpose(1, 0, 2) for m in np.split(qkv, 3, axis=1))
        scores = np.where(future, -np.inf, q @ k.transpose(0, 2, 1) / np.sqrt(d))
        att = (_softmax(scores, ggml_tables) @ v).transpose(1, 0, 2).reshape(t, -1)
        x = x + linear(att, p + "attn.c_proj")
        h = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        x = x + linear(_gelu(linear(h, p + "mlp.c_fc"), ggml_tables), p + "mlp.c_proj")
    x = _layer_norm(x, w["ln_f.weight"], w["ln_f.bias"])
    return round_activations(x, activations) @ w.get("lm_head.weight", w["wte.weight"]).T


def relative_error(logits: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference relative to the largest reference logit magnitude."""
    return float(np.abs(np.asarray(logits) - reference).max() / np.abs(reference).max())


# --- running GGML files in ctransformers ----------------------------------------------


@functools.cache
def _ctransformers_lib() -> str:
    """ctransformers' library for this CPU (its CPU detection is slow: once per process)."""
    from ctransformers.lib import find_library

    return find_library()


def ggml_model(path: Path, threads: int = 1):
    """Load a GGML gpt2 file in ctransformers."""
    from ctransformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), model_type="gpt2", lib=_ctransformers_lib(), threads=threads)


def ggml_logits(path: Path, tokens: list[int], threads: int = 1) -> np.ndarray:
    """Next-token logits ctransformers computes at every position of `tokens` (one eval per token)."""
    llm = ggml_model(path, threads)
    rows = []
    for token in tokens:
        llm.eval([token])
        rows.append(np.array(llm.logits, dtype=np.float64))
    return np.array(rows)


def ggml_greedy(path: Path, prompt: list[int], n: int, threads: int = 1) -> list[int]:
    """The `n` tokens ctransformers picks greedily (argmax logits) after `prompt`."""
    llm = ggml_model(path, threads)
    llm.eval(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.logits)))
        llm.eval([out[-1]])
    return out


def reference_greedy(state: Mapping[str, np.ndarray], prompt: list[int], n: int, *, n_head: int) -> list[int]:
    """The `n` tokens the numpy reference picks greedily after `prompt`."""
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(np.argmax(forward(state, tokens, n_head=n_head, ggml_tables=True)[-1])))
    return tokens[len(prompt) :]


def rms_error(logits: np.ndarray, reference: np.ndarray) -> float:
    """Root-mean-square difference relative to the reference's root-mean-square."""
    diff = np.asarray(logits) - reference
    return float(np.sqrt((diff**2).mean() / (reference**2).mean()))
