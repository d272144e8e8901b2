"""Convert a Hugging Face GPT-2 checkpoint (safetensors) into a MiniVault model folder.

The folder gets model.bin (GGML gpt2, matrices in the chosen type), tokenizer.json and
manifest.json. It is built under a temporary name beside the destination and renamed into
place at the end, so a half-finished conversion is never picked up as a model.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from service.fileio import install, write_atomic
from service.formats.ggml.format import FTYPES, HParams, gpt2_tensor_shapes, write_gpt2
from service.formats.ggml.quant import BLOCK
from service.formats.manifest import HParams as ManifestHParams
from service.formats.manifest import Manifest, Source, utc_now, write_manifest
from service.formats.safetensors import SafeTensors
from service.tokenizer.bpe import bytes_to_unicode
from service.tokenizer.files import tokenizer_json_bytes

MODEL_FILE = "model.bin"
TOKENIZER_FILE = "tokenizer.json"
QUANTS = tuple(FTYPES)  # f32 f16 q4_0 q4_1 q8_0 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k

# ggml's gpt2 runs the tanh GELU; these config names all mean that function.
_TANH_GELU = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}
_PICKLE_HINTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.h5", "*.msgpack")

_TOP = {"wte.weight": "model/wte", "wpe.weight": "model/wpe", "ln_f.weight": "model/ln_f/g", "ln_f.bias": "model/ln_f/b"}
_LAYER = {
    "ln_1.weight": "ln_1/g", "ln_1.bias": "ln_1/b", "ln_2.weight": "ln_2/g", "ln_2.bias": "ln_2/b",
    "attn.c_attn.weight": "attn/c_attn/w", "attn.c_attn.bias": "attn/c_attn/b",
    "attn.c_proj.weight": "attn/c_proj/w", "attn.c_proj.bias": "attn/c_proj/b",
    "mlp.c_fc.weight": "mlp/c_fc/w", "mlp.c_fc.bias": "mlp/c_fc/b",
    "mlp.c_proj.weight": "mlp/c_proj/w", "mlp.c_proj.bias": "mlp/c_proj/b",
}  # fmt: skip
# Attention-mask buffers some checkpoints carry; they are not weights.
_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def convert_checkpoint(
    src_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    quant: str = "q4_0",
    *,
    name: str | None = None,
    source_repo: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Convert the GPT-2 checkpoint in `src_dir` into the model folder `out_dir`; return its manifest.

    `src_dir` needs config.json (model_type "gpt2"), model.safetensors (or a sharded
    safetensors index) and a tokenizer: tokenizer.json, or vocab.json + merges.txt.
    Matrices are stored as `quant`; biases, norms and position embeddings stay f32; the
    output head is tied to the token embedding unless the checkpoint has its own.
    Raises ValueError naming what was found and what is accepted for any other input,
    and when `out_dir` already holds files (unless `overwrite`).
    """
    src, out = Path(src_dir), Path(out_dir)
    if quant not in FTYPES:
        raise ValueError(f"unknown quantisation {quant!r}; accepted: {', '.join(QUANTS)}")
    if not src.is_dir():
        raise ValueError(f"{src} is not a directory; expected a Hugging Face checkpoint folder")
    hp = _hparams(_read_config(src), quant)
    with SafeTensors(_weight_files(src)) as weights:
        tokenizer_json = tokenizer_json_bytes(src)  # checked to be a GPT-2 byte-level BPE
        vocab = _ggml_vocab(json.loads(tokenizer_json), hp.n_vocab)
        names = _tensor_names(weights, hp)
        _check_destination(out, overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        work = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
        work.mkdir()  # not mkdtemp: its 0700 mode would hide the model from another user
        try:
            count = [0]
            sha256 = write_gpt2(work / MODEL_FILE, hp, vocab, _tensors(weights, names, count))
            write_atomic(work / TOKENIZER_FILE, tokenizer_json)
            manifest = Manifest(
                name=name or out.name,
                file=MODEL_FILE,
                source=Source(repo=source_repo, revision=revision, kind="converted"),
                quant=quant,
                hparams=ManifestHParams.of(hp),
                parameters=count[0],
                size=(work / MODEL_FILE).stat().st_size,
                sha256=sha256,
                created=utc_now(),
                tokenizer=TOKENIZER_FILE,
            )
            write_manifest(work, manifest)
            _check_destination(out, overwrite)  # again: `out` may have been filled meanwhile
            install(work, out)
        finally:
            if work.exists():
                shutil.rmtree(work)
    return manifest


# --- config ---------------------------------------------------------------------------


def _read_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise ValueError(f"{src} has no config.json; expected a Hugging Face GPT-2 checkpoint folder")
    try:
        config = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


def _hparams(config: dict[str, Any], quant: str) -> HParams:
    """GGML hyper-parameters from config.json, refusing variants ggml's gpt2 would run wrongly."""
    kind = config.get("model_type")
    if kind != "gpt2":
        raise ValueError(f"config.json has model_type {kind!r}; accepted: 'gpt2' (gpt2, distilgpt2, gpt2-medium/large/xl)")
    missing = [k for k in ("vocab_size", "n_embd", "n_head", "n_layer") if not isinstance(config.get(k), int)]
    n_ctx = config.get("n_positions", config.get("n_ctx"))
    if not isinstance(n_ctx, int):
        missing.append("n_positions")
    if missing:
        raise ValueError(f"config.json lacks integer {', '.join(missing)}")
    act = config.get("activation_function", "gelu_new")
    if act not in _TANH_GELU:
        raise ValueError(f"config.json has activation_function {act!r}; accepted: {', '.join(sorted(_TANH_GELU))}")
    unsupported = {
        "scale_attn_by_inverse_layer_idx": bool(config.get("scale_attn_by_inverse_layer_idx")),
        "scale_attn_weights=false": config.get("scale_attn_weights", True) is False,
        "add_cross_attention": bool(config.get("add_cross_attention")),
        "n_inner != 4*n_embd": config.get("n_inner") not in (None, 4 * config["n_embd"]),
        "layer_norm_epsilon != 1e-5": config.get("layer_norm_epsilon", 1e-5) != 1e-5,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"config.json uses {', '.join(bad)}, which GGML's gpt2 does not implement")
    n_embd, n_head = config["n_embd"], config["n_head"]
    if n_head < 1 or n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
    block = BLOCK[quant][0]
    if n_embd % block:
        raise ValueError(f"{quant} needs n_embd to be a multiple of {block}, got {n_embd}; use f16 or f32")
    return HParams(config["vocab_size"], n_ctx, n_embd, n_head, config["n_layer"], quant)


# --- weights --------------------------------------------------------------------------


def _weight_files(src: Path) -> list[Path]:
    single, index = src / "model.safetensors", src / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index} is not a safetensors index ({exc})") from None
        missing = [s for s in shards if not (src / s).is_file()]
        if missing:
            raise ValueError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return [src / s for s in shards]
    pickles = sorted(p.name for pattern in _PICKLE_HINTS for p in src.glob(pattern))
    if pickles:
        raise ValueError(
            f"{src} has {', '.join(pickles)} but no model.safetensors; only safetensors checkpoints are "
            "accepted (PyTorch .bin/.pt weights are pickles, which can run arbitrary code when loaded)"
        )
    raise ValueError(f"{src} has no model.safetensors (or model.safetensors.index.json)")


def _tensor_names(weights: SafeTensors, hp: HParams) -> list[tuple[str, str]]:
    """(GGML name, checkpoint key) pairs in file order, checking nothing is missing or unknown."""
    keys = set(weights.index)
    prefix = "transformer." if any(k.startswith("transformer.") for k in keys) else ""
    hf = {f"{prefix}{k}": v for k, v in _TOP.items()}
    for i in range(hp.n_layer):
        hf |= {f"{prefix}h.{i}.{k}": f"model/h{i}/{v}" for k, v in _LAYER.items()}
    missing = sorted(k for k in hf if k not in keys)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} GPT-2 tensors, e.g. {', '.join(missing[:3])}")
    extra = sorted(k for k in keys - set(hf) - {"lm_head.weight"} if not _BUFFER.match(k.removeprefix(prefix)))
    if extra:
        raise ValueError(f"checkpoint has tensors a GPT-2 LM does not: {', '.join(extra[:5])}")
    by_ggml = {v: k for k, v in hf.items()}
    names = [(g, by_ggml[g]) for g in gpt2_tensor_shapes(hp)]
    if "lm_head.weight" in keys and not np.array_equal(weights.get("lm_head.weight"), weights.get(f"{prefix}wte.weight")):
        names.append(("model/lm_head", "lm_head.weight"))
    return names


def _tensors(weights: SafeTensors, names: list[tuple[str, str]], count: list[int]) -> Iterator[tuple[str, np.ndarray]]:
    """Checkpoint tensors under GGML names; Conv1D (in, out) matrices become GGML's (out, in)."""
    for ggml_name, key in names:
        array = weights.get(key)
        if ggml_name.endswith("/w"):
            array = array.T
        count[0] += array.size
        yield ggml_name, array


# --- tokenizer ------------------------------------------------------------------------


def _ggml_vocab(tokenizer: dict[str, Any], n_vocab: int) -> list[bytes]:
    """The raw bytes of every token id of a tokenizer.json; ids the tokenizer does not use get empty bytes.

    BPE tokens are spelled in GPT-2's byte stand-in characters; added tokens are plain text.
    """
    bpe = tokenizer["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tokenizer.get("added_tokens") or []}
    top = max([*bpe.values(), *added.values()], default=-1)
    if top >= n_vocab:
        raise ValueError(f"tokenizer has ids up to {top} but the model has only {n_vocab} token embeddings")
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    vocab = [b""] * n_vocab
    for token, i in bpe.items():
        if all(c in decoder for c in token):
            vocab[i] = bytes(decoder[c] for c in token)
        else:  # not byte-level spelled: keep its text
            vocab[i] = token.encode("utf-8")
    for token, i in added.items():
        vocab[i] = token.encode("utf-8")
    return vocab


# --- files ----------------------------------------------------------------------------


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} already exists and is not empty; remove it or convert with overwrite")
