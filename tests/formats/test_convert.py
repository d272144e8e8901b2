"""Converting Hugging Face GPT-2 checkpoints: real safetensors files in, models ctransformers runs out.

Each checkpoint is a tiny random GPT-2 written with safetensors' numpy API; the converted
files are run by ctransformers and compared with a numpy forward pass over the original
Hugging Face weights (tests/gpt2_reference.py).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from service.formats.convert import convert_checkpoint
from service.formats.ggml import quant
from service.formats.ggml.format import read_gpt2, read_tensor
from service.formats.manifest import read_manifest, verify
from service.tokenizer.bpe import bytes_to_unicode
from tests.support.gpt2_reference import (
    EOT,
    SMALL_MERGES,
    byte_level_vocab,
    forward,
    ggml_greedy,
    ggml_logits,
    random_state,
    reference_greedy,
    relative_error,
    write_checkpoint,
)  # fmt: skip

E, H, L, CTX = 64, 4, 2, 128
VOCAB = byte_level_vocab(SMALL_MERGES)
PROMPT = [VOCAB[t] for t in ["ĠH", "el", "lo", "Ġworld", ",", "Ġthe", "Ġs", "ing", "er", "Ã©", "Ġa", "Ġw", "on"]]
PROMPT += [0, 200, 255]
QUANTS = ["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]
# ggml quantises a matrix's input to 8 bits (or float16) to match the weight type
ACTIVATIONS = {"f32": None, "f16": "f16", "q8_0": "q8_0", "q5_0": "q8_0", "q4_0": "q8_0", "q5_1": "q8_1", "q4_1": "q8_1"}


def tiny_state(seed: int = 11, **kw) -> dict[str, np.ndarray]:
    # small matrices keep the network smooth; wide token embeddings make the
    # next-token distribution peaked (logits ~8 wide), so greedy picks are stable
    args = dict(n_vocab=len(VOCAB), n_ctx=CTX, n_embd=E, n_layer=L, scale=0.1, wte_scale=1.0, seed=seed)
    return random_state(**(args | kw))


def checkpoint(folder: Path, state: dict[str, np.ndarray] | None = None, **config) -> Path:
    state = tiny_state(prefix="transformer.") if state is None else state
    return write_checkpoint(folder, state, VOCAB, SMALL_MERGES, n_head=H, n_ctx=CTX, config=config)


def dequantised(state: dict[str, np.ndarray], ggml_type: str) -> dict[str, np.ndarray]:
    """The weights as the GGML file holds them: matrices through quantise + dequantise."""
    out = {}
    for key, value in state.items():
        if value.ndim != 2 or key.endswith("wpe.weight"):
            out[key] = value
            continue
        conv1d = not key.endswith(("wte.weight", "lm_head.weight"))  # stored (in, out)
        w = value.T if conv1d else value
        w = quant.dequantize(quant.quantize(w, ggml_type), ggml_type, w.shape)
        out[key] = w.T if conv1d else w
    return out


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return tiny_state(prefix="transformer.")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, state) -> dict[str, Path]:
    """The tiny checkpoint converted to every type: quant -> model folder."""
    root = tmp_path_factory.mktemp("convert")
    src = checkpoint(root / "src", state)
    folders = {}
    for q in QUANTS:
        folders[q] = root / "models" / f"tiny-{q}"
        convert_checkpoint(src, folders[q], q, source_repo="org/tiny", revision="0123abc")
    return folders


def test_f32_model_matches_numpy_reference(converted, state):
    logits = ggml_logits(converted["f32"] / "model.bin", PROMPT)
    # ggml's GELU and softmax read float16 lookup tables; the reference rounds the same way.
    # Measured 6e-5 here (1e-6 to 6e-5 across seeds): a table index can still differ where
    # float32 accumulation order puts a value on the other side of a float16 rounding edge.
    assert relative_error(logits, forward(state, PROMPT, n_head=H, ggml_tables=True)) < 1e-4
    assert relative_error(logits, forward(state, PROMPT, n_head=H)) < 2e-3


def confident_state(seed: int = 15) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A random GPT-2 whose output head favours one successor per token: (state, successor).

    Random networks spread their next-token logits like a Gaussian, and q8_0's ~1% logit
    error then flips a near-tie within a few steps; trained models are more decisive. Here
    head row j gets 2 * wte[perm[j]] added, so the token after t is usually successor[t],
    by a clear margin; the transformer still decides some steps.
    """
    state = tiny_state(seed=seed, prefix="transformer.", untied_head=True)
    perm = np.random.default_rng(seed).permutation(len(VOCAB))
    state["lm_head.weight"] = state["lm_head.weight"] + 2 * state["transformer.wte.weight"][perm]
    return state, np.argsort(perm)


@pytest.fixture(scope="module")
def confident(tmp_path_factory):
    state, successor = confident_state()
    root = tmp_path_factory.mktemp("confident")
    src = checkpoint(root / "src", state)
    for q in ("f32", "f16", "q8_0"):
        convert_checkpoint(src, root / q, q)
    return root, state, successor


def test_f32_greedy_continuation_matches_numpy_reference(confident):
    root, state, successor = confident
    ours = ggml_greedy(root / "f32" / "model.bin", PROMPT, 32)
    assert ours == reference_greedy(state, PROMPT, 32, n_head=H)
    assert len(set(ours)) >= 8  # a real continuation, not one token repeated
    previous = [PROMPT[-1], *ours[:-1]]
    assert any(successor[p] != t for p, t in zip(previous, ours))  # not just the head's bias


@pytest.mark.parametrize("ggml_type", ["f16", "q8_0"])
def test_f16_and_q8_0_keep_the_greedy_continuation(confident, ggml_type):
    root = confident[0]
    assert ggml_greedy(root / ggml_type / "model.bin", PROMPT, 32) == ggml_greedy(root / "f32" / "model.bin", PROMPT, 32)


@pytest.mark.parametrize("ggml_type", QUANTS[1:])
def test_ggml_computes_with_exactly_the_weights_we_quantised(converted, state, ggml_type):
    # Reference on our dequantised weights, with ggml's rounding of matrix inputs: this
    # agrees to ~1e-7 unless an input lands on a rounding boundary in one and not the
    # other (then ~1e-3). A misread block layout gives errors of order 1.
    reference = forward(dequantised(state, ggml_type), PROMPT, n_head=H, ggml_tables=True,
                        activations=ACTIVATIONS[ggml_type])  # fmt: skip
    assert relative_error(ggml_logits(converted[ggml_type] / "model.bin", PROMPT), reference) < 1e-2


# Largest logit error relative to the largest reference logit, for this tiny random
# model (measured: f16 3e-4, q8_0 0.008, q5_1 0.048, q5_0 0.058, q4_1 0.092, q4_0 0.10).
BOUND = {"f16": 1e-3, "q8_0": 0.02, "q5_1": 0.08, "q5_0": 0.08, "q4_1": 0.15, "q4_0": 0.18}


@pytest.mark.parametrize("ggml_type", list(BOUND))
def test_quantised_model_stays_within_its_bound_of_the_reference(converted, state, ggml_type):
    logits = ggml_logits(converted[ggml_type] / "model.bin", PROMPT)
    error = relative_error(logits, forward(state, PROMPT, n_head=H, ggml_tables=True))
    assert BOUND[ggml_type] / 20 < error < BOUND[ggml_type]


def raw_bytes(token: str) -> bytes:
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(decoder[c] for c in token)


def test_model_folder_holds_model_tokenizer_and_manifest(converted, state):
    folder = converted["q4_0"]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.bin", "tokenizer.json"]
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted(f"tiny-{q}" for q in QUANTS)  # no leftovers
    model = folder / "model.bin"
    manifest = read_manifest(model)
    assert manifest is not None
    assert (manifest.name, manifest.file, manifest.quant, manifest.tokenizer) == ("tiny-q4_0", "model.bin", "q4_0",
                                                                                   "tokenizer.json")  # fmt: skip
    assert (manifest.source.repo, manifest.source.revision, manifest.source.kind) == ("org/tiny", "0123abc", "converted")
    assert (manifest.hparams.n_vocab, manifest.hparams.n_ctx, manifest.hparams.n_embd) == (len(VOCAB), CTX, E)
    assert (manifest.hparams.n_head, manifest.hparams.n_layer) == (H, L)
    assert manifest.parameters == sum(v.size for v in state.values())
    assert manifest.size == model.stat().st_size
    assert manifest.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    verify(model, manifest, full=True)


def test_ggml_file_has_byte_vocab_names_and_types(converted, state):
    path = converted["q5_1"] / "model.bin"
    info = read_gpt2(path)
    expected = [b""] * len(VOCAB)
    for token, i in VOCAB.items():
        expected[i] = token.encode() if token == EOT else raw_bytes(token)
    assert info.vocab == expected
    assert info.vocab[VOCAB["Ġworld"]] == b" world" and info.vocab[VOCAB["Ã©"]] == "é".encode()
    assert "model/lm_head" not in info.tensors  # tied to wte
    types = {name: t.ggml_type for name, t in info.tensors.items()}
    assert types["model/wte"] == types["model/h1/mlp/c_fc/w"] == "q5_1"
    assert types["model/wpe"] == types["model/h0/ln_1/g"] == types["model/h1/attn/c_attn/b"] == "f32"
    f32 = converted["f32"] / "model.bin"
    t = read_gpt2(f32).tensors
    assert np.array_equal(read_tensor(f32, t["model/h1/attn/c_attn/w"]), state["transformer.h.1.attn.c_attn.weight"].T)
    assert np.array_equal(read_tensor(f32, t["model/h0/ln_2/b"]), state["transformer.h.0.ln_2.bias"])


def reference_tokenizer(src: Path) -> Tokenizer:
    """GPT-2's tokenizer assembled by the tokenizers library from vocab.json + merges.txt."""
    tok = Tokenizer(models.BPE.from_file(str(src / "vocab.json"), str(src / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


TEXTS = ["Hello world, the singing", " Hellooo  worlds\n\ton é café", "a<|endoftext|>the 日本 🙂", ""]


def test_tokenizer_json_built_from_vocab_and_merges_tokenizes_like_gpt2(converted, tmp_path):
    src = checkpoint(tmp_path / "src")
    ours = Tokenizer.from_file(str(converted["f32"] / "tokenizer.json"))
    reference = reference_tokenizer(src)
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == reference.encode(text).ids
        assert ours.decode(ids, skip_special_tokens=False) == text
    assert ours.encode("<|endoftext|>").ids == [VOCAB[EOT]]


def test_prefixless_checkpoint_with_tokenizer_json_and_saved_head(tmp_path):
    state = tiny_state(seed=12)  # gpt2's own files use "h.0..." keys, distilgpt2's "transformer.h.0..."
    state["lm_head.weight"] = state["wte.weight"].copy()
    state["h.0.attn.bias"] = np.tril(np.ones((CTX, CTX), np.float32))[None, None]  # mask buffers, not weights
    state["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    src = checkpoint(tmp_path / "src", state)
    reference_tokenizer(src).save(str(src / "tokenizer.json"))
    (src / "vocab.json").unlink()
    (src / "merges.txt").unlink()
    manifest = convert_checkpoint(src, tmp_path / "out", "f32")
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert "model/lm_head" not in read_gpt2(tmp_path / "out" / "model.bin").tensors
    buffers = {"h.0.attn.bias", "h.1.attn.masked_bias", "lm_head.weight"}
    assert manifest.parameters == sum(v.size for k, v in state.items() if k not in buffers)
    logits = ggml_logits(tmp_path / "out" / "model.bin", PROMPT)
    assert relative_error(logits, forward(state, PROMPT, n_head=H, ggml_tables=True)) < 1e-4


def test_untied_output_head_is_written(tmp_path):
    state = tiny_state(seed=13, prefix="transformer.", untied_head=True)
    manifest = convert_checkpoint(checkpoint(tmp_path / "src", state), tmp_path / "out", "f32")
    info = read_gpt2(tmp_path / "out" / "model.bin")
    assert info.tensors["model/lm_head"].shape == (len(VOCAB), E)
    assert manifest.parameters == sum(v.size for v in state.values())
    logits = ggml_logits(tmp_path / "out" / "model.bin", PROMPT)
    assert relative_error(logits, forward(state, PROMPT, n_head=H, ggml_tables=True)) < 1e-4


def write_bf16_safetensors(path: Path, state: dict[str, np.ndarray]) -> None:
    """A safetensors file of bfloat16 tensors (numpy has no bfloat16, so written by hand)."""
    header, blobs, offset = {}, [], 0
    for key, value in state.items():
        blob = (np.ascontiguousarray(value, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[key] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_checkpoints_convert_exactly(tmp_path, dtype):
    state = tiny_state(seed=14, prefix="transformer.")
    if dtype == "f16":
        state = {k: v.astype(np.float16) for k, v in state.items()}
        src = checkpoint(tmp_path / "src", state)
        exact = {k: v.astype(np.float32) for k, v in state.items()}
    else:
        src = checkpoint(tmp_path / "src", state)
        write_bf16_safetensors(src / "model.safetensors", state)
        exact = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in state.items()}
    convert_checkpoint(src, tmp_path / "out", "f32")
    path = tmp_path / "out" / "model.bin"
    tensors = read_gpt2(path).tensors
    assert np.array_equal(read_tensor(path, tensors["model/wte"]), exact["transformer.wte.weight"])
    assert np.array_equal(read_tensor(path, tensors["model/h1/mlp/c_proj/w"]), exact["transformer.h.1.mlp.c_proj.weight"].T)


def test_sharded_checkpoint_converts_to_the_same_file(tmp_path, converted, state):
    src = checkpoint(tmp_path / "src", state)
    (src / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in shards.items():
        save_file({k: state[k] for k in names}, str(src / shard), metadata={"format": "pt"})
    weight_map = {k: shard for shard, names in shards.items() for k in names}
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    manifest = convert_checkpoint(src, tmp_path / "out", "q5_0")
    assert manifest.sha256 == read_manifest(converted["q5_0"] / "model.bin").sha256  # deterministic, byte for byte


# --- refusals -------------------------------------------------------------------------


def assert_refused(src: Path, out: Path, match: str, quant: str = "q4_0") -> None:
    with pytest.raises(ValueError, match=match):
        convert_checkpoint(src, out, quant)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]


def test_refuses_other_model_types(tmp_path):
    src = checkpoint(tmp_path / "src", model_type="llama")
    assert_refused(src, tmp_path / "out", r"model_type 'llama'; accepted: 'gpt2'")


def test_refuses_pickle_only_checkpoints(tmp_path):
    src = checkpoint(tmp_path / "src")
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    assert_refused(src, tmp_path / "out", r"pytorch_model\.bin but no model\.safetensors; only safetensors")


def test_refuses_a_folder_without_weights(tmp_path):
    src = checkpoint(tmp_path / "src")
    (src / "model.safetensors").unlink()
    assert_refused(src, tmp_path / "out", r"no model\.safetensors")


def test_refuses_a_missing_tokenizer(tmp_path):
    src = checkpoint(tmp_path / "src")
    (src / "merges.txt").unlink()
    assert_refused(src, tmp_path / "out",
                   r"no usable tokenizer \(found: vocab\.json\); accepted: tokenizer\.json, or vocab\.json together with merges\.txt")  # fmt: skip


def test_refuses_a_folder_without_config(tmp_path):
    src = checkpoint(tmp_path / "src")
    (src / "config.json").unlink()
    assert_refused(src, tmp_path / "out", "no config.json")
    assert_refused(tmp_path / "nowhere", tmp_path / "out", "is not a directory")


@pytest.mark.parametrize(
    "config, match",
    [({"activation_function": "relu"}, "activation_function 'relu'"),
     ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
     ({"n_inner": 100}, r"n_inner != 4\*n_embd"),
     ({"vocab_size": len(VOCAB) - 1}, f"tokenizer has ids up to {len(VOCAB) - 1}")],
)  # fmt: skip
def test_refuses_what_ggml_gpt2_would_run_wrongly(tmp_path, config, match):
    assert_refused(checkpoint(tmp_path / "src", **config), tmp_path / "out", match)


def test_refuses_unknown_quantisation(tmp_path):
    assert_refused(checkpoint(tmp_path / "src"), tmp_path / "out", "unknown quantisation 'q7_x'; accepted: f32, f16", "q7_x")


def test_refuses_missing_and_foreign_tensors(tmp_path):
    state = tiny_state(prefix="transformer.")
    del state["transformer.h.1.mlp.c_fc.bias"]
    assert_refused(checkpoint(tmp_path / "a", state), tmp_path / "out", r"lacks 1 GPT-2 tensors, e\.g\. transformer\.h\.1\.mlp\.c_fc\.bias")
    state = tiny_state(prefix="transformer.") | {"score.weight": np.zeros((2, E), np.float32)}
    assert_refused(checkpoint(tmp_path / "b", state), tmp_path / "out", "tensors a GPT-2 LM does not: score.weight")


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path):
    state = tiny_state(prefix="transformer.")
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:100]  # config says 128 positions
    assert_refused(checkpoint(tmp_path / "src", state), tmp_path / "out", r"model/wpe.*shape \(100, 64\)")


def test_existing_model_folder_is_kept_unless_overwriting(tmp_path):
    src, out = checkpoint(tmp_path / "src"), tmp_path / "models" / "tiny"
    out.mkdir(parents=True)  # an empty folder is fine
    convert_checkpoint(src, out, "q8_0")
    with pytest.raises(ValueError, match="already exists"):
        convert_checkpoint(src, out, "q4_0")
    assert read_manifest(out / "model.bin").quant == "q8_0"
    convert_checkpoint(src, out, "q4_0", overwrite=True)
    assert read_manifest(out / "model.bin").quant == "q4_0"
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]
