"""ggml block quantisers: bit-exact against two independent implementations, and real models.

Oracles: the `gguf` package's numpy port of ggml's reference quantisers, and the C
functions ggml_quantize_* exported by ctransformers' own library. The C oracle is the
`basic` build: the avx2 build compiles the reference with fused multiply-add, which
moves a value that lands within an ulp of a rounding boundary (rare; see
test_fused_multiply_add_build_differs_only_at_rounding_boundaries).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from service.formats.ggml import quant
from service.formats.ggml.format import HParams, read_gpt2, read_tensor
from service.formats.ggml.tiny import make_tiny_gpt2, random_tensors
from tests.support.gpt2_reference import ggml_logits, rms_error

BLOCK_TYPES = ["q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]
GGUF = {name: getattr(GGMLQuantizationType, name.upper()) for name in BLOCK_TYPES}


def edge_blocks(scale: float) -> np.ndarray:
    """Blocks of 32 that probe the corners of the reference code."""
    ramp = np.arange(32, dtype=np.float32)
    blocks = [
        np.zeros(32),                                   # all zero: scale 0, inverse 0
        np.where(ramp == 7, -scale, 0.0),               # one negative value carries the max
        -np.abs(np.linspace(0.1, 1, 32)) * scale,       # all negative
        np.where(ramp % 2 == 0, scale, -scale),         # |max| tie between signs: first wins
        np.full(32, scale),                             # constant block: max - min = 0
        (ramp - 16) * scale / 8,                        # exact grid points and halves
        (ramp - 15.5) * scale,                          # values at rounding boundaries
        np.where(ramp < 16, scale, -scale) * (1 + ramp / 1000),
    ]  # fmt: skip
    return np.array(blocks, dtype=np.float32)


def sample(seed: int, scale: float) -> np.ndarray:
    """Random rows of 256 (8 blocks) at `scale`, with the edge blocks spliced in."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((24, 256)) * scale).astype(np.float32)
    x.reshape(-1, 32)[: len(edge_blocks(scale))] = edge_blocks(scale)
    return x


SCALES = [1e-20, 1e-4, 0.02, 1.0, 300.0, 1e4]


@functools.cache
def c_library(build: str) -> ctypes.CDLL:
    from ctransformers.lib import find_library

    return ctypes.CDLL(find_library(build))


def c_quantize(x: np.ndarray, ggml_type: str, build: str = "basic") -> bytes:
    """ggml_quantize_<type> from ctransformers' shared library (ggml at quant version 2)."""
    fn = getattr(c_library(build), f"ggml_quantize_{ggml_type}")
    fn.restype = ctypes.c_size_t
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros(quant.nbytes(x.shape, ggml_type), np.uint8)
    hist = np.zeros(64, np.int64)
    args = [x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)]
    written = fn(*args, ctypes.c_int(x.size), ctypes.c_int(x.shape[-1]), hist.ctypes.data_as(ctypes.c_void_p))
    assert written == out.size
    return out.tobytes()


def gguf_bytes(x: np.ndarray, ggml_type: str) -> bytes:
    with np.errstate(over="ignore"):  # its float16 cast warns where the scale overflows
        return gguf_quantize(x, GGUF[ggml_type]).tobytes()


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES)
@pytest.mark.parametrize("scale", SCALES)
def test_quantize_is_bit_exact_with_gguf_reference(ggml_type, scale):
    x = sample(1, scale)
    assert quant.quantize(x, ggml_type) == gguf_bytes(x, ggml_type)


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES)
@pytest.mark.parametrize("scale", SCALES)
def test_quantize_is_bit_exact_with_ggml_c_code(ggml_type, scale):
    x = sample(2, scale)
    assert quant.quantize(x, ggml_type) == c_quantize(x, ggml_type)


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES)
def test_negative_zero_blocks_follow_the_c_code(ggml_type):
    # the C loop keeps its initial +0.0 when no |v| beats it, so the scale's sign bit
    # depends on that, not on the sign of the zeros (gguf's port takes the zero's sign)
    x = np.zeros((2, 32), np.float32)
    x[0] = -0.0
    x[1, ::3] = -0.0
    assert quant.quantize(x, ggml_type) == c_quantize(x, ggml_type)


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES)
def test_fused_multiply_add_build_differs_only_at_rounding_boundaries(ggml_type):
    x = sample(3, 0.02)
    assert quant.quantize(x, ggml_type) == c_quantize(x, ggml_type, build="avx")
    fma = np.frombuffer(c_quantize(x, ggml_type, build=_runtime_build()), np.uint8)
    ours = np.frombuffer(quant.quantize(x, ggml_type), np.uint8)
    assert np.count_nonzero(fma != ours) <= 2


@functools.cache
def _runtime_build() -> str:
    from ctransformers.lib import find_library

    return Path(find_library()).parent.name


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES)
def test_dequantize_matches_gguf_reference(ggml_type):
    x = sample(4, 1.0)
    data = quant.quantize(x, ggml_type)
    theirs = gguf_dequantize(np.frombuffer(data, np.uint8).reshape(x.shape[0], -1), GGUF[ggml_type])
    ours = quant.dequantize(data, ggml_type, x.shape)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert np.array_equal(ours, theirs)


# Largest error per element as a fraction of the block's largest magnitude: half a step
# where the grid is symmetric; a whole step for the _0 types, whose grid (-8..7, -16..15)
# is one level short on the side opposite the block's extreme value.
ROUNDTRIP_BOUND = {"q8_0": 0.5 / 127, "q5_1": 0.5 * 2 / 31, "q5_0": 1 / 16, "q4_1": 0.5 * 2 / 15, "q4_0": 1 / 8}


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES)
def test_roundtrip_error_is_within_a_step(ggml_type):
    x = np.random.default_rng(5).standard_normal((64, 512)).astype(np.float32)
    back = quant.dequantize(quant.quantize(x, ggml_type), ggml_type, x.shape)
    blocks, err = x.reshape(-1, 32), np.abs(back - x).reshape(-1, 32)
    amax = np.abs(blocks).max(1, keepdims=True)
    worst = (err / amax).max()
    f16_slack = 2 * 2.0**-11  # d (and m) are rounded to float16: 11 significant bits
    assert ROUNDTRIP_BOUND[ggml_type] / 2 < worst < ROUNDTRIP_BOUND[ggml_type] + f16_slack


@pytest.mark.parametrize("ggml_type", ["f32", "f16", *BLOCK_TYPES])
def test_sizes_follow_the_block_layout(ggml_type):
    x = np.ones((3, 64), np.float32)
    data = quant.quantize(x, ggml_type)
    assert len(data) == quant.nbytes(x.shape, ggml_type)
    per, size = quant.BLOCK[ggml_type]
    assert len(data) == x.size // per * size


def test_rejects_what_ggml_cannot_store():
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.quantize(np.ones((32, 48), np.float32), "q4_0")
    with pytest.raises(ValueError, match="non-finite"):
        quant.quantize(np.full((1, 32), np.nan, np.float32), "q8_0")
    with pytest.raises(ValueError, match="unknown ggml type"):
        quant.quantize(np.ones((1, 32), np.float32), "q7_x")
    with pytest.raises(ValueError, match="do not hold"):
        quant.dequantize(b"\0" * 17, "q4_0", (32,))


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES)
def test_written_file_reads_back_as_the_dequantised_weights(tmp_path, ggml_type):
    path = tmp_path / "model.bin"
    make_tiny_gpt2(path, ftype=ggml_type, n_ctx=64, seed=3)
    originals = dict(random_tensors(HParams(len(read_gpt2(path).vocab), 64, 64, 4, 2, ggml_type), seed=3))
    info = read_gpt2(path)
    assert info.hparams.ftype == ggml_type and info.quant_version == 2
    for name in ("model/wte", "model/h1/mlp/c_proj/w", "model/h0/ln_1/b"):
        t = info.tensors[name]
        want = quant.dequantize(quant.quantize(originals[name], t.ggml_type), t.ggml_type, t.shape)
        assert np.array_equal(read_tensor(path, t), want)
    assert info.tensors["model/wpe"].ggml_type == "f32"


# RMS logits error of a tiny random model (64 wide, 2 layers) against the same model in
# f32, as measured (f16 0.1%, q8_0 2%, q5_1 10%, q5_0 12%, q4_1 19%, q4_0 25%; a small
# random network amplifies weight noise far more than a trained one), with headroom.
# A file ggml read with the wrong layout scores about 1.4 (uncorrelated logits).
TINY_BOUND = {"f16": 0.002, "q8_0": 0.035, "q5_1": 0.16, "q5_0": 0.18, "q4_1": 0.3, "q4_0": 0.37}


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    path = tmp_path_factory.mktemp("f32") / "model.bin"
    make_tiny_gpt2(path, ftype="f32", n_ctx=64, seed=7, scale=0.1)
    return path


PROMPT = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 32, 260, 261]


@pytest.mark.parametrize("ggml_type", list(TINY_BOUND))
def test_each_type_loads_in_ctransformers_close_to_f32(tmp_path, tiny_f32, ggml_type):
    path = tmp_path / "model.bin"
    make_tiny_gpt2(path, ftype=ggml_type, n_ctx=64, seed=7, scale=0.1)
    reference = ggml_logits(tiny_f32, PROMPT)
    logits = ggml_logits(path, PROMPT)
    assert np.isfinite(logits).all()
    error = rms_error(logits, reference)
    assert 1e-5 < error < TINY_BOUND[ggml_type]  # close, yet really quantised (not secretly f32)
