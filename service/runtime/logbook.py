"""The JSONL request log: one writer thread, one whole line per finished request."""

from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import msgspec

_STOP = object()
# JSON allows these raw inside strings, but str.splitlines() and other Unicode-aware readers
# break lines at them; escaped, a record is one line for every reader. In UTF-8 these byte
# runs can only be these characters, and outside strings a JSON line is ASCII, so replacing
# them is exact.
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


class LogBook:
    """Appends records to a JSONL file from a single thread, so lines never interleave or tear.

    `write` never blocks on disk and never raises: a failure to write is reported on stderr
    and the request it belongs to goes on unaffected.
    """

    def __init__(self, path: str | os.PathLike[str], on_failure: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self._on_failure = on_failure  # e.g. the log-write-failures counter
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._encoder = msgspec.json.Encoder()
        self._thread = threading.Thread(target=self._loop, name="minivault-logbook", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record for the log."""
        self._queue.put(record)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        f = None
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            try:
                line = _escape_line_breaks(self._encoder.encode(item)) + b"\n"
                if f is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    f = open(self.path, "ab", buffering=0)
                # one write() of a whole line, on an O_APPEND file: no torn lines
                f.write(line)
            except Exception as exc:  # never let the log fail a request
                print(f"minivault: could not write the request log {self.path}: {exc}", file=sys.stderr, flush=True)
                if self._on_failure is not None:
                    self._on_failure()
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
                    f = None
        if f is not None:
            try:
                os.fsync(f.fileno())
            except OSError:
                pass
            f.close()


def _escape_line_breaks(encoded: bytes) -> bytes:
    """Escape the characters some readers split lines at (see _LINE_BREAKS)."""
    for raw, escaped in _LINE_BREAKS:
        encoded = encoded.replace(raw, escaped)
    return encoded
