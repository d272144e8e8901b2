"""The greedy tokenizer GGML's GPT-2 example uses (and ctransformers with it), for a GGML model
without a tokenizer.json: the text's UTF-8 bytes split into words by GPT-2's pattern, then each
word cut into the longest vocabulary tokens from its start.

ctransformers tries every length from the whole rest of the word down, copying each, so its time
grows faster than the square of a word's length (1,000 / 2,000 / 4,000 letters in a row: 4 / 15 /
68 ms), and a 200,000-character prompt (the API's limit) would hold a thread for hours. A token is
never longer than the vocabulary's longest, so trying only lengths up to that gives the same tokens
in time linear in the text.
"""

from __future__ import annotations

import re
import sys
from typing import Sequence

from service.tokenizer.vocab import TokenBytes, well_formed

# GGML's pattern, as C++'s std::regex reads it in the "C" locale: [[:alpha:]] and [[:digit:]] are
# ASCII, \s is space, tab, newline, vertical tab, form feed and carriage return (as Python's bytes
# \s), and bytes above 0x7f belong to no class
_WORDS = re.compile(rb"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


class GreedyTokenizer(TokenBytes):
    """Longest-match tokenization over a GGML vocabulary (token bytes in id order)."""

    def __init__(self, vocab: Sequence[bytes], eos_id: int) -> None:
        self.vocab_size = len(vocab)
        self.eos_id = eos_id
        self._bytes = list(vocab)
        self._ids = {token: i for i, token in enumerate(vocab)}  # a repeated token: its last id, as in GGML
        self._longest = max((len(t) for t in vocab), default=1)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, as GGML's gpt_tokenize gives them."""
        ids: list[int] = []
        find, longest, skipped = self._ids.get, self._longest, 0
        data = well_formed(text).encode("utf-8")  # lone surrogates: U+FFFD, as the BPE tokenizer counts them
        for word in _WORDS.findall(data):
            i, n = 0, len(word)
            while i < n:
                for j in range(min(n, i + longest), i, -1):
                    token = find(word[i:j])
                    if token is not None:
                        ids.append(token)
                        i = j
                        break
                else:  # no token starts with this byte: skipped, as GGML does
                    skipped += 1
                    i += 1
        if skipped:  # one line a prompt, not one a byte (GGML prints each)
            print(f"minivault: warning: {skipped} byte(s) of the prompt are in no token of the vocabulary: "
                  "skipped", file=sys.stderr, flush=True)
        return ids

