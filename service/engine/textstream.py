"""Turn token bytes into text that is safe to emit: whole UTF-8 characters, stop strings held back."""

from __future__ import annotations

import codecs


class TextStream:
    """Feed each token's bytes; get back the text that can be sent now.

    A character whose bytes span several tokens is emitted whole once complete. Text that
    could still turn into a stop string is held back until it can't; a stop string found
    ends the stream and is not returned.
    """

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False
        self.text = ""  # everything emitted so far

    def feed(self, data: bytes) -> str:
        """Add one token's bytes; return the text now safe to emit ('' if none)."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.decode(data))

    def finish(self) -> str:
        """End of generation: release held text; a character cut off by the end is dropped."""
        if self.stopped:
            return ""
        tail = self._held
        self._held = ""
        self._decoder.reset()
        out = self._cut_at_stop(tail)
        self.text += out
        return out

    def _cut_at_stop(self, text: str) -> str:
        """The text before the earliest stop string, marking the stream stopped if one is found."""
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            return text[: min(hits)]
        return text

    def _release(self, text: str) -> str:
        out = self._cut_at_stop(text)
        if self.stopped:
            self._held = ""
            self.text += out
            return out
        keep = self._partial_stop_len(text)
        self._held = text[len(text) - keep :] if keep else ""
        out = text[: len(text) - keep]
        self.text += out
        return out

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
