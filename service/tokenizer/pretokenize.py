"""GPT-2's pre-tokenizer: the pieces its regex splits text into, before byte-level BPE.

The pattern is
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
The stdlib `re` has no \\p{L} / \\p{N}, so every character outside ASCII is first replaced
by an ASCII one of the same class (letter, number, White_Space, other) and the pattern runs on
that: the matches are the same as the original pattern's on the original text, position for
position. Classes come from `unicodedata`, topped up with the letters and numbers of Unicode
15.0-16.0 that an older Python (3.11 has 14.0) still calls unassigned, so every code point is
classed as Hugging Face `tokenizers` classes it.
"""

from __future__ import annotations

import bisect
import re
import unicodedata

# Unicode White_Space: what \s means for Oniguruma and `regex` (not str.isspace, which adds U+001C-U+001F).
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B)))
)
_ASCII_SPACE = "\t\n\x0b\x0c\r "
_PIECES = re.compile(
    rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_ASCII_SPACE}A-Za-z0-9]+"""
    rf"""|[{_ASCII_SPACE}]+(?![^{_ASCII_SPACE}])|[{_ASCII_SPACE}]+"""
)
_CLASS_CACHE = 1 << 16  # non-ASCII characters whose class is remembered

# Letter (L) and number (N) ranges added in Unicode 15.0-16.0, used only for characters the
# running Python's unicodedata calls unassigned (Cn).
_NEWER_RANGES = sorted([(a, b, "A") for a, b in (
    (0x01C89, 0x01C8A), (0x0A7CB, 0x0A7CD), (0x0A7DA, 0x0A7DC), (0x105C0, 0x105F3), (0x10D4A, 0x10D65),
    (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x1123F, 0x11240), (0x11380, 0x11389), (0x1138B, 0x1138B),
    (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7), (0x113D1, 0x113D1), (0x113D3, 0x113D3),
    (0x11BC0, 0x11BE0), (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33), (0x1342F, 0x1342F),
    (0x13441, 0x13446), (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16D40, 0x16D6C), (0x18CFF, 0x18CFF),
    (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D), (0x1E4D0, 0x1E4EB),
    (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0), (0x2B739, 0x2B739), (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF),
)] + [(a, b, "0") for a, b in (
    (0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x11F50, 0x11F59), (0x16130, 0x16139),
    (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3), (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA),
)])  # fmt: skip
_NEWER_STARTS = [a for a, _, _ in _NEWER_RANGES]


class _AsciiClass(dict):
    """str.translate table: a non-ASCII character -> an ASCII one of its pre-tokenizer class."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        if ch in _WHITE_SPACE:
            out = "\t"  # whitespace, but not U+0020, which alone may prefix a word
        else:
            category = unicodedata.category(ch)
            out = "A" if category[0] == "L" else "0" if category[0] == "N" else "#"  # "A": no contraction letter
            if category == "Cn":
                k = bisect.bisect_right(_NEWER_STARTS, cp) - 1
                if k >= 0 and cp <= _NEWER_RANGES[k][1]:
                    out = _NEWER_RANGES[k][2]
        if len(self) < _CLASS_CACHE:
            self[cp] = out
        return out


_TO_ASCII = _AsciiClass({cp: chr(cp) for cp in range(128)})  # ASCII stands for itself


def pre_tokenize(text: str) -> list[str]:
    """GPT-2's pre-tokenizer pieces of `text` (no special-token handling)."""
    mapped = text if text.isascii() else text.translate(_TO_ASCII)
    return [text[m.start():m.end()] for m in _PIECES.finditer(mapped)]
