"""GPT-2 GGUF files (written here with the `gguf` package, GPT-2's real vocabulary) converted to GGML and run.

For every type, the converted model.bin is compared with the file the project's own GGML writer
makes from the same weights, and both are run greedily in ctransformers; the k-quant blocks come
from ggml's reference quantiser, checked bit for bit against the library's exported entry point.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest

from service.formats.ggml import kquant, quant
from service.formats.ggml.format import (
    HParams,
    is_matrix,
    read_gpt2,
    read_tensor,
    write_gpt2,
)
from service.formats.gguf import read_gguf
from service.formats.gguf_convert import convert_gguf
from service.formats.manifest import file_sha256, read_manifest
from service.tokenizer.bpe import GPT2Tokenizer, json_bytes
from service.tokenizer.files import build_tokenizer_json
from tests.fixtures.gpt2_vocab import reference_tokenizer, write_vocab_merges
from tests.support.gguf_models import (
    gguf_name,
    gpt2_hparams,
    gpt2_vocab_bytes,
    weights,
    write_gguf,
)
from tests.support.gpt2_reference import ggml_greedy

# every type ctransformers' gpt2 loader takes, written with gguf-py (legacy) or ggml's quantiser (k-quants)
COPIED = ["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k"]
PROMPT = [15496, 11, 995, 0, 314, 716]  # "Hello, world! I am"


@pytest.fixture(scope="module")
def hp() -> HParams:
    return gpt2_hparams(n_layer=1)


@pytest.fixture(scope="module")
def state(hp) -> dict[str, np.ndarray]:
    return weights(hp)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


def _uniform(kind: str):
    return lambda name: kind if is_matrix(name) else "f32"


@pytest.mark.slow
@pytest.mark.parametrize("kind", COPIED)
def test_each_type_is_copied_block_for_block_and_runs_like_the_projects_own_file(kind, hp, state, work):
    src = write_gguf(work / f"gpt2-{kind}.gguf", hp, state, _uniform(kind))
    manifest = convert_gguf(src, work / f"out-{kind}")
    model = work / f"out-{kind}" / "model.bin"
    ours = write_gpt2(work / f"ref-{kind}.bin", HParams(**{**hp.__dict__, "ftype": kind}), gpt2_vocab_bytes(),
                      state.items())
    # the same weights through the project's writer: byte-identical file, so the same model
    assert manifest.sha256 == ours == file_sha256(model)
    assert manifest.quant == kind and manifest.requantised == []
    assert manifest.source_types == ({"f32": 16} if kind == "f32" else dict(sorted({kind: 5, "f32": 11}.items())))
    assert manifest.source_sha256 == file_sha256(src) and manifest.source.kind == "gguf"
    # and the GGUF's blocks are in model.bin as they were
    g, ggml = read_gguf(src), read_gpt2(model)
    for name, info in ggml.tensors.items():
        with open(src, "rb") as f:
            f.seek(g.tensors[gguf_name(name)].offset)
            block = f.read(info.nbytes)
        with open(model, "rb") as f:
            f.seek(info.offset)
            assert f.read(info.nbytes) == block, name
    assert ggml_greedy(model, PROMPT, 8) == ggml_greedy(work / f"ref-{kind}.bin", PROMPT, 8)


def test_k_quant_blocks_are_ggmls_reference_quantiser_bit_for_bit():
    """Our calls (whole tensors, chunked) give what ggml_quantize_q*_K gives row by row."""
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((6, 512)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float32)
    lib = kquant._lib()
    hist = (ctypes.c_int64 * 16)()
    for kind, (_, size) in kquant.TYPES.items():
        fn = getattr(lib, f"ggml_quantize_{kind[:-1]}K")
        expected = bytearray()
        for row in a:
            out = np.zeros(row.size // 256 * size, np.uint8)
            assert fn(row.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p),
                      ctypes.c_int(row.size), ctypes.c_int(row.size), hist) == out.size
            expected += out.tobytes()
        assert quant.quantize(a, kind) == bytes(expected), kind


def test_k_quant_decoding_matches_gguf_py_and_the_error_shrinks_with_bits():
    import gguf
    from gguf.quants import dequantize

    a = np.random.default_rng(4).standard_normal((4, 768)).astype(np.float32)
    errors = []
    for kind in ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]:
        data = quant.quantize(a, kind)
        ours = quant.dequantize(data, kind, a.shape)
        theirs = dequantize(np.frombuffer(data, np.uint8).reshape(4, -1), getattr(gguf.GGMLQuantizationType,
                                                                                     kind.upper()))
        np.testing.assert_array_equal(ours, theirs)
        errors.append(float(np.sqrt(np.mean((ours - a) ** 2))))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.02


@pytest.mark.slow
def test_a_mixed_gguf_is_requantised_to_its_main_type_and_the_error_recorded(hp, state, work, capsys):
    # as llama.cpp writes them: the tied output head again, in q6_k
    mix = {"model/h0/mlp/c_proj/w": "q6_k", "model/h0/attn/c_attn/w": "q8_0", "model/wpe": "f16",
           "model/lm_head": "q6_k"}
    tensors = state | {"model/lm_head": state["model/wte"]}
    src = write_gguf(work / "gpt2-Q4_K_M.gguf", hp, tensors, lambda n: mix.get(n, "q4_k" if is_matrix(n) else "f32"))
    manifest = convert_gguf(src, work / "mixed")
    assert manifest.quant == "q4_k"
    assert manifest.source_types == {"f16": 1, "f32": 10, "q4_k": 3, "q6_k": 2, "q8_0": 1}
    changed = {c.tensor: c for c in manifest.requantised}
    # f16 wpe -> f32 is exact, so not listed
    assert set(changed) == {"blk.0.ffn_down.weight", "blk.0.attn_qkv.weight", "output.weight"}
    for name, c in changed.items():
        assert c.type == "q4_k" and 0.01 < c.rms_error < 0.2, c
    # the recorded error is the measured one: requantised values against the GGUF's own values
    model = work / "mixed" / "model.bin"
    info = read_gpt2(model).tensors["model/h0/mlp/c_proj/w"]
    new = read_tensor(model, info)
    old = quant.dequantize(quant.quantize(state["model/h0/mlp/c_proj/w"], "q6_k"), "q6_k", info.shape)
    rms = np.sqrt(np.mean((new - old) ** 2)) / np.sqrt(np.mean(old ** 2))
    assert changed["blk.0.ffn_down.weight"].rms_error == pytest.approx(rms, rel=1e-4)
    wpe = read_tensor(model, read_gpt2(model).tensors["model/wpe"])
    np.testing.assert_array_equal(wpe, state["model/wpe"].astype(np.float16).astype(np.float32))
    assert json.loads((work / "mixed" / "manifest.json").read_text())["requantised"][0]["rms_error"] > 0
    assert "model/lm_head" in read_gpt2(model).tensors
    assert len(ggml_greedy(model, PROMPT, 4)) == 4


def test_a_tied_output_head_written_out_again_is_left_to_ggml(hp, state, work):
    tensors = state | {"model/lm_head": state["model/wte"]}
    src = write_gguf(work / "gpt2-tied.gguf", hp, tensors, lambda n: "q8_0" if is_matrix(n) else "f32")
    manifest = convert_gguf(src, work / "tied")
    assert "model/lm_head" not in read_gpt2(work / "tied" / "model.bin").tensors
    assert manifest.source_types == {"f32": 11, "q8_0": 6} and manifest.requantised == []


def test_tokenizer_from_gguf_metadata_is_gpt2s_bpe(hp, state, work, tmp_path):
    src = write_gguf(work / "gpt2-f16-tok.gguf", hp, state, _uniform("f16"))
    convert_gguf(src, work / "tok")
    installed = (work / "tok" / "tokenizer.json").read_bytes()
    write_vocab_merges(tmp_path / "hf")
    assert installed == json_bytes(build_tokenizer_json(tmp_path / "hf"))  # what a Hugging Face GPT-2 gives
    ours, ref = GPT2Tokenizer.from_file(work / "tok" / "tokenizer.json"), reference_tokenizer()
    for text in ["Hello, world!", " naïve café 日本語 🙂", "<|endoftext|>x  y\n\n\tz", "don't   stop"]:
        assert ours.encode(text) == ref.encode(text).ids
    assert ours.special_tokens == {"<|endoftext|>": 50256}
    assert read_gpt2(work / "tok" / "model.bin").vocab == gpt2_vocab_bytes()
    assert read_manifest(work / "tok" / "model.bin").tokenizer == "tokenizer.json"


def test_bf16_is_decoded_exactly_to_f32(hp, state, work):
    src = write_gguf(work / "gpt2-bf16.gguf", hp, state, _uniform("bf16"))
    manifest = convert_gguf(src, work / "bf16")
    assert manifest.quant == "f32" and manifest.requantised == []
    info = read_gpt2(work / "bf16" / "model.bin").tensors["model/wte"]
    wte = read_tensor(work / "bf16" / "model.bin", info)
    bits = state["model/wte"].view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32)  # round to nearest even
    np.testing.assert_array_equal(wte, rounded)


@pytest.mark.parametrize(("change", "expect"), [
    ({"arch": "llama"}, "holds a llama model (general.architecture); MiniVault converts GGUF files of architecture gpt2"),
    ({"types": "tq1_0"}, "blk.0.attn_qkv.weight) is tq1_0, which ctransformers' GGML cannot run"),
    ({"types": "iq2_xs"}, "is iq2_xs, which ctransformers' GGML cannot run"),
])
def test_what_cannot_be_converted_is_refused_in_one_line(change, expect, work, tmp_path):
    hp = gpt2_hparams(n_layer=1)
    state = weights(hp, seed=1)
    kind = change.get("types", "f16")
    src = write_gguf(tmp_path / "bad.gguf", hp, state,
                     lambda n: kind if n == "model/h0/attn/c_attn/w" else ("f16" if is_matrix(n) else "f32"),
                     arch=change.get("arch", "gpt2"))
    with pytest.raises(ValueError) as err:
        convert_gguf(src, tmp_path / "out")
    assert expect in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_truncated_and_foreign_files_are_refused(tmp_path, work, hp, state):
    src = write_gguf(work / "gpt2-q8-trunc.gguf", hp, state, _uniform("q8_0"))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ValueError, match="is truncated"):
        convert_gguf(cut, tmp_path / "out")
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGML" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF file"):
        convert_gguf(other, tmp_path / "out")
