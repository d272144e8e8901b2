"""ggml's k-quant types (Q2_K..Q6_K): block sizes, and encode/decode through ggml's own C code.

The k-quant reference quantisers are long iterative searches (make_qkx1_quants, make_q3_quants,
...) whose exact float behaviour a port would have to match bit for bit; ctransformers' shared
library is ggml built with k-quants and exports them (`quantize_row_q4_K_reference`,
`dequantize_row_q4_K`, ...), so they are called through ctypes. The library file is located on
disk, not imported: this package never imports an engine library. The scalar ("basic") build is
used, so the output is the same on every machine (the AVX2 build, compiled for other
instructions, changes the last bit of some q2_K/q4_K/q5_K scales).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import platform
from pathlib import Path

import numpy as np

QK_K = 256  # elements per k-quant super-block (ctransformers builds ggml without GGML_QKK_64)

# name -> (ggml_type enum, bytes per 256-element block), from ggml.h / k_quants.h
TYPES: dict[str, tuple[int, int]] = {
    "q2_k": (10, 2 * 2 + QK_K // 16 + QK_K // 4),                # d, dmin, scales[16], qs[64]       = 84
    "q3_k": (11, QK_K // 8 + QK_K // 4 + 12 + 2),                # hmask[32], qs[64], scales[12], d = 110
    "q4_k": (12, 2 * 2 + 12 + QK_K // 2),                        # d, dmin, scales[12], qs[128]     = 144
    "q5_k": (13, 2 * 2 + 12 + QK_K // 8 + QK_K // 2),            # + qh[32]                         = 176
    "q6_k": (14, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),        # ql[128], qh[64], scales[16], d  = 210
}  # fmt: skip

_VARIANTS = ("basic", "avx", "avx2", "local")  # local: ctransformers built from source


class LibraryMissing(RuntimeError):
    """ctransformers' shared library (ggml with k-quants) is not installed."""


def library_path(variant: str | None = None) -> Path:
    """Path of ctransformers' libctransformers for `variant` (default: the first one present)."""
    spec = importlib.util.find_spec("ctransformers")
    if spec is None or not spec.submodule_search_locations:
        raise LibraryMissing("k-quant types need ctransformers (its ggml library) installed")
    root = Path(next(iter(spec.submodule_search_locations))) / "lib"
    name = {"Windows": "ctransformers.dll", "Darwin": "libctransformers.dylib"}.get(platform.system(),
                                                                                 "libctransformers.so")
    for v in [variant] if variant else _VARIANTS:
        path = root / v / name
        if path.is_file():
            return path
    raise LibraryMissing(f"no ctransformers library under {root} (looked for {variant or ', '.join(_VARIANTS)})")


class _InitParams(ctypes.Structure):
    """struct ggml_init_params."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


@functools.cache
def _lib(variant: str | None = None) -> ctypes.CDLL:
    """The loaded library, with the k-quant functions' signatures declared."""
    lib = ctypes.CDLL(str(library_path(variant)))
    # ggml_init fills ggml's float16 -> float32 table, which the k-quant code reads (without F16C
    # instructions the table is the only conversion, and it is all zeros until then)
    lib.ggml_init.argtypes = [_InitParams]
    lib.ggml_init.restype = ctypes.c_void_p
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free(lib.ggml_init(_InitParams(1 << 16, None, False)))
    for name in TYPES:
        t = name[:-1] + "K"  # q4_k -> q4_K
        for fn in (f"quantize_row_{t}_reference", f"dequantize_row_{t}"):
            f = getattr(lib, fn)
            f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
            f.restype = None
    return lib


def nbytes(n_elements: int, ggml_type: str) -> int:
    """Bytes `n_elements` take in a k-quant type."""
    if n_elements % QK_K:
        raise ValueError(f"{n_elements} elements is not a multiple of the {ggml_type} block size {QK_K}")
    return n_elements // QK_K * TYPES[ggml_type][1]


def quantize(array: np.ndarray, ggml_type: str, *, variant: str | None = None) -> bytes:
    """Encode a float array (rows along the last axis, a multiple of 256 long) with ggml's reference quantiser."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    row = a.shape[-1] if a.ndim else 1
    if row % QK_K:
        raise ValueError(f"{ggml_type} needs rows that are a multiple of {QK_K} elements, got {row}")
    if not np.isfinite(a).all():
        raise ValueError(f"cannot quantise non-finite values (inf/nan) to {ggml_type}")
    out = np.empty(nbytes(a.size, ggml_type), np.uint8)
    fn = getattr(_lib(variant), f"quantize_row_{ggml_type[:-1]}K_reference")
    # blocks never span rows (rows are whole blocks), so the tensor is one long row to ggml
    step = QK_K * 4096  # bounded calls: the C `int k` must not overflow on huge tensors
    size = TYPES[ggml_type][1]
    flat = a.reshape(-1)
    for start in range(0, flat.size, step):
        chunk = flat[start:start + step]
        dst = out[start // QK_K * size:]
        fn(chunk.ctypes.data, dst.ctypes.data, chunk.size)
    return out.tobytes()


def dequantize(data: bytes, ggml_type: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode k-quant bytes back to a float32 array of `shape` with ggml's own decoder."""
    n = int(np.prod(shape))
    if len(data) != nbytes(n, ggml_type):
        raise ValueError(f"{len(data)} bytes do not hold a {ggml_type} tensor of shape {shape}")
    src = np.frombuffer(data, np.uint8)
    out = np.empty(n, np.float32)
    fn = getattr(_lib(), f"dequantize_row_{ggml_type[:-1]}K")
    step, size = QK_K * 4096, TYPES[ggml_type][1]
    for start in range(0, n, step):
        count = min(step, n - start)
        fn(src[start // QK_K * size:].ctypes.data, out[start:].ctypes.data, count)
    return out.reshape(shape)
