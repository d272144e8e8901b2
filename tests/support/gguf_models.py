"""GPT-2 GGUF files for tests, written with the `gguf` package (llama.cpp's gguf-py).

Blocks come from gguf-py's own quantisers for the types it can write (f32, f16, bf16, q4_0,
q4_1, q5_0, q5_1, q8_0) and from ggml's reference quantiser in ctransformers' library for the
k-quants (gguf-py only decodes those). The tokenizer metadata is GPT-2's real vocabulary and merges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from service.formats.ggml import kquant
from service.formats.ggml.format import HParams
from service.formats.ggml.tiny import random_tensors
from service.formats.ggml_to_gguf import add_gpt2_hparams, gguf_name
from tests.fixtures.gpt2_vocab import gpt2_merges, gpt2_tokens, gpt2_vocab_bytes  # noqa: F401 (tests import it from here)

N_VOCAB = 50257


def gpt2_hparams(n_embd: int = 256, n_layer: int = 2, n_head: int = 4, n_ctx: int = 256) -> HParams:
    """Small GPT-2 shapes with the real vocabulary; 256 wide so every k-quant fits the rows."""
    return HParams(N_VOCAB, n_ctx, n_embd, n_head, n_layer)


def weights(hp: HParams, seed: int = 0) -> dict[str, np.ndarray]:
    """Random GPT-2 weights under GGML names (numpy order, (out, in) matrices)."""
    return dict(random_tensors(hp, seed, scale=0.3))


def encode(array: np.ndarray, kind: str) -> tuple[np.ndarray, object]:
    """(array to hand GGUFWriter.add_tensor, raw_dtype) for one tensor in `kind`."""
    import gguf
    from gguf.quants import quantize

    qtype = getattr(gguf.GGMLQuantizationType, kind.upper())
    if kind == "f32":
        return array.astype(np.float32), None
    if kind == "f16":
        return array.astype(np.float16), None
    if kind.startswith("iq"):  # gguf-py cannot write i-quants: zero blocks of the right size (for refusals)
        per, size = gguf.GGML_QUANT_SIZES[qtype]
        return np.zeros((array.shape[0], array.shape[1] // per * size), np.uint8), qtype
    if kind in kquant.TYPES:
        data = np.frombuffer(kquant.quantize(array, kind), np.uint8)
        return data.reshape(array.shape[0], -1), qtype
    return quantize(array.astype(np.float32), qtype), qtype


def write_gguf(path: Path, hp: HParams, tensors: dict[str, np.ndarray], type_of: Callable[[str], str],
               *, arch: str = "gpt2", metadata: dict | None = None) -> Path:
    """Write a GGUF file: tensors (GGML names) each stored in type_of(GGML name), GPT-2 tokenizer metadata."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    add_gpt2_hparams(w, hp)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(list(gpt2_tokens()))
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in gpt2_tokens()])
    w.add_token_merges([f"{a} {b}" for a, b in gpt2_merges()])
    w.add_bos_token_id(N_VOCAB - 1)
    w.add_eos_token_id(N_VOCAB - 1)
    for key, value in (metadata or {}).items():
        w.add_string(key, value)
    for name, array in tensors.items():
        data, raw = encode(array, type_of(name))
        w.add_tensor(gguf_name(name), data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
