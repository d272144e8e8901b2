"""ggml tensor types: byte sizes, quantise and dequantise (numpy).

The block types follow ggml's reference quantisers (`quantize_row_*_reference`, quant
version 2) bit for bit: float32 arithmetic throughout, truncating casts where the C code
casts, round-half-away-from-zero where it calls roundf, and the same tie-breaking when
picking a block's extreme value. Blocks hold 32 consecutive elements of a row; in the
4- and 5-bit types the low nibble of byte j is element j and the high nibble element j+16.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from service.formats.ggml import kquant

# ggml_type enum values as in ggml.h.
GGML_TYPES: dict[str, int] = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}
GGML_TYPES |= {name: t for name, (t, _) in kquant.TYPES.items()}  # q2_k..q6_k: ggml's own C code

QK = 32  # elements per block in every block type

# (elements per block, bytes per block)
BLOCK: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "q4_0": (QK, 18),  # f16 d, u8 qs[16]
    "q4_1": (QK, 20),  # f16 d, f16 m, u8 qs[16]
    "q5_0": (QK, 22),  # f16 d, u8 qh[4], u8 qs[16]
    "q5_1": (QK, 24),  # f16 d, f16 m, u8 qh[4], u8 qs[16]
    "q8_0": (QK, 34),  # f16 d, i8 qs[32]
} | {name: (kquant.QK_K, size) for name, (_, size) in kquant.TYPES.items()}

# Blocks handled per numpy pass: big enough to amortise call overhead, small enough
# that the temporaries stay in cache-sized territory and memory stays flat.
_CHUNK_BLOCKS = 1 << 14


def nbytes(shape: tuple[int, ...], ggml_type: str) -> int:
    """Bytes a tensor of `shape` takes in `ggml_type`."""
    per, size = BLOCK[ggml_type]
    n = int(np.prod(shape))
    if n % per:
        raise ValueError(f"{n} elements is not a multiple of the {ggml_type} block size {per}")
    return n // per * size


def bits_per_weight(ggml_type: str) -> float:
    """Storage cost of one element in `ggml_type`, scales included."""
    per, size = BLOCK[ggml_type]
    return size * 8 / per


def quantize(array: np.ndarray, ggml_type: str) -> bytes:
    """Encode a float array (row-major, rows along the last axis) as `ggml_type` bytes.

    Block types need the row length (last axis) to be a multiple of 32, as ggml does,
    and finite values.
    """
    a = np.ascontiguousarray(array, dtype=np.float32)
    if ggml_type == "f32":
        return a.astype("<f4").tobytes()
    if ggml_type == "f16":
        with np.errstate(over="ignore"):  # out-of-range values become ±inf, as in ggml
            return a.astype("<f2").tobytes()
    if ggml_type in kquant.TYPES:
        return kquant.quantize(a, ggml_type)
    encode = _ENCODERS.get(ggml_type)
    if encode is None:
        raise ValueError(f"unknown ggml type {ggml_type!r}; expected one of {sorted(GGML_TYPES)}")
    row = a.shape[-1] if a.ndim else 1
    if row % QK:
        raise ValueError(f"{ggml_type} needs rows that are a multiple of {QK} elements, got {row}")
    blocks = a.reshape(-1, QK)
    size = BLOCK[ggml_type][1]
    out = np.empty((len(blocks), size), np.uint8)
    with np.errstate(over="ignore", under="ignore"):
        for start in range(0, len(blocks), _CHUNK_BLOCKS):
            chunk = blocks[start : start + _CHUNK_BLOCKS]
            if not np.isfinite(chunk).all():
                raise ValueError(f"cannot quantise non-finite values (inf/nan) to {ggml_type}")
            out[start : start + len(chunk)] = encode(chunk)
    return out.tobytes()


def dequantize(data: bytes, ggml_type: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode `ggml_type` bytes back to a float32 array of `shape`."""
    if len(data) != nbytes(shape, ggml_type):
        raise ValueError(f"{len(data)} bytes do not hold a {ggml_type} tensor of shape {shape}")
    if ggml_type == "f32":
        return np.frombuffer(data, dtype="<f4").reshape(shape).copy()
    if ggml_type == "f16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(shape)
    if ggml_type in kquant.TYPES:
        return kquant.dequantize(data, ggml_type, shape)
    decode = _DECODERS.get(ggml_type)
    if decode is None:
        raise ValueError(f"unknown ggml type {ggml_type!r}; expected one of {sorted(GGML_TYPES)}")
    blocks = np.frombuffer(data, np.uint8).reshape(-1, BLOCK[ggml_type][1])
    with np.errstate(invalid="ignore", over="ignore"):  # an inf scale decodes to inf/nan, as in ggml
        return decode(blocks).reshape(shape)


# --- encoders: (n, 32) float32 blocks -> (n, bytes per block) uint8 ---------------------


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d in float32, and 0 where d is 0 (ggml's `id = d ? 1.0f/d : 0.0f`)."""
    return np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n, 1) float32 -> (n, 2) little-endian half-precision bytes (round to nearest even)."""
    return v.astype("<f2").view(np.uint8)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude per block, first one on ties; +0.0 for a zero block."""
    first = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)
    return np.where(first == 0, np.float32(0.0), first)


def _min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block min and max, first occurrence on ties (decides the sign of a zero)."""
    lo = np.take_along_axis(x, x.argmin(axis=1)[:, None], axis=1)
    hi = np.take_along_axis(x, x.argmax(axis=1)[:, None], axis=1)
    return lo, hi


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Pack 32 quants per block into 16 bytes: low nibble j, high nibble j+16."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of the 32 quants, as a little-endian u32 (qh)."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def _truncate(v: np.ndarray) -> np.ndarray:
    """C's float -> integer cast (toward zero) for values known to be in 0..255."""
    return np.trunc(v).astype(np.uint8)


def _encode_q4_0(x: np.ndarray) -> np.ndarray:
    d = _signed_absmax(x) / np.float32(-8)
    q = np.minimum(_truncate(x * _inverse(d) + np.float32(8.5)), 15)
    return np.hstack([_f16_bytes(d), _nibbles(q)])


def _encode_q4_1(x: np.ndarray) -> np.ndarray:
    lo, hi = _min_max(x)
    d = (hi - lo) / np.float32(15)
    q = np.minimum(_truncate((x - lo) * _inverse(d) + np.float32(0.5)), 15)
    return np.hstack([_f16_bytes(d), _f16_bytes(lo), _nibbles(q)])


def _encode_q5_0(x: np.ndarray) -> np.ndarray:
    d = _signed_absmax(x) / np.float32(-16)
    q = np.minimum(_truncate(x * _inverse(d) + np.float32(16.5)), 31)
    return np.hstack([_f16_bytes(d), _high_bits(q), _nibbles(q)])


def _encode_q5_1(x: np.ndarray) -> np.ndarray:
    lo, hi = _min_max(x)
    d = (hi - lo) / np.float32(31)
    # the reference does not clamp here; (max - min) * id cannot reach 31.5
    q = _truncate((x - lo) * _inverse(d) + np.float32(0.5))
    return np.hstack([_f16_bytes(d), _f16_bytes(lo), _high_bits(q), _nibbles(q)])


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: halves away from zero (np.round rounds them to even)."""
    t = np.trunc(v)
    return t + np.sign(v) * (np.abs(v - t) >= np.float32(0.5))


def _encode_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    q = _roundf(x * _inverse(d)).astype(np.int8)
    return np.hstack([_f16_bytes(d), q.view(np.uint8)])


# --- decoders: (n, bytes per block) uint8 -> (n, 32) float32 ----------------------------


def _f16(b: np.ndarray) -> np.ndarray:
    """(n, 2) bytes -> (n, 1) float32."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _unnibble(qs: np.ndarray) -> np.ndarray:
    return np.hstack([qs & 0x0F, qs >> 4])


def _unhigh(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


def _decode_q4_0(b: np.ndarray) -> np.ndarray:
    q = _unnibble(b[:, 2:]).astype(np.float32) - np.float32(8)
    return q * _f16(b[:, :2])


def _decode_q4_1(b: np.ndarray) -> np.ndarray:
    q = _unnibble(b[:, 4:]).astype(np.float32)
    return q * _f16(b[:, :2]) + _f16(b[:, 2:4])


def _decode_q5_0(b: np.ndarray) -> np.ndarray:
    q = (_unnibble(b[:, 6:]) | _unhigh(b[:, 2:6])).astype(np.float32) - np.float32(16)
    return q * _f16(b[:, :2])


def _decode_q5_1(b: np.ndarray) -> np.ndarray:
    q = (_unnibble(b[:, 8:]) | _unhigh(b[:, 4:8])).astype(np.float32)
    return q * _f16(b[:, :2]) + _f16(b[:, 2:4])


def _decode_q8_0(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32) * _f16(b[:, :2])


_ENCODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "q4_0": _encode_q4_0,
    "q4_1": _encode_q4_1,
    "q5_0": _encode_q5_0,
    "q5_1": _encode_q5_1,
    "q8_0": _encode_q8_0,
}
_DECODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "q4_0": _decode_q4_0,
    "q4_1": _decode_q4_1,
    "q5_0": _decode_q5_0,
    "q5_1": _decode_q5_1,
    "q8_0": _decode_q8_0,
}
