"""The GGML gpt2 file format that ctransformers (and ggml's gpt-2 example) reads.

Layout, all little-endian:
  magic u32 0x67676d6c
  hparams i32 x6: n_vocab, n_ctx, n_embd, n_head, n_layer, ftype (+ 1000 * quant version)
  vocab: i32 n_vocab, then per token: u32 length, raw bytes
  tensors until EOF: i32 n_dims, i32 name length, i32 ggml type, i32 ne[n_dims], name, data
ne[0] is the innermost (contiguous) dimension, so a numpy array of shape (rows, cols)
is written with ne = (cols, rows).
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping

import numpy as np

from service.fileio import atomic_file
from service.formats.ggml import quant

MAGIC = 0x67676D6C
QNT_VERSION = 2
QNT_VERSION_FACTOR = 1000

# File-level "ftype": the type of the big matrices; norms, biases and wpe stay f32.
FTYPES: dict[str, int] = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}
# ggml's GGML_FTYPE_MOSTLY_Q2_K..Q6_K: ctransformers' gpt2 loader maps each to one weight type
KQUANT_FTYPES: dict[str, int] = {"q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14}
FTYPES |= KQUANT_FTYPES
FTYPE_NAMES = {v: k for k, v in FTYPES.items()}

# Tensors whose type follows the file's ftype; every other tensor is f32.
_MATRIX_SUFFIXES = ("/attn/c_attn/w", "/attn/c_proj/w", "/mlp/c_fc/w", "/mlp/c_proj/w")
_MATRIX_NAMES = ("model/wte", "model/lm_head")


@dataclass(frozen=True)
class HParams:
    """GPT-2 hyper-parameters as stored in the file header."""

    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    ftype: str = "f32"


@dataclass
class TensorInfo:
    """Where one tensor lives in a GGML file."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]  # numpy order (rows, cols)
    offset: int
    nbytes: int


@dataclass
class GGMLFile:
    """A parsed GGML gpt2 file header: hparams, vocabulary and tensor index."""

    hparams: HParams
    vocab: list[bytes]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    quant_version: int = 0


def is_matrix(name: str) -> bool:
    """Whether a tensor is one of the weight matrices, stored in the file's ftype."""
    return name in _MATRIX_NAMES or name.endswith(_MATRIX_SUFFIXES)


def tensor_type(name: str, ftype: str) -> str:
    """The ggml type a tensor is stored in for a file of `ftype`."""
    return ftype if is_matrix(name) else "f32"


def gpt2_tensor_shapes(hp: HParams) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 GGML file holds, with its numpy shape (rows, cols)."""
    e = hp.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "model/ln_f/g": (e,),
        "model/ln_f/b": (e,),
        "model/wte": (hp.n_vocab, e),
        "model/wpe": (hp.n_ctx, e),
    }
    for i in range(hp.n_layer):
        p = f"model/h{i}"
        shapes |= {
            f"{p}/ln_1/g": (e,),
            f"{p}/ln_1/b": (e,),
            f"{p}/ln_2/g": (e,),
            f"{p}/ln_2/b": (e,),
            f"{p}/attn/c_attn/w": (3 * e, e),
            f"{p}/attn/c_attn/b": (3 * e,),
            f"{p}/attn/c_proj/w": (e, e),
            f"{p}/attn/c_proj/b": (e,),
            f"{p}/mlp/c_fc/w": (4 * e, e),
            f"{p}/mlp/c_fc/b": (4 * e,),
            f"{p}/mlp/c_proj/w": (e, 4 * e),
            f"{p}/mlp/c_proj/b": (e,),
        }
    return shapes


def _write_header(f: BinaryIO, hp: HParams, vocab: list[bytes]) -> None:
    if hp.ftype not in FTYPES:
        raise ValueError(f"unknown ftype {hp.ftype!r}; expected one of {sorted(FTYPES)}")
    if len(vocab) != hp.n_vocab:
        raise ValueError(f"vocab has {len(vocab)} tokens but n_vocab is {hp.n_vocab}")
    ftype = FTYPES[hp.ftype]
    if hp.ftype not in ("f32", "f16"):
        ftype += QNT_VERSION * QNT_VERSION_FACTOR
    f.write(struct.pack("<I6i", MAGIC, hp.n_vocab, hp.n_ctx, hp.n_embd, hp.n_head, hp.n_layer, ftype))
    f.write(struct.pack("<i", len(vocab)))
    for token in vocab:
        f.write(struct.pack("<I", len(token)))
        f.write(token)


def _write_tensor(f: BinaryIO, name: str, array: np.ndarray, ggml_type: str) -> None:
    encoded = name.encode()
    ne = tuple(reversed(array.shape))
    f.write(struct.pack(f"<3i{len(ne)}i", len(ne), len(encoded), quant.GGML_TYPES[ggml_type], *ne))
    f.write(encoded)
    f.write(quant.quantize(array, ggml_type))


def write_gpt2(
    path: str | os.PathLike[str],
    hp: HParams,
    vocab: list[bytes],
    tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
) -> str:
    """Write a GPT-2 GGML file atomically (temp name, fsync, rename); return its sha256.

    `tensors` maps GGML tensor names to float arrays in numpy (rows, cols) order;
    each is checked against the shape GPT-2 needs and stored in the type the
    file's ftype gives it. Without `model/lm_head`, ggml ties it to `model/wte`.
    """
    path = Path(path)
    expected = gpt2_tensor_shapes(hp)
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    digest = hashlib.sha256()
    seen: set[str] = set()
    with atomic_file(path) as raw:
        f = _HashingWriter(raw, digest)
        _write_header(f, hp, vocab)
        for name, array in items:
            want = expected.get(name)
            if want is None and name != "model/lm_head":
                raise ValueError(f"unexpected tensor {name!r}")
            if name == "model/lm_head":
                want = expected["model/wte"]
            if tuple(array.shape) != want:
                raise ValueError(f"tensor {name!r} has shape {array.shape}, expected {want}")
            _write_tensor(f, name, np.asarray(array, dtype=np.float32), tensor_type(name, hp.ftype))
            seen.add(name)
        missing = sorted(set(expected) - seen)
        if missing:
            raise ValueError(f"missing tensors: {', '.join(missing[:4])}")
    return digest.hexdigest()


def write_gpt2_blocks(
    path: str | os.PathLike[str],
    hp: HParams,
    vocab: list[bytes],
    tensors: Iterable[tuple[str, str, tuple[int, ...], bytes]],
) -> str:
    """Write a GPT-2 GGML file from tensors already encoded: (name, ggml type, numpy shape, bytes); return its sha256.

    Each tensor must be stored in the type the file's ftype gives it, as ctransformers' loader requires.
    """
    expected = gpt2_tensor_shapes(hp) | {"model/lm_head": (hp.n_vocab, hp.n_embd)}
    digest = hashlib.sha256()
    seen: set[str] = set()
    with atomic_file(Path(path)) as raw:
        f = _HashingWriter(raw, digest)
        _write_header(f, hp, vocab)
        for name, ggml_type, shape, data in tensors:
            if expected.get(name) != tuple(shape):
                raise ValueError(f"tensor {name!r} has shape {shape}, expected {expected.get(name)}")
            if ggml_type != tensor_type(name, hp.ftype) or len(data) != quant.nbytes(shape, ggml_type):
                raise ValueError(f"tensor {name!r}: {len(data)} bytes of {ggml_type} in a {hp.ftype} file")
            encoded = name.encode()
            ne = tuple(reversed(shape))
            f.write(struct.pack(f"<3i{len(ne)}i", len(ne), len(encoded), quant.GGML_TYPES[ggml_type], *ne))
            f.write(encoded)
            f.write(data)
            seen.add(name)
        missing = sorted(set(gpt2_tensor_shapes(hp)) - seen)
        if missing:
            raise ValueError(f"missing tensors: {', '.join(missing[:4])}")
    return digest.hexdigest()


class _HashingWriter:
    """A file wrapper that hashes everything written through it."""

    def __init__(self, f: BinaryIO, digest: "hashlib._Hash") -> None:
        self._f, self._digest = f, digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return self._f.write(data)


def read_gpt2(path: str | os.PathLike[str]) -> GGMLFile:
    """Parse a GGML gpt2 file's header, vocabulary and tensor index (no tensor data).

    Raises ValueError with a plain message when the file is not a complete GGML gpt2 file.
    """
    try:
        return _read_gpt2(Path(path))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: truncated or corrupt GGML file ({exc})") from None


def _read_gpt2(path: Path) -> GGMLFile:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(28)
        if len(head) < 28:
            raise ValueError(f"{path}: too short to be a GGML file ({size} bytes)")
        magic, n_vocab, n_ctx, n_embd, n_head, n_layer, ftype = struct.unpack("<I6i", head)
        if magic != MAGIC:
            raise ValueError(f"{path}: not a GGML file (magic {magic:#010x}, expected {MAGIC:#010x})")
        qv, ft = divmod(ftype, QNT_VERSION_FACTOR)
        if ft not in FTYPE_NAMES:
            raise ValueError(f"{path}: unsupported ftype {ft}")
        hp = HParams(n_vocab, n_ctx, n_embd, n_head, n_layer, FTYPE_NAMES[ft])
        (count,) = struct.unpack("<i", f.read(4))
        if count != n_vocab:
            raise ValueError(f"{path}: vocab count {count} != n_vocab {n_vocab}")
        vocab = []
        for _ in range(count):
            (length,) = struct.unpack("<I", f.read(4))
            vocab.append(f.read(length))
        out = GGMLFile(hp, vocab, quant_version=qv)
        type_names = {v: k for k, v in quant.GGML_TYPES.items()}
        while True:
            head = f.read(12)
            if not head:
                break
            if len(head) < 12:
                raise ValueError(f"{path}: truncated tensor header")
            n_dims, name_len, ttype = struct.unpack("<3i", head)
            ne = struct.unpack(f"<{n_dims}i", f.read(4 * n_dims))
            name = f.read(name_len).decode()
            gtype = type_names.get(ttype)
            if gtype is None:
                raise ValueError(f"{path}: tensor {name!r} has unknown type {ttype}")
            shape = tuple(reversed(ne))
            nbytes = quant.nbytes(shape, gtype)
            offset = f.tell()
            if offset + nbytes > size:
                raise ValueError(f"{path}: tensor {name!r} is truncated (file is {size} bytes)")
            f.seek(nbytes, os.SEEK_CUR)
            out.tensors[name] = TensorInfo(name, gtype, shape, offset, nbytes)
    missing = set(gpt2_tensor_shapes(hp)) - set(out.tensors)
    if missing:
        raise ValueError(f"{path}: missing tensors: {', '.join(sorted(missing)[:4])}")
    return out


def read_tensor(path: str | os.PathLike[str], info: TensorInfo) -> np.ndarray:
    """Read one tensor's data back as float32 (dequantising if needed)."""
    with open(path, "rb") as f:
        f.seek(info.offset)
        data = f.read(info.nbytes)
    return quant.dequantize(data, info.ggml_type, info.shape)
