"""GPT-2's byte-level BPE, exactly, from a Hugging Face `tokenizers` JSON file (tokenizer.json).

Text is split into pieces by GPT-2's pre-tokenizer (service.tokenizer.pretokenize); each piece's UTF-8
bytes are spelled with GPT-2's printable stand-in characters and merged by rank.

Special tokens (<|endoftext|> and any `added_tokens` of the file) written in the text are
encoded as the special token, as Hugging Face `tokenizers` and llama.cpp do when specials are
allowed; MiniVault's prompts are plain text, and this is what a GPT-2 user expects.
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from service.fileio import write_atomic
from service.tokenizer.pretokenize import pre_tokenize
from service.tokenizer.vocab import TokenBytes, well_formed

EOT = "<|endoftext|>"
WORD_CACHE = 1 << 16  # pieces remembered with their BPE ids (English needs a few thousand)

class TokenizerFormatError(ValueError):
    """A tokenizer file that is not a GPT-2 byte-level BPE MiniVault can run."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (its encoder.py table)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_CHARS = bytes_to_unicode()
_BYTE_OF = {c: b for b, c in _BYTE_CHARS.items()}
_SPELL = {b: c for b, c in _BYTE_CHARS.items()}  # translate table for latin-1-decoded bytes


class GPT2Tokenizer(TokenBytes):
    """GPT-2 byte-level BPE: encode text to ids and ids back to bytes/text."""

    def __init__(self, vocab: dict[str, int], merges: Iterable[tuple[str, str] | str | list[str]],
                 special_tokens: Iterable[str] = ()) -> None:
        self._vocab = vocab = dict(vocab)
        self._merges = [parse_merge(m) for m in merges]
        if not vocab:
            raise TokenizerFormatError("the vocabulary is empty")
        if any(type(i) is not int or i < 0 for i in vocab.values()):
            raise TokenizerFormatError("vocabulary ids must be non-negative integers")
        self._ranks: dict[tuple[str, str], int] = {}
        for rank, (a, b) in enumerate(self._merges):
            if a not in vocab or b not in vocab or a + b not in vocab:
                raise TokenizerFormatError(f"merge {rank} {a!r} {b!r} uses or makes a token outside the vocabulary")
            self._ranks.setdefault((a, b), rank)
        missing = [c for c in _BYTE_CHARS.values() if c not in vocab]
        if missing:
            raise TokenizerFormatError(f"not a byte-level vocabulary: {len(missing)} byte symbols missing, "
                                       f"e.g. {missing[0]!r}")
        specials = {t for t in special_tokens if t}
        if EOT in vocab:
            specials.add(EOT)
        unknown = sorted(specials - vocab.keys())
        if unknown:
            raise TokenizerFormatError(f"special token {unknown[0]!r} is not in the vocabulary")
        self._specials = {t: vocab[t] for t in specials}
        # Longest first, so a special that contains another wins, as in `tokenizers`.
        self._special_re = re.compile("|".join(map(re.escape, sorted(specials, key=len, reverse=True)))) \
            if specials else None
        self.vocab_size = max(vocab.values()) + 1
        if self.vocab_size > 2 * len(vocab) + 256:
            raise TokenizerFormatError(f"ids go up to {self.vocab_size - 1} for {len(vocab)} tokens: too sparse")
        self.eos_id: int | None = vocab.get(EOT)  # None: generation then ends only by length or stop
        self._tokens: list[str | None] = [None] * self.vocab_size
        for token, i in vocab.items():
            if self._tokens[i] is not None:
                raise TokenizerFormatError(f"id {i} is given to both {self._tokens[i]!r} and {token!r}")
            self._tokens[i] = token
        self._bytes: list[bytes | None] = [
            None if t is None else t.encode() if t in self._specials else _spelled_bytes(t) for t in self._tokens
        ]
        self._word_ids = functools.lru_cache(maxsize=WORD_CACHE)(self._bpe_ids)

    # --- construction and storage --------------------------------------------------------

    @classmethod
    def from_vocab_merges(cls, vocab: dict[str, int], merges: Iterable[tuple[str, str] | str],
                          special_tokens: Iterable[str] = ()) -> GPT2Tokenizer:
        """A tokenizer from GPT-2's encoder.json-style vocab and vocab.bpe-style merges."""
        return cls(vocab, merges, special_tokens)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GPT2Tokenizer:
        """A tokenizer from a parsed tokenizers-format JSON; TokenizerFormatError if it's not GPT-2-like."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise TokenizerFormatError("not a tokenizers JSON file (no \"model\" object)")
        model = data["model"]
        if model.get("type", "BPE") != "BPE":
            raise TokenizerFormatError(f"a {model.get('type')} tokenizer; MiniVault runs GPT-2 byte-level BPE")
        for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
            if model.get(key):
                raise TokenizerFormatError(f"model.{key} = {model[key]!r} is not supported (GPT-2 has none)")
        if model.get("byte_fallback") or model.get("ignore_merges"):
            raise TokenizerFormatError("byte_fallback / ignore_merges are not GPT-2's BPE")
        if data.get("normalizer") is not None:
            raise TokenizerFormatError("a normalizer is not supported (GPT-2 has none)")
        _check_byte_level(data.get("pre_tokenizer"))
        if not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges", []), list):
            raise TokenizerFormatError("model.vocab must be an object and model.merges a list")
        vocab = dict(model["vocab"])
        specials = []
        for added in data.get("added_tokens") or []:
            content, token_id = added.get("content"), added.get("id")
            if not isinstance(content, str) or not content:
                raise TokenizerFormatError(f"added token {added!r} has no content")
            if vocab.setdefault(content, token_id) != token_id:
                raise TokenizerFormatError(f"added token {content!r} has id {token_id}, "
                                           f"but the vocabulary gives it {vocab[content]}")
            specials.append(content)
        return cls(vocab, model.get("merges", []), specials)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> GPT2Tokenizer:
        """Load a tokenizer.json; TokenizerFormatError names the file when it can't be used."""
        try:
            data = json.loads(Path(path).read_bytes())
            return cls.from_json(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenizerFormatError(f"{path}: not valid JSON ({exc})") from None
        except TokenizerFormatError as exc:
            raise TokenizerFormatError(f"{path}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        """The tokenizers-format JSON (GPT-2's layout) as a dict."""
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        as_strings = not any(" " in a or " " in b for a, b in self._merges)
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": True, "special": True}
                for t, i in sorted(self._specials.items(), key=lambda item: item[1])
            ],
            "normalizer": None,
            "pre_tokenizer": byte_level,
            "post_processor": byte_level | {"trim_offsets": False},
            "decoder": byte_level,
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": dict(sorted(self._vocab.items(), key=lambda item: item[1])),
                "merges": [f"{a} {b}" if as_strings else [a, b] for a, b in self._merges],
            },
        }  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write tokenizer.json atomically (temp file in the same folder, fsync, rename)."""
        write_atomic(path, json_bytes(self.to_json()))

    # --- encoding ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; lone surrogates (not encodable as UTF-8) count as U+FFFD."""
        text = well_formed(text)
        ids: list[int] = []
        if self._special_re is None or not any(t in text for t in self._specials):
            self._encode_ordinary(text, ids)
            return ids
        start = 0
        for m in self._special_re.finditer(text):
            self._encode_ordinary(text[start:m.start()], ids)
            ids.append(self._specials[m.group()])
            start = m.end()
        self._encode_ordinary(text[start:], ids)
        return ids

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        """Append the ids of text that holds no special token."""
        word_ids = self._word_ids
        for piece in pre_tokenize(text):
            out.extend(word_ids(piece))

    def _bpe_ids(self, piece: str) -> tuple[int, ...]:
        """BPE of one pre-tokenizer piece, as ids."""
        vocab = self._vocab
        return tuple(vocab[s] for s in self._merge(piece.encode().decode("latin-1").translate(_SPELL)))

    def _merge(self, word: str) -> list[str]:
        """Merge the symbols of `word` by rank.

        Lowest rank first, leftmost first among equals: with merges learned in order this is
        GPT-2's merge-every-occurrence-per-round loop, in O(n log n) for long pieces.
        """
        syms: list[str | None] = list(word)
        n = len(syms)
        if n < 2:
            return syms  # type: ignore[return-value]
        ranks = self._ranks
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get((word[i], word[i + 1]))) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            left = syms[i]
            if left is None or j >= n or ranks.get((left, syms[j])) != rank:  # type: ignore[arg-type]
                continue  # stale: one of its symbols was merged since
            merged = left + syms[j]  # type: ignore[operator]
            syms[i], syms[j] = merged, None
            k = nxt[i] = nxt[j]
            if k < n:
                prv[k] = i
                if (r := ranks.get((merged, syms[k]))) is not None:  # type: ignore[arg-type]
                    heapq.heappush(heap, (r, i))
            p = prv[i]
            if p >= 0 and (r := ranks.get((syms[p], merged))) is not None:  # type: ignore[arg-type]
                heapq.heappush(heap, (r, p))
        return [s for s in syms if s is not None]

    # --- decoding ---------------------------------------------------------------------------

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of an id (byte-level spelling, e.g. "Ġworld")."""
        self.token_bytes(token_id)  # validates
        return self._tokens[token_id]  # type: ignore[return-value]

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry, or None."""
        return self._vocab.get(token)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special tokens recognised in text, with their ids."""
        return dict(self._specials)


# --- helpers ------------------------------------------------------------------------------


def _spelled_bytes(token: str) -> bytes:
    """Bytes of a byte-level token; a character outside the byte table stands for its UTF-8."""
    try:
        return bytes([_BYTE_OF[c] for c in token])
    except KeyError:
        return b"".join(bytes([_BYTE_OF[c]]) if c in _BYTE_OF else c.encode() for c in token)


def parse_merge(merge: Any) -> tuple[str, str]:
    """A merge as a pair: "a b" or ["a", "b"]."""
    if type(merge) is tuple and len(merge) == 2 and type(merge[0]) is str and type(merge[1]) is str \
            and merge[0] and merge[1]:
        return merge
    if isinstance(merge, str):
        parts = merge.split(" ")
    elif isinstance(merge, (list, tuple)):
        parts = list(merge)
    else:
        parts = []
    if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
        raise TokenizerFormatError(f"merge {merge!r} is not two symbols")
    return parts[0], parts[1]


def _check_byte_level(pre: Any) -> None:
    """Accept GPT-2's pre-tokenizer: ByteLevel without prefix space (or none given)."""
    if pre is None:
        return
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) != 1 or steps[0].get("type") != "ByteLevel":
        raise TokenizerFormatError(f"pre_tokenizer {pre.get('type')!r} is not GPT-2's ByteLevel")
    if steps[0].get("add_prefix_space") or steps[0].get("use_regex") is False:
        raise TokenizerFormatError("ByteLevel with add_prefix_space or without its regex is not GPT-2's")


def json_bytes(data: dict[str, Any]) -> bytes:
    """A tokenizers-format JSON as MiniVault writes it (UTF-8, one-space indent)."""
    return json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")
