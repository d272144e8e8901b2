"""A GPT-2 GGML file as a GGUF file for llama.cpp: the same tensors, byte for byte, and the tokenizer.

The GGUF names follow llama.cpp's gpt2 architecture. Merges come from the tokenizer.json beside
the GGML file when there is one (the real BPE); without one, the vocabulary alone (llama.cpp needs
the key; MiniVault tokenizes prompts itself and sends token ids).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from service.formats.ggml.format import HParams, read_gpt2
from service.tokenizer.bpe import bytes_to_unicode

_NAMES = {
    "model/wte": "token_embd.weight", "model/wpe": "position_embd.weight",
    "model/ln_f/g": "output_norm.weight", "model/ln_f/b": "output_norm.bias", "model/lm_head": "output.weight",
}
_LAYER = {
    "ln_1/g": "attn_norm.weight", "ln_1/b": "attn_norm.bias", "ln_2/g": "ffn_norm.weight", "ln_2/b": "ffn_norm.bias",
    "attn/c_attn/w": "attn_qkv.weight", "attn/c_attn/b": "attn_qkv.bias",
    "attn/c_proj/w": "attn_output.weight", "attn/c_proj/b": "attn_output.bias",
    "mlp/c_fc/w": "ffn_up.weight", "mlp/c_fc/b": "ffn_up.bias",
    "mlp/c_proj/w": "ffn_down.weight", "mlp/c_proj/b": "ffn_down.bias",
}  # fmt: skip
# GGML ftype -> llama.cpp's general.file_type (a k-quant file is named by its _M mix: metadata only)
_FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
               "q2_k": 10, "q3_k": 12, "q4_k": 15, "q5_k": 17, "q6_k": 18}
END = "<|endoftext|>"


def gguf_name(name: str) -> str:
    """llama.cpp's name for a GGML gpt2 tensor: model/h3/mlp/c_fc/w -> blk.3.ffn_up.weight."""
    if name in _NAMES:
        return _NAMES[name]
    layer, rest = name.removeprefix("model/h").split("/", 1)
    return f"blk.{layer}.{_LAYER[rest]}"


def add_gpt2_hparams(w: Any, hp: HParams) -> None:
    """Write GPT-2's hyper-parameters into a gguf.GGUFWriter, under llama.cpp's gpt2 keys."""
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(hp.n_embd)
    w.add_feed_forward_length(4 * hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_head_count(hp.n_head)
    w.add_layer_norm_eps(1e-5)


def _merges(src: Path) -> list[str]:
    """The BPE merges of the tokenizer.json beside `src`, or none."""
    path = src.parent / "tokenizer.json"
    if not path.is_file():
        return []
    merges = json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("merges", [])
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def ggml_to_gguf(src: Path, dst: Path) -> Path:
    """Write `src`'s tensors (same types, same bytes) and vocabulary as a llama.cpp gpt2 GGUF, atomically."""
    import gguf

    ggml = read_gpt2(src)
    hp = ggml.hparams
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), "gpt2")
    try:
        add_gpt2_hparams(w, hp)
        w.add_file_type(_FILE_TYPES[hp.ftype])
        to_unicode = bytes_to_unicode()
        tokens = [t.decode() if t == END.encode() else "".join(to_unicode[b] for b in t) for t in ggml.vocab]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types([gguf.TokenType.CONTROL if t == END else gguf.TokenType.NORMAL for t in tokens])
        w.add_token_merges(_merges(src) or ["< t"])
        if END in tokens:
            w.add_bos_token_id(tokens.index(END))
            w.add_eos_token_id(tokens.index(END))
        with open(src, "rb") as f:
            for name, info in ggml.tensors.items():
                f.seek(info.offset)
                raw = np.frombuffer(f.read(info.nbytes), dtype=np.uint8)
                qtype = gguf.GGMLQuantizationType[info.ggml_type.upper()]
                if qtype == gguf.GGMLQuantizationType.F32:
                    w.add_tensor(gguf_name(name), raw.view(np.float32).reshape(info.shape))
                else:
                    rows = info.shape[0] if len(info.shape) == 2 else 1
                    w.add_tensor(gguf_name(name), raw.reshape(rows, -1), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
