"""The tokenizer.json to install for a Hugging Face GPT-2 folder: its own, checked, or one built.

Download and convert call this; GPT2Tokenizer (service.tokenizer.bpe) then loads the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from service.tokenizer.bpe import (
    GPT2Tokenizer,
    TokenizerFormatError,
    json_bytes,
    parse_merge,
)


def read_merges_txt(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Merges from GPT-2's vocab.bpe / a Hugging Face merges.txt (a "#version" first line is skipped)."""
    merges = []
    for n, line in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        try:
            merges.append(parse_merge(line))
        except TokenizerFormatError:
            raise TokenizerFormatError(f"{path}:{n}: expected two space-separated symbols, got {line!r}") from None
    return merges


def tokenizer_json_bytes(src_dir: str | os.PathLike[str]) -> bytes:
    """The tokenizer.json file to install for a Hugging Face GPT-2 folder.

    The folder's own tokenizer.json, byte for byte, once checked to be a usable byte-level
    BPE; otherwise one built from vocab.json + merges.txt (see build_tokenizer_json).
    TokenizerFormatError says what is missing or wrong.
    """
    data, raw = _folder_tokenizer(Path(src_dir))
    return json_bytes(data) if raw is None else raw


def build_tokenizer_json(src_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The tokenizer.json content for a Hugging Face GPT-2 folder.

    Its tokenizer.json is returned as is once checked to be a usable byte-level BPE;
    otherwise one is built from vocab.json + merges.txt, with these special tokens:
    <|endoftext|>, added_tokens.json, and the tokens special_tokens_map.json and
    tokenizer_config.json name (`*_token` keys) that are in the vocabulary.
    TokenizerFormatError says what is missing or wrong.
    """
    return _folder_tokenizer(Path(src_dir))[0]


def _folder_tokenizer(src: Path) -> tuple[dict[str, Any], bytes | None]:
    """(tokenizer.json content, the folder's own tokenizer.json bytes or None when built)."""
    path = src / "tokenizer.json"
    if path.is_file():
        raw = path.read_bytes()
        data = _read_json(path, raw)
        try:
            GPT2Tokenizer.from_json(data)
        except TokenizerFormatError as exc:
            raise TokenizerFormatError(f"{path}: {exc}") from None
        return data, raw
    vocab_file, merges_file = src / "vocab.json", src / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        found = sorted(p.name for p in src.glob("*") if "token" in p.name or p.name in ("vocab.json", "merges.txt"))
        raise TokenizerFormatError(f"{src} has no usable tokenizer (found: {', '.join(found) or 'none'}); "
                                   "accepted: tokenizer.json, or vocab.json together with merges.txt")
    vocab = _read_json(vocab_file)
    if not isinstance(vocab, dict):
        raise TokenizerFormatError(f"{vocab_file}: expected an object of token -> id")
    specials: list[str] = []
    added_file = src / "added_tokens.json"
    if added_file.is_file():
        added = _read_json(added_file)
        if not isinstance(added, dict):
            raise TokenizerFormatError(f"{added_file}: expected an object of token -> id")
        for token, token_id in added.items():
            if vocab.setdefault(token, token_id) != token_id:
                raise TokenizerFormatError(f"{added_file}: {token!r} has id {token_id}, vocab.json gives {vocab[token]}")
            specials.append(token)
    for config in ("special_tokens_map.json", "tokenizer_config.json"):
        if (src / config).is_file():
            specials += [t for t in _named_tokens(_read_json(src / config)) if t in vocab]
    merges = read_merges_txt(merges_file)
    try:
        return GPT2Tokenizer(vocab, merges, specials).to_json(), None
    except TokenizerFormatError as exc:
        raise TokenizerFormatError(f"{vocab_file} with merges.txt: {exc}") from None


def _read_json(path: Path, raw: bytes | None = None) -> Any:
    """A JSON file's content; TokenizerFormatError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_bytes() if raw is None else raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerFormatError(f"{path}: not valid JSON ({exc})") from None


def _named_tokens(config: Any) -> list[str]:
    """The tokens a special_tokens_map.json / tokenizer_config.json names (eos_token, pad_token, ...)."""
    if not isinstance(config, dict):
        return []
    named = [v.get("content") if isinstance(v, dict) else v for k, v in config.items() if k.endswith("_token")]
    return [t for t in named if isinstance(t, str) and t]
