"""GPT-2 BPE against the real GPT-2 vocabulary, with Hugging Face `tokenizers` as the reference."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from service.errors import UnknownToken
from service.tokenizer.bpe import (
    EOT,
    GPT2Tokenizer,
    TokenizerFormatError,
    pre_tokenize,
)
from service.tokenizer.files import build_tokenizer_json, tokenizer_json_bytes
from service.tokenizer.vocab import UnknownTokenError
from tests.fixtures.gpt2_vocab import (
    gpt2_merges,
    gpt2_vocab,
    reference_tokenizer,
    write_tokenizer_json,
    write_vocab_merges,
)


@pytest.fixture(scope="session")
def gpt2_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpt2") / "tokenizer.json"
    write_tokenizer_json(path)
    return path


@pytest.fixture(scope="session")
def tok(gpt2_json: Path) -> GPT2Tokenizer:
    return GPT2Tokenizer.from_file(gpt2_json)


@pytest.fixture(scope="session")
def ref():
    return reference_tokenizer()


TEXTS = [
    "Hello world",
    "Hello, world! How are you today?",
    "  leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between\twords",
    " ",
    "   ",
    "",
    "\n",
    "line one\nline two\n\nline four\n",
    "tabs\tand\t\tmore\t",
    "mixed \t\n whitespace \n\t  end",
    "windows\r\nline endings\r\n",
    "It's a dog's life; they're sure we've been, I'm told, you'll see, he'd know.",
    "IT'S LOUD, THEY'RE HERE, WE'VE GOT IT, I'M OK, YOU'LL SEE, HE'D GO, 'S alone",
    "'s 't 're 've 'm 'll 'd at the start",
    "quotes 'inside' and ''double'' and '''triple'''",
    "numbers 0 1 12 123 1234 12345 123456789 3.14159 -42 1,000,000 2024-05-01",
    "punctuation!!! ??? ... --- *** ### $$$ %%% &&& ((())) [[]] {{}} <<>> /// \\\\ |||",
    "e.g. i.e. U.S.A. a.m. p.m. Mr. Mrs. Dr.",
    "café naïve résumé über Straße façade jalapeño Ångström",
    "日本語のテキストと中文文本和한국어",
    "emoji 🎉👍🏽🤷‍♀️ 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "mixed: Привет мир, γειά σου κόσμε, مرحبا بالعالم, שלום עולם, नमस्ते दुनिया, สวัสดีชาวโลก",
    "numbers elsewhere: ١٢٣ ४५६ ⅷ ² ½ ①",
    "<|endoftext|>",
    "before<|endoftext|>after",
    "one <|endoftext|> two<|endoftext|><|endoftext|> three",
    "<|endoftext| is not special, nor is <|endoftext or |endoftext|>",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(3))\n",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}',
    "https://example.com/path?query=1&b=two#frag",
    "\u00a0non-breaking\u00a0space, em\u2003space, ideographic\u3000space, NEL\x85here",
    "controls \x00\x01\x1c\x1d\x1e\x1f\x7f and zero\u200bwidth",
    "combining: e\u0301 a\u0308 n\u0303 and standalone \u0301",
    "x" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_reference_and_round_trips(tok: GPT2Tokenizer, ref, text: str) -> None:
    ids = tok.encode(text)
    assert ids == ref.encode(text).ids
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()


def test_well_known_gpt2_ids(tok: GPT2Tokenizer) -> None:
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.encode("\n") == [198]
    assert tok.encode(" ") == [220]
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.encode("It's") == [1026, 338]
    assert tok.vocab_size == 50257
    assert tok.eos_id == 50256
    assert tok.id_to_token(995) == "Ġworld"
    assert tok.token_bytes(995) == b" world"
    assert tok.token_bytes(np.int64(995)) == b" world"  # sampled ids may be numpy integers
    assert tok.token_bytes(50256) == b"<|endoftext|>"
    assert tok.special_tokens == {EOT: 50256}


def test_multibyte_characters_split_across_tokens(tok: GPT2Tokenizer) -> None:
    ids = tok.encode("🎉")
    assert len(ids) > 1  # not one token in GPT-2: its bytes come in pieces
    assert tok.decode(ids[:1]) == "\ufffd"
    assert b"".join(tok.token_bytes(i) for i in ids) == "🎉".encode()


def test_pre_tokenizer_pieces() -> None:
    assert pre_tokenize("Hello world") == ["Hello", " world"]
    assert pre_tokenize("a   b") == ["a", "  ", " b"]
    assert pre_tokenize("end  ") == ["end", "  "]
    assert pre_tokenize("it's IT'S") == ["it", "'s", " IT", "'", "S"]
    assert pre_tokenize("x\n\ny") == ["x", "\n", "\n", "y"]  # the last space goes with what follows
    assert pre_tokenize("a \u00e9t\u00e9 12\u0663!?") == ["a", " \u00e9t\u00e9", " 12\u0663", "!?"]


# --- random text ------------------------------------------------------------------------------

_CHUNKS = [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u00a0", "\u2003", "\u3000",
    "\u200b", "'", "''", "'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'LL", "'d", "s", "t", "re", "ll",
    ".", ",", "!?", "...", "-", "_", "#", "@", "$", "(", ")", "\"", "`", "~", "<|endoftext|>", "<|endof", "|>",
    "é", "ñ", "ß", "e\u0301", "日本", "中文", "한국어", "🎉", "👍🏽", "🤷\u200d♀️", "🇫🇷", "Привет", "ελληνικά",
    "مرحبا", "שלום", "नमस्ते", "ไทย", "١٢٣", "४५", "Ⅷ", "²", "½", "\ue000", "\U000f0001",
]  # fmt: skip


def _random_char(rng: random.Random) -> str:
    """A random code point (no surrogates), biased towards assigned characters."""
    while True:
        cp = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0x80, 0x2FFF), rng.randint(0x3000, 0xFFFF),
                         rng.randint(0x10000, 0x10FFFF), rng.randint(0x1F300, 0x1FAFF)])
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def _random_text(rng: random.Random) -> str:
    """A mix of words, digits, whitespace runs, contractions, specials and random Unicode."""
    parts = []
    for _ in range(rng.randint(0, 40)):
        r = rng.random()
        if r < 0.35:
            parts.append(rng.choice(_CHUNKS))
        elif r < 0.55:
            parts.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
                                 for _ in range(rng.randint(1, 12))))
        elif r < 0.65:
            parts.append(str(rng.randint(0, 10**rng.randint(1, 12))))
        else:
            parts.append(_random_char(rng))
    return "".join(parts)


@pytest.mark.parametrize("seed", range(8))
def test_random_text_matches_reference(tok: GPT2Tokenizer, ref, seed: int) -> None:
    rng = random.Random(seed)
    texts = [_random_text(rng) for _ in range(250)]
    for text, expected in zip(texts, ref.encode_batch(texts)):
        ids = tok.encode(text)
        assert ids == expected.ids, text
        assert tok.decode(ids) == text


def test_character_classes_match_reference(ref) -> None:
    """Letter / number / space / other for a sample of all code points, incl. Unicode 15-16 additions."""
    rng = random.Random(7)
    cps = [rng.randint(0, 0x10FFFF) for _ in range(20000)]
    cps += [0x1C89, 0xA7CD, 0x105C0, 0x10D40, 0x13460, 0x143FA, 0x1E5FA, 0x2EBF0, 0x31350, 0x323AF, 0x323B0]
    cps += [*range(0x00, 0x100), *range(0x2000, 0x2030), 0x1680, 0x205F, 0x3000, 0x180E, 0xFEFF]
    chars = [chr(cp) for cp in cps if not 0xD800 <= cp <= 0xDFFF]
    # Each context separates the four classes: "a" joins letters, "1" numbers, "#" others, "\n" spaces.
    text = "".join(f"a{c}|1{c}|#{c}|\n{c}x|'s{c}|" for c in chars)
    spans, pos = [], 0
    for piece in pre_tokenize(text):
        spans.append((pos, pos + len(piece)))
        pos += len(piece)
    assert spans == [offsets for _, offsets in ref.pre_tokenizer.pre_tokenize_str(text)]


def test_long_pieces_match_reference(tok: GPT2Tokenizer, ref) -> None:
    rng = random.Random(3)
    for text in ["a" * 5000, "ab" * 3000, "".join(rng.choice("abcdefgh") for _ in range(5000)),
                 "!?" * 2000, "9" * 3000, "🎉" * 500, " " * 1000 + "x"]:
        assert tok.encode(text) == ref.encode(text).ids


def test_lone_surrogates_encode_as_replacement_character(tok: GPT2Tokenizer) -> None:
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")
    assert tok.decode(tok.encode("x\udfffy")) == "x\ufffdy"


def test_concurrent_encodes_agree(tok: GPT2Tokenizer) -> None:
    rng = random.Random(11)
    texts = [_random_text(rng) for _ in range(100)]
    expected = [tok.encode(t) for t in texts]
    results: list[list[list[int]]] = []

    def work() -> None:
        results.append([tok.encode(t) for t in texts])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [50257, -1, 10**12])
def test_unknown_token_ids_are_named(tok: GPT2Tokenizer, bad: int) -> None:
    for call in (lambda: tok.decode([15496, bad]), lambda: tok.token_bytes(bad), lambda: tok.id_to_token(bad)):
        with pytest.raises(UnknownTokenError) as info:
            call()
        assert info.value.token_id == bad
        assert str(bad) in str(info.value) and "50256" in str(info.value)
        assert isinstance(info.value, ValueError) and isinstance(info.value, UnknownToken)
        assert info.value.field == "tokens"


def test_unusable_vocabularies_are_refused() -> None:
    vocab, merges = gpt2_vocab(), gpt2_merges()
    with pytest.raises(TokenizerFormatError, match="outside the vocabulary"):
        GPT2Tokenizer.from_vocab_merges(vocab, [*merges, ("Ġworld", "zzzq")])
    with pytest.raises(TokenizerFormatError, match="byte symbols missing"):
        GPT2Tokenizer.from_vocab_merges({"a": 0, "b": 1, "ab": 2}, [("a", "b")])
    with pytest.raises(TokenizerFormatError, match="not two symbols"):
        GPT2Tokenizer.from_vocab_merges(vocab, ["Ġ t x"])
    with pytest.raises(TokenizerFormatError, match="WordPiece"):
        GPT2Tokenizer.from_json({"model": {"type": "WordPiece", "vocab": {}}})
    with pytest.raises(TokenizerFormatError, match="Metaspace"):
        GPT2Tokenizer.from_json({"pre_tokenizer": {"type": "Metaspace"},
                                 "model": {"type": "BPE", "vocab": vocab, "merges": []}})


def test_from_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerFormatError, match="tokenizer.json"):
        GPT2Tokenizer.from_file(bad)


# --- storage ----------------------------------------------------------------------------------


def test_save_and_load_round_trip(tok: GPT2Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left behind
    again = GPT2Tokenizer.from_file(path)
    assert again.to_json() == tok.to_json()
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text)
    # The file is a real `tokenizers` file: the Rust library loads it and agrees.
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(path))
    for text in TEXTS:
        assert hf.encode(text).ids == tok.encode(text)
    tok.save(path)  # overwriting works too
    assert json.loads(path.read_text("utf-8"))["model"]["merges"][0] == "Ġ t"


def test_build_from_vocab_and_merges(tok: GPT2Tokenizer, tmp_path: Path) -> None:
    write_vocab_merges(tmp_path)
    data = build_tokenizer_json(tmp_path)
    built = GPT2Tokenizer.from_json(data)
    assert built.eos_id == 50256 and built.vocab_size == 50257
    assert data["model"]["merges"][:2] == ["Ġ t", "Ġ a"]  # the "#version" line is skipped
    for text in TEXTS:
        assert built.encode(text) == tok.encode(text)


def test_build_uses_tokenizer_json_as_is(gpt2_json: Path, tmp_path: Path) -> None:
    data = json.loads(gpt2_json.read_text("utf-8"))
    data["model"]["merges"] = [m.split(" ") for m in data["model"]["merges"]]  # the newer pair form
    (tmp_path / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    assert build_tokenizer_json(tmp_path) == data


def test_build_refuses_folders_without_a_usable_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(TokenizerFormatError, match="vocab.json"):
        build_tokenizer_json(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
    with pytest.raises(TokenizerFormatError, match="Unigram"):
        build_tokenizer_json(tmp_path)


def test_build_marks_added_and_configured_special_tokens(tmp_path: Path) -> None:
    write_vocab_merges(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text("utf-8")) | {"<|pad|>": 50257}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<sep>": 50258}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<|pad|>"},
                                                                  "unk_token": "<unk>"}))  # not in the vocabulary
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False, "sep_token": None}))
    built = GPT2Tokenizer.from_json(build_tokenizer_json(tmp_path))
    assert built.special_tokens == {EOT: 50256, "<|pad|>": 50257, "<sep>": 50258}
    assert built.encode("a<|pad|>b<sep>") == [64, 50257, 65, 50258]
    assert json.loads(tokenizer_json_bytes(tmp_path)) == build_tokenizer_json(tmp_path)


def test_tokenizer_json_bytes_keeps_the_folder_file_byte_for_byte(gpt2_json: Path, tmp_path: Path) -> None:
    raw = gpt2_json.read_bytes().replace(b'"version": "1.0"', b'"version":  "1.0"')  # not as we'd write it
    assert raw != gpt2_json.read_bytes()
    (tmp_path / "tokenizer.json").write_bytes(raw)
    assert tokenizer_json_bytes(tmp_path) == raw
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(TokenizerFormatError, match=r"found: vocab\.json\); accepted: tokenizer\.json, or vocab\.json"):
        tokenizer_json_bytes(tmp_path)

