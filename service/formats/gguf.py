"""A reader for GGUF files (llama.cpp's model format since August 2023): metadata and tensor index.

Layout, little-endian: magic "GGUF", u32 version (2 or 3), u64 tensor count, u64 metadata count;
metadata as (string key, u32 value type, value); tensor infos as (string name, u32 n_dims,
u64 ne[n_dims], u32 ggml type, u64 offset); then, aligned to `general.alignment` (32), the data.
Strings are u64 length + UTF-8. Tensor data is not read here; `tensor_bytes` reads one tensor.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> struct format of a scalar (8 = string, 9 = array are read apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

# ggml_type numbers as GGUF files use them (ggml.h today), with (elements, bytes) per block
GGUF_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20),
    6: ("q5_0", 32, 22), 7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34), 9: ("q8_1", 32, 36),
    10: ("q2_k", 256, 84), 11: ("q3_k", 256, 110), 12: ("q4_k", 256, 144), 13: ("q5_k", 256, 176),
    14: ("q6_k", 256, 210), 15: ("q8_k", 256, 292), 16: ("iq2_xxs", 256, 66), 17: ("iq2_xs", 256, 74),
    18: ("iq3_xxs", 256, 98), 19: ("iq1_s", 256, 50), 20: ("iq4_nl", 32, 18), 21: ("iq3_s", 256, 110),
    22: ("iq2_s", 256, 82), 23: ("iq4_xs", 256, 136), 24: ("i8", 1, 1), 25: ("i16", 1, 2),
    26: ("i32", 1, 4), 27: ("i64", 1, 8), 28: ("f64", 1, 8), 29: ("iq1_m", 256, 56), 30: ("bf16", 1, 2),
    34: ("tq1_0", 256, 54), 35: ("tq2_0", 256, 66), 39: ("mxfp4", 32, 17),
}  # fmt: skip


@dataclass(frozen=True)
class GGUFTensor:
    """Where one tensor lives in a GGUF file; `shape` in numpy order (ne reversed)."""

    name: str
    ggml_type: str  # "q4_k", ..., or "type 99" when the number is unknown
    shape: tuple[int, ...]
    offset: int  # absolute, in the file
    nbytes: int


@dataclass
class GGUFFile:
    """A parsed GGUF header."""

    path: Path
    version: int
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: dict[str, GGUFTensor] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        """general.architecture, e.g. "gpt2", "llama"."""
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether a file starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse a GGUF file's metadata and tensor index; ValueError with a plain message if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _read(f, path, path.stat().st_size)
    except (struct.error, UnicodeDecodeError, EOFError) as exc:
        raise ValueError(f"{path}: truncated or corrupt GGUF file ({exc})") from None


def _read(f: BinaryIO, path: Path, size: int) -> GGUFFile:
    if f.read(4) != MAGIC:
        raise ValueError(f"{path}: not a GGUF file (no GGUF magic)")
    version, n_tensors, n_kv = struct.unpack("<IQQ", _exact(f, 20))
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    out = GGUFFile(path, version)
    for _ in range(n_kv):
        key = _string(f)
        (kind,) = struct.unpack("<I", _exact(f, 4))
        out.metadata[key] = _value(f, kind)
    infos = []
    for _ in range(n_tensors):
        name = _string(f)
        (n_dims,) = struct.unpack("<I", _exact(f, 4))
        ne = struct.unpack(f"<{n_dims}Q", _exact(f, 8 * n_dims))
        ttype, offset = struct.unpack("<IQ", _exact(f, 12))
        infos.append((name, ne, ttype, offset))
    align = out.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0:
        raise ValueError(f"{path}: bad general.alignment {align!r}")
    start = -(-f.tell() // align) * align
    for name, ne, ttype, offset in infos:
        known = GGUF_TYPES.get(ttype)
        gtype, per, block = known if known else (f"type {ttype}", 1, 0)
        n = 1
        for d in ne:
            n *= d
        if known and n % per:
            raise ValueError(f"{path}: tensor {name!r} has {n} elements, not a multiple of the {gtype} block {per}")
        nbytes = n // per * block
        if start + offset + nbytes > size:
            raise ValueError(f"{path}: tensor {name!r} is truncated (file is {size} bytes)")
        out.tensors[name] = GGUFTensor(name, gtype, tuple(int(d) for d in reversed(ne)), start + offset, nbytes)
    return out


def tensor_bytes(path: str | os.PathLike[str], info: GGUFTensor) -> bytes:
    """The raw blocks of one tensor, as stored."""
    with open(path, "rb") as f:
        f.seek(info.offset)
        return _exact(f, info.nbytes)


def _exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError(f"wanted {n} bytes at offset {f.tell() - len(data)}, file ends")
    return data


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", _exact(f, 8))
    return _exact(f, n).decode("utf-8")


def _value(f: BinaryIO, kind: int) -> object:
    if kind == 8:
        return _string(f)
    if kind == 9:
        item, count = struct.unpack("<IQ", _exact(f, 12))
        if item in _SCALARS:
            fmt = f"<{count}{_SCALARS[item]}"
            return list(struct.unpack(fmt, _exact(f, struct.calcsize(fmt))))
        return [_value(f, item) for _ in range(count)]
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise ValueError(f"unknown GGUF metadata type {kind}")
    (v,) = struct.unpack("<" + fmt, _exact(f, struct.calcsize(fmt)))
    return v
