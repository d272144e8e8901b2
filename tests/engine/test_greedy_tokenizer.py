"""GGML's greedy tokenizer (tokenizer/greedy.py, for GGML models without a tokenizer.json) against
ctransformers' own, which it replaces: the same ids for the same text, in linear time."""

from __future__ import annotations

import random
import threading

import pytest

from service.engine.ctransformers_backend import Engine
from service.formats.ggml.tiny import EOT, make_tiny_gpt2
from service.tokenizer.vocab import UnknownTokenError
from service.tokenizer.greedy import GreedyTokenizer
from tests.fixtures.gpt2_vocab import gpt2_vocab_bytes

# ASCII: ctransformers' std::regex reads bytes above 0x7f as negative chars, which it mishandles
# (it dropped the whitespace after "ẞ \n " and crashed the process on "ẞ  "), so only ASCII text
# has a well-defined reference; non-ASCII text must come back whole (test_ids_go_back_to_the_text)
PIECES = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'x", " ", "  ", "\t", "\n", "\r\n", "\v", "\f", "a", "Z",
          "the", " cat", "0", "42", " 7", ".", "!?", " --", "<|endoftext|>", "Hello", "x" * 40, "don't", "O'Neil",
          "  \n ", "$%^&", "\x01", "~", "_x_"]
NON_ASCII = ["é", "中文", "🙂", "\u00a0", "naïve", "ẞ", " ẞ  \n ", "\u2014"]


def _filler_vocab() -> list[bytes]:
    return [bytes([b]) for b in range(256)] + [b"th", b"the", b" the", b"ca", b"cat", b" c", b"xx", b"xxxx"] + [EOT]


@pytest.fixture(scope="module", params=["gpt2", "filler"])
def both(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """ctransformers' model (whose tokenize is the reference) and ours, on the same vocabulary."""
    vocab = gpt2_vocab_bytes() if request.param == "gpt2" else _filler_vocab()
    folder = tmp_path_factory.mktemp("greedy")
    make_tiny_gpt2(folder / "model.bin", vocab=vocab, n_embd=32, n_head=2, n_layer=1, n_ctx=64)
    engine = Engine(folder / "model.bin", threads=1, libdir=folder)  # without a tokenizer.json: ours
    assert isinstance(engine.tokenizer, GreedyTokenizer)
    yield engine._llm, engine.tokenizer
    engine.close()


def test_the_same_ids_as_ctransformers_on_random_text(both):
    llm, ours = both
    rng = random.Random(5)
    for _ in range(600):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        assert ours.encode(text) == list(llm.tokenize(text)), repr(text)


def test_the_same_ids_on_long_words(both):
    llm, ours = both
    for text in ("x" * 700, "the" * 300, " " * 500 + "a", "9" * 400, "'s" * 100):
        assert ours.encode(text) == list(llm.tokenize(text))


def test_text_after_a_nul_is_kept(both):
    """ctransformers hands the text to C as a C string, so it dropped everything after a NUL."""
    llm, ours = both
    assert llm.tokenize("ab\x00cd") == llm.tokenize("ab")
    assert ours.decode(ours.encode("ab\x00cd")) == "ab\x00cd"


def test_a_prompt_at_the_apis_limit_is_tokenized_without_holding_the_thread():
    """200,000 letters in one word (the API's longest prompt): ctransformers' tokenizer would try
    every length of the rest of the word at every step and take hours; this one finishes."""
    ours = GreedyTokenizer(gpt2_vocab_bytes(), 50256)
    result: list[list[int]] = []
    worker = threading.Thread(target=lambda: result.append(ours.encode("x" * 200_000)), daemon=True)
    worker.start()
    worker.join(120)  # a bound for a hang, far above what it takes: speed is the benchmark's
    assert result, "tokenizing 200,000 characters did not finish in 120 s"
    (ids,) = result
    assert ours.decode(ids) == "x" * 200_000 and len(ids) < 200_000 // 4  # long x-run tokens


def test_token_ids_outside_the_vocabulary_are_refused_and_lone_surrogates_count_as_fffd(capsys):
    ours = GreedyTokenizer(_filler_vocab(), 264)
    with pytest.raises(UnknownTokenError, match="outside the vocabulary"):
        ours.token_bytes(265)
    with pytest.raises(UnknownTokenError):
        ours.token_bytes("1")  # type: ignore[arg-type]
    assert ours.encode("a\ud800b") == ours.encode("a\ufffdb")
    assert capsys.readouterr().err == ""


def test_bytes_in_no_token_are_skipped_with_one_warning(capsys):
    ours = GreedyTokenizer([b"a", b"b", EOT], 2)
    assert ours.encode("a?b??") == [0, 1]
    assert capsys.readouterr().err.count("3 byte(s) of the prompt are in no token") == 1


def test_a_repeated_token_takes_its_last_id_as_in_ggml():
    assert GreedyTokenizer([b"a", b"b", b"a", EOT], 3).encode("ab") == [2, 1]


def test_ids_go_back_to_the_text(both):
    _, ours = both
    rng = random.Random(6)
    for _ in range(300):
        text = "".join(rng.choice(PIECES + NON_ASCII) for _ in range(rng.randint(0, 30)))
        assert ours.decode(ours.encode(text)) == text, repr(text)
