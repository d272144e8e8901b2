"""The JSONL request log: one writer thread, one whole line per finished request.

The same thread feeds the SQLite mirror (runtime/logdb.py) with each batch once it is in the
JSONL, so the database never holds a record the audit trail lacks.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Protocol

import msgspec

_STOP = object()
_WAKE = object()
_BATCH = 512  # records taken off the queue per pass: one write (and one transaction) for all
_CHUNK = 1 << 16  # bytes per write(): on a nearly full disk, what fits is written, whole lines only
_RETRY_S = 1.0  # how often a failing log is tried again while records wait
# JSON allows these raw inside strings, but str.splitlines() and other Unicode-aware readers
# break lines at them; escaped, a record is one line for every reader. In UTF-8 these byte
# runs can only be these characters, and outside strings a JSON line is ASCII, so replacing
# them is exact.
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


class Mirror(Protocol):
    """Something that keeps a copy of the records once they are in the JSONL (the SQLite log)."""

    def write_batch(self, records: list[dict[str, Any]], lines: list[bytes]) -> None: ...

    def close(self) -> None: ...


def _say(message: str) -> None:
    print(f"minivault: {message}", file=sys.stderr, flush=True)


class LogBook:
    """Appends records to a JSONL file from a single thread, so lines never interleave or tear.

    `write` never blocks on disk and never raises. While the file cannot be written (disk full,
    no permission, folder gone) records wait in a buffer of `buffer` records and are written, in
    order, once it works again; only records beyond the buffer are dropped, and both are reported
    on stderr and counted (`write_errors`, `dropped`). `fsync` is "off", "record" or a number of
    ms; `reopen()` (SIGHUP) and a file moved away (logrotate) make it open the path afresh.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: str = "off", buffer: int = 10_000,
                 mirror: Mirror | None = None, on_failure: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self._on_failure = on_failure  # e.g. the log-write-failures counter
        self.fsync = fsync
        self.buffer = buffer
        self.mirror = mirror
        self.written = 0  # records appended to the JSONL
        self.write_errors = 0  # failed attempts to write (each outage retries about once a second)
        self.dropped = 0  # records lost because the buffer was full (or could not be encoded)
        self.reopens = 0  # times the file was opened afresh (SIGHUP, rotation, after an error)
        self.fsyncs = 0
        self._pending: deque[tuple[dict[str, Any], bytes]] = deque()
        self._failing = False
        self._dropping = 0  # drops since the last report
        self._reopen = threading.Event()
        self._fd: int | None = None
        self._last_fsync = time.monotonic()
        self._unsynced = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._encoder = msgspec.json.Encoder()
        self._thread = threading.Thread(target=self._loop, name="minivault-logbook", daemon=True)
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Records waiting for the file to become writable again."""
        return len(self._pending)

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record for the log."""
        self._queue.put(record)

    def reopen(self) -> None:
        """Close and reopen the file before the next write (SIGHUP after a rotation); signal-safe."""
        self._reopen.set()
        self._queue.put(_WAKE)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # --- the writer thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        stopping = False
        while not stopping:
            try:
                items = [self._queue.get(timeout=self._wait())]
            except queue.Empty:
                items = []
            while len(items) < _BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item is _STOP:
                    stopping = True
                elif item is not _WAKE:
                    self._take(item)
            self._flush()
            self._maybe_fsync(final=stopping)
        self._finish()

    def _wait(self) -> float | None:
        """How long to block for new records: forever, unless a retry or a timed fsync is due."""
        if self._pending:
            return _RETRY_S
        if self._unsynced and self.fsync.isdigit():
            return max(0.0, self._last_fsync + int(self.fsync) / 1000 - time.monotonic())
        return None

    def _take(self, record: dict[str, Any]) -> None:
        """Encode one record into the buffer, or count it dropped when the buffer is full."""
        try:
            line = _escape_line_breaks(self._encoder.encode(record)) + b"\n"
        except Exception as exc:  # never let the log fail a request
            self.dropped += 1
            _say(f"could not encode a request log record ({exc}); it is dropped")
            return
        if len(self._pending) >= self.buffer:
            self.dropped += 1
            self._dropping += 1
            if self._dropping == 1:
                _say(f"the request log buffer is full ({self.buffer} records waiting for {self.path}); "
                     "dropping new records until the log can be written")
            return
        self._pending.append((record, line))

    def _flush(self) -> None:
        """Write the buffered records in order, a chunk at a time; on failure keep the rest for the next try."""
        records: list[dict[str, Any]] = []
        lines: list[bytes] = []
        try:
            while self._pending:
                fd = self._open()
                chunk, size = [], 0
                for _, line in self._pending:
                    if chunk and size + len(line) > _CHUNK:
                        break
                    chunk.append(line)
                    size += len(line)
                _append(fd, b"".join(chunk))
                for _ in chunk:
                    record, line = self._pending.popleft()
                    records.append(record)
                    lines.append(line)
        except OSError as exc:
            self.write_errors += 1
            if self._on_failure is not None:
                self._on_failure()
            self._close_fd()
            if not self._failing:
                self._failing = True
                _say(f"could not write the request log {self.path}: {exc}; keeping up to {self.buffer} "
                     "records in memory and retrying")
        if not records:
            return
        self._unsynced = True
        if self.fsync == "record":  # durable before it counts as written and before the next record
            self._maybe_fsync(final=True)
        self.written += len(records)
        if not self._pending and (self._failing or self._dropping):
            _say(f"the request log {self.path} is writable again: wrote {len(records)} waiting record(s)"
                 + (f"; {self._dropping} record(s) were dropped while the buffer was full" if self._dropping else ""))
            self._failing, self._dropping = False, 0
        if self.mirror is not None:
            self.mirror.write_batch(records, lines)  # reports and counts its own failures

    def _open(self) -> int:
        """The open file, opened afresh after reopen() or when the path no longer names it."""
        if self._fd is not None and (self._reopen.is_set() or _moved(self.path, self._fd)):
            self._close_fd()
        if self._fd is None:
            self._reopen.clear()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                _repair_torn_tail(fd, self.path)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
            self.reopens += 1
        return self._fd

    def _maybe_fsync(self, final: bool = False) -> None:
        """fsync as the mode asks: after each write (record), every N ms, and when closing."""
        if not self._unsynced or self._fd is None or (self.fsync == "off" and not final):
            return
        if self.fsync.isdigit() and not final and time.monotonic() - self._last_fsync < int(self.fsync) / 1000:
            return
        try:
            os.fsync(self._fd)
            self.fsyncs += 1
        except OSError as exc:
            self.write_errors += 1
            _say(f"could not fsync the request log {self.path}: {exc}")
        self._unsynced, self._last_fsync = False, time.monotonic()

    def _close_fd(self) -> None:
        if self._fd is not None:
            if self._unsynced and self.fsync != "off":
                self._maybe_fsync(final=True)
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _finish(self) -> None:
        """At close: report what could not be written, close the file and the mirror."""
        if self._pending:
            self.dropped += len(self._pending)
            _say(f"the request log {self.path} could not be written: {len(self._pending)} record(s) lost at shutdown")
            self._pending.clear()
        self._close_fd()
        if self.mirror is not None:
            self.mirror.close()


def _append(fd: int, data: bytes) -> None:
    """Append `data` whole or not at all: a short write (disk full) is cut back off the file."""
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise


def _moved(path: Path, fd: int) -> bool:
    """Whether `path` no longer names the open file (moved away or removed, as logrotate does)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino)


def _repair_torn_tail(fd: int, path: Path) -> None:
    """Cut off a partial last line left by a crash mid-write, so new records start on a line of their own."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    keep = 0
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            keep = start + i + 1
            break
        pos = start
    os.ftruncate(fd, keep)
    _say(f"the request log {path} ended in a partial line (a crash mid-write): removed its {size - keep} byte(s)")


def _escape_line_breaks(encoded: bytes) -> bytes:
    """Escape the characters some readers split lines at (see _LINE_BREAKS)."""
    for raw, escaped in _LINE_BREAKS:
        encoded = encoded.replace(raw, escaped)
    return encoded
