"""The GGML gpt2 writer and reader, checked against ctransformers' own loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ctransformers.llm import LLM

from service.formats.ggml.format import HParams, read_gpt2, read_tensor, write_gpt2
from service.formats.ggml.tiny import EOT, byte_vocab, make_tiny_gpt2, random_tensors

# multi-byte UTF-8 tokens, whole and split mid-character
MULTIBYTE = ["日本".encode(), "語".encode(), " café".encode(), "🙂".encode(), "🙂".encode()[:2], "é".encode()[1:]]


def load(path: Path) -> LLM:
    return LLM(str(path), "gpt2")


def test_header_vocab_and_tensors_round_trip(tmp_path):
    vocab = byte_vocab(MULTIBYTE)
    hp = HParams(len(vocab), 64, 32, 2, 1, "f16")
    tensors = dict(random_tensors(hp, seed=3))
    digest = write_gpt2(tmp_path / "m.bin", hp, vocab, tensors)
    f = read_gpt2(tmp_path / "m.bin")
    assert f.hparams == hp and f.vocab == vocab and f.quant_version == 0
    assert f.tensors["model/wte"].ggml_type == "f16" and f.tensors["model/wpe"].ggml_type == "f32"
    assert f.tensors["model/h0/attn/c_attn/w"].shape == (96, 32)
    np.testing.assert_array_equal(read_tensor(tmp_path / "m.bin", f.tensors["model/h0/ln_1/b"]), tensors["model/h0/ln_1/b"])
    wte = read_tensor(tmp_path / "m.bin", f.tensors["model/wte"])
    np.testing.assert_allclose(wte, tensors["model/wte"], rtol=1e-3, atol=1e-4)
    import hashlib

    assert digest == hashlib.sha256((tmp_path / "m.bin").read_bytes()).hexdigest()


def test_ctransformers_reads_a_multibyte_vocabulary_byte_for_byte(tmp_path):
    vocab = byte_vocab(MULTIBYTE)
    make_tiny_gpt2(tmp_path / "m.bin", vocab=vocab)
    llm = load(tmp_path / "m.bin")
    assert llm.vocab_size == len(vocab) and llm.context_length == 1024
    assert llm.eos_token_id == vocab.index(EOT)
    for i, token in enumerate(vocab):
        if b"\0" not in token:  # ctransformers hands tokens back as C strings
            assert llm.ctransformers_llm_detokenize(i) == token
    ids = llm.tokenize("日本語🙂")  # its greedy longest match finds our multi-byte tokens
    assert [vocab[i] for i in ids] == ["日本".encode(), "語".encode(), "🙂".encode()]
    llm.eval(ids)
    logits = np.array(llm.logits)
    assert logits.shape == (len(vocab),) and np.isfinite(logits).all()


def test_writer_refuses_wrong_shapes_and_missing_tensors(tmp_path):
    vocab = byte_vocab()
    hp = HParams(len(vocab), 64, 32, 2, 1, "f32")
    tensors = dict(random_tensors(hp))
    with pytest.raises(ValueError, match="shape"):
        write_gpt2(tmp_path / "m.bin", hp, vocab, tensors | {"model/wte": np.zeros((3, 32), np.float32)})
    del tensors["model/ln_f/g"]
    with pytest.raises(ValueError, match="missing tensors: model/ln_f/g"):
        write_gpt2(tmp_path / "m.bin", hp, vocab, tensors)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_reader_refuses_foreign_and_truncated_files(tmp_path, tiny_model):
    (tmp_path / "x.bin").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ValueError, match="not a GGML file"):
        read_gpt2(tmp_path / "x.bin")
    (tmp_path / "y.bin").write_bytes(tiny_model.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_gpt2(tmp_path / "y.bin")


def test_real_gpt2_vocabulary_in_a_tiny_model(gpt2_vocab_model):
    vocab = read_gpt2(gpt2_vocab_model).vocab
    llm = load(gpt2_vocab_model)
    assert llm.vocab_size == 50257 and llm.eos_token_id == 50256
    assert llm.ctransformers_llm_detokenize(15496) == b"Hello" and llm.ctransformers_llm_detokenize(995) == b" world"
    assert sum(1 for t in vocab if not _is_utf8(t)) > 100  # real tokens that hold part of a character
    llm.eval([15496, 995])
    assert len(llm.logits) == 50257


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False
