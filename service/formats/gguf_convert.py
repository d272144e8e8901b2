"""Convert a GPT-2 GGUF file into a MiniVault model folder (GGML model.bin, tokenizer.json, manifest.json).

ctransformers' gpt2 loader takes one ggml type for every weight matrix (the header's ftype)
and f32 for everything else. Matrices are copied block for block when the GGUF already has
them in one type the loader knows (f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k..q6_k); a GGUF
that mixes types (the _M/_S mixes) has the minority matrices requantised to the type holding
most of the weights, and the measured error of each is recorded. Norms, biases and position
embeddings are decoded to f32, which is exact. The tokenizer comes from the GGUF metadata.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from service.fileio import install, write_atomic
from service.formats.convert import (
    MODEL_FILE,
    TOKENIZER_FILE,
    _check_destination,
    _ggml_vocab,
)
from service.formats.ggml import quant
from service.formats.ggml.format import (
    FTYPES,
    HParams,
    gpt2_tensor_shapes,
    is_matrix,
    tensor_type,
    write_gpt2_blocks,
)
from service.formats.gguf import GGUFFile, GGUFTensor, read_gguf, tensor_bytes
from service.formats.manifest import HParams as ManifestHParams
from service.formats.manifest import (
    Manifest,
    Requantised,
    Source,
    file_sha256,
    utc_now,
    write_manifest,
)
from service.tokenizer.bpe import GPT2Tokenizer, TokenizerFormatError, json_bytes

COPIED = tuple(FTYPES)  # the types ctransformers' gpt2 loader accepts, copied as they are
_DECODED = ("bf16",)  # not loadable, but decoded exactly (to f32)

_TOP = {"token_embd.weight": "model/wte", "position_embd.weight": "model/wpe", "output_norm.weight": "model/ln_f/g",
        "output_norm.bias": "model/ln_f/b", "output.weight": "model/lm_head"}
_LAYER = {
    "attn_norm.weight": "ln_1/g", "attn_norm.bias": "ln_1/b", "ffn_norm.weight": "ln_2/g", "ffn_norm.bias": "ln_2/b",
    "attn_qkv.weight": "attn/c_attn/w", "attn_qkv.bias": "attn/c_attn/b",
    "attn_output.weight": "attn/c_proj/w", "attn_output.bias": "attn/c_proj/b",
    "ffn_up.weight": "mlp/c_fc/w", "ffn_up.bias": "mlp/c_fc/b",
    "ffn_down.weight": "mlp/c_proj/w", "ffn_down.bias": "mlp/c_proj/b",
}  # fmt: skip


def gguf_hparams(g: GGUFFile) -> HParams:
    """GPT-2 hyper-parameters from the metadata, refusing what ggml's gpt2 would run wrongly."""
    arch = g.architecture
    if arch != "gpt2":
        raise ValueError(f"{g.path.name} holds a {arch or 'unnamed'} model (general.architecture); "
                         "MiniVault converts GGUF files of architecture gpt2 only")
    meta = g.metadata
    keys = ("context_length", "embedding_length", "attention.head_count", "block_count")
    missing = [k for k in keys if not isinstance(meta.get(f"gpt2.{k}"), int)]
    if missing:
        raise ValueError(f"{g.path.name}: metadata lacks gpt2.{', gpt2.'.join(missing)}")
    n_ctx, n_embd, n_head, n_layer = (meta[f"gpt2.{k}"] for k in keys)
    ff = meta.get("gpt2.feed_forward_length", 4 * n_embd)
    eps = meta.get("gpt2.attention.layer_norm_epsilon", 1e-5)
    if ff != 4 * n_embd or not math.isclose(float(eps), 1e-5, rel_tol=1e-4):
        raise ValueError(f"{g.path.name}: feed_forward_length {ff} / layer_norm_epsilon {eps} differ from GPT-2's "
                         "(4 * n_embd, 1e-5), which GGML's gpt2 assumes")
    wte = g.tensors.get("token_embd.weight")
    if wte is None:
        raise ValueError(f"{g.path.name} has no token_embd.weight tensor")
    return HParams(wte.shape[0], n_ctx, n_embd, n_head, n_layer)


def gguf_tokenizer(g: GGUFFile, n_vocab: int) -> GPT2Tokenizer:
    """GPT-2's BPE from tokenizer.ggml.* metadata: tokens, merges, and control tokens as specials."""
    meta = g.metadata
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise TokenizerFormatError(f"{g.path.name}: tokenizer.ggml.model is {meta.get('tokenizer.ggml.model')!r}; "
                                   "MiniVault runs GPT-2's byte-level BPE ('gpt2')")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise TokenizerFormatError(f"{g.path.name}: metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    if len(tokens) != n_vocab:
        raise TokenizerFormatError(f"{g.path.name}: {len(tokens)} tokens but token_embd has {n_vocab} rows")
    kinds = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    specials = [t for t, k in zip(tokens, kinds) if k in (3, 4)]  # CONTROL, USER_DEFINED
    for key in ("bos", "eos", "unknown", "padding"):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(i, int) and 0 <= i < len(tokens) and tokens[i] not in specials:
            specials.append(tokens[i])
    return GPT2Tokenizer({t: i for i, t in enumerate(tokens)}, merges, specials)


def _names(g: GGUFFile, hp: HParams) -> dict[str, GGUFTensor]:
    """GGML name -> GGUF tensor, checking names and shapes against GPT-2's."""
    mapping = dict(_TOP)
    for i in range(hp.n_layer):
        mapping |= {f"blk.{i}.{k}": f"model/h{i}/{v}" for k, v in _LAYER.items()}
    extra = sorted(set(g.tensors) - set(mapping))
    if extra:
        raise ValueError(f"{g.path.name} has tensors a GPT-2 does not: {', '.join(extra[:4])}")
    shapes = gpt2_tensor_shapes(hp) | {"model/lm_head": (hp.n_vocab, hp.n_embd)}
    by_ggml = {v: k for k, v in mapping.items()}
    out = {}
    for dst in shapes:  # GGML's order, as the project's writer uses
        src = by_ggml[dst]
        t = g.tensors.get(src)
        if t is None:
            if dst != "model/lm_head":
                raise ValueError(f"{g.path.name} lacks the GPT-2 tensor {src}")
            continue
        if t.shape != shapes[dst]:
            raise ValueError(f"{g.path.name}: {src} has shape {t.shape}, GPT-2 needs {shapes[dst]}")
        out[dst] = t
    return out


def plan_types(tensors: dict[str, GGUFTensor]) -> tuple[str, dict[str, int]]:
    """(the one matrix type to write, {type: tensor count} found); ValueError for types it can't convert."""
    found: dict[str, int] = {}
    weight: dict[str, int] = {}
    for name, t in tensors.items():
        found[t.ggml_type] = found.get(t.ggml_type, 0) + 1
        if t.ggml_type not in COPIED + _DECODED:
            raise ValueError(f"{name} ({_gguf_name(name)}) is {t.ggml_type}, which ctransformers' GGML cannot run; "
                             f"MiniVault converts GGUF tensors in {', '.join(COPIED)} (and bf16)")
        if is_matrix(name):
            weight[t.ggml_type] = weight.get(t.ggml_type, 0) + math.prod(t.shape)
    rows = {t.shape[-1] for n, t in tensors.items() if is_matrix(n)}
    # the type holding most weights (ties: more bits), among those every matrix's rows fit
    ranked = sorted(weight, key=lambda k: (-weight[k], -quant.bits_per_weight(_loadable(k))))
    for kind in [_loadable(k) for k in ranked] + ["f16"]:
        if all(r % quant.BLOCK[kind][0] == 0 for r in rows):
            return kind, dict(sorted(found.items()))
    return "f32", dict(sorted(found.items()))


def _loadable(kind: str) -> str:
    return "f32" if kind in _DECODED else kind


def _gguf_name(ggml_name: str) -> str:
    rev = {v: k for k, v in _TOP.items()} | {f"model/h{{}}/{v}": f"blk.{{}}.{k}" for k, v in _LAYER.items()}
    if ggml_name in rev:
        return rev[ggml_name]
    layer, rest = ggml_name.removeprefix("model/h").split("/", 1)
    return rev[f"model/h{{}}/{rest}"].format(layer)


def _decode(path: Path, t: GGUFTensor) -> np.ndarray:
    data = tensor_bytes(path, t)
    if t.ggml_type == "bf16":
        return (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
    return quant.dequantize(data, t.ggml_type, t.shape)


def _blocks(path: Path, tensors: dict[str, GGUFTensor], wtype: str,
            changes: list[Requantised]) -> Iterator[tuple[str, str, tuple[int, ...], bytes]]:
    """(name, type, shape, bytes) per tensor: copied when already in its type, else converted."""
    for name, t in tensors.items():
        want = tensor_type(name, wtype)
        if t.ggml_type == want:
            yield name, want, t.shape, tensor_bytes(path, t)
            continue
        source = _decode(path, t)
        data = quant.quantize(source, want)
        if want != "f32" and is_matrix(name):
            back = quant.dequantize(data, want, t.shape)
            scale = float(np.sqrt(np.mean(np.square(source, dtype=np.float64))))
            err = float(np.sqrt(np.mean(np.square(back - source, dtype=np.float64)))) / (scale or 1.0)
            changes.append(Requantised(tensor=_gguf_name(name), source_type=t.ggml_type, type=want,
                                       rms_error=round(err, 6)))
        yield name, want, t.shape, data


def convert_gguf(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    source_repo: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Convert the GPT-2 GGUF file `src` into the model folder `out_dir`; return its manifest.

    The manifest records the GGUF's sha256 and tensor types, and every requantised tensor with
    its relative RMS error. ValueError (one line, naming what was found) for anything else.
    """
    src, out = Path(src), Path(out_dir)
    g = read_gguf(src)
    hp = gguf_hparams(g)
    tokenizer = gguf_tokenizer(g, hp.n_vocab)
    tokenizer_json = tokenizer.to_json()
    tensors = _names(g, hp)
    head = tensors.get("model/lm_head")
    if head and head.ggml_type == tensors["model/wte"].ggml_type and \
            tensor_bytes(src, head) == tensor_bytes(src, tensors["model/wte"]):
        del tensors["model/lm_head"]  # llama.cpp writes GPT-2's tied head out again; ggml ties it itself
    wtype, _ = plan_types(tensors)
    found = dict(sorted(Counter(t.ggml_type for t in g.tensors.values()).items()))  # all it held
    hp = HParams(hp.n_vocab, hp.n_ctx, hp.n_embd, hp.n_head, hp.n_layer, wtype)
    vocab = _ggml_vocab(tokenizer_json, hp.n_vocab)
    _check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
    work.mkdir()
    try:
        changes: list[Requantised] = []
        sha256 = write_gpt2_blocks(work / MODEL_FILE, hp, vocab, _blocks(src, tensors, wtype, changes))
        write_atomic(work / TOKENIZER_FILE, json_bytes(tokenizer_json))
        manifest = Manifest(
            name=name or out.name, file=MODEL_FILE,
            source=Source(repo=source_repo, revision=revision, kind="gguf"), quant=wtype,
            hparams=ManifestHParams.of(hp),
            parameters=sum(math.prod(t.shape) for t in tensors.values()),  # an untied lm_head counts
            size=(work / MODEL_FILE).stat().st_size, sha256=sha256, created=utc_now(), tokenizer=TOKENIZER_FILE,
            source_file=src.name, source_sha256=file_sha256(src), source_types=found, requantised=changes,
        )  # fmt: skip
        write_manifest(work, manifest)
        _check_destination(out, overwrite)
        install(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return manifest
