"""What the tokenizers share: ids back to bytes and text over a vocabulary of token bytes, the
error for an id outside it, and text made encodable as UTF-8."""

from __future__ import annotations

import operator
import re
from typing import Sequence

from service.errors import UnknownToken

_SURROGATE = re.compile("[\ud800-\udfff]")


class UnknownTokenError(UnknownToken, ValueError):
    """A token id outside the vocabulary."""

    def __init__(self, token_id: object, vocab_size: int) -> None:
        super().__init__(
            f"token id {token_id!r} is outside the vocabulary: ids are 0 to {vocab_size - 1}", field="tokens"
        )
        self.token_id = token_id


def well_formed(text: str) -> str:
    """`text` with lone surrogates (not encodable as UTF-8) as U+FFFD."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return _SURROGATE.sub("\ufffd", text)
    return text


class TokenBytes:
    """token_bytes and decode over `_bytes` (each id's bytes in id order, None for an id without a
    token) and `vocab_size`."""

    _bytes: Sequence[bytes | None]
    vocab_size: int

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (may be part of a UTF-8 character); for streaming."""
        try:
            data = self._bytes[operator.index(token_id)] if 0 <= token_id < self.vocab_size else None
        except TypeError:  # not an integer (numpy integers are fine)
            data = None
        if data is None:
            raise UnknownTokenError(token_id, self.vocab_size)
        return data

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; bytes that are not valid UTF-8 become U+FFFD."""
        return b"".join([self.token_bytes(i) for i in ids]).decode("utf-8", errors="replace")
