"""Tokenizer speed on GPT-2's real vocabulary: load, cold and warm encode, decode.

Run: .venv/bin/python tests/benchmarks/bench_tokenizer.py
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from service.tokenizer.bpe import GPT2Tokenizer  # noqa: E402
from tests.fixtures.gpt2_vocab import (  # noqa: E402
    gpt2_tokens,
    reference_tokenizer,
    write_tokenizer_json,
)

WORDS = ("the of and to in a is that for it as was with be by on not he I this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no what can "
         "out other into more some could time these two may then do first any my now such like our over man "
         "me even most made after also did many before must through back years where much your way well "
         "down should because each just those people Mr how too little state good very make world still own "
         "see men work long get here between both life being under never day same another know while last "
         "might us great old year off come since against go came right used take three").split()


def english(n_words: int, seed: int = 0) -> str:
    """Pseudo-English: common words, capitals, punctuation, numbers and newlines."""
    rng = random.Random(seed)
    out = []
    for i in range(n_words):
        w = rng.choice(WORDS)
        if i % 12 == 0:
            w = w.capitalize()
        out.append(w)
        r = rng.random()
        if r < 0.08:
            out.append(",")
        elif r < 0.12:
            out.append(".")
        elif r < 0.13:
            out.append(f" {rng.randint(0, 2024)}")
        elif r < 0.14:
            out.append(".\n\n")
        out.append(" ")
    return "".join(out).replace(" ,", ",").replace(" .", ".")


def timed(fn, repeat: int) -> float:
    """Median wall time of `fn()` in ms."""
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        gpt2_tokens()
        write_tokenizer_json(path)
        t = time.perf_counter()
        tok = GPT2Tokenizer.from_file(path)
        print(f"load tokenizer.json (50,257 tokens, 50,000 merges): {(time.perf_counter() - t) * 1000:.0f} ms")
    text = english(800)
    ids = tok.encode(text)
    print(f"text: {len(text)} chars -> {len(ids)} tokens")
    cold = GPT2Tokenizer.from_vocab_merges(dict(tok.to_json()["model"]["vocab"]), tok._merges)
    print(f"encode, cold word cache: {timed(lambda: cold.encode(text), 1):.2f} ms")
    print(f"encode, warm: {timed(lambda: tok.encode(text), 50):.2f} ms")
    print(f"decode: {timed(lambda: tok.decode(ids), 50):.2f} ms")
    print(f"token_bytes x {len(ids)}: {timed(lambda: [tok.token_bytes(i) for i in ids], 50):.2f} ms")
    rng = random.Random(1)
    mixed = "".join(rng.choice(["héllo ", "日本語", "🎉", " 123", "?!", "\n", "Straße ", " Привет"]) for _ in range(400))
    print(f"mixed script text {len(mixed)} chars -> {len(tok.encode(mixed))} tokens: "
          f"warm {timed(lambda: tok.encode(mixed), 50):.2f} ms")
    long_word = "x" * 100_000
    print(f"one 100,000-char piece: {timed(lambda: tok._bpe_ids(long_word), 1):.0f} ms")
    ref = reference_tokenizer()
    print(f"reference (tokenizers, Rust) encode: {timed(lambda: ref.encode(text), 50):.2f} ms")


if __name__ == "__main__":
    main()
