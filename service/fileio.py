"""Durable file writes: a temp name beside the target, fsync, rename, fsync the folder.

A reader (the server, a second download) sees either the old file or the whole new one.
Temp files are opened with the process umask rather than mkstemp's 0600, so a model
installed by one user stays readable by a service running as another.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry inside `path` durable."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temp file for `path`; on a clean exit it is synced and renamed over `path`.

    On an exception the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically and durably."""
    with atomic_file(path) as f:
        f.write(data)


def unique_path(root: Path, name: str) -> Path:
    """A fresh path root/<name>.<pid>.<random>, the pattern the sweep recognises."""
    while (path := root / f"{name}.{os.getpid()}.{secrets.token_hex(4)}").exists():
        pass
    return path


def install(work: Path, final: Path) -> None:
    """Rename the finished folder into place, moving any previous one aside first.

    The previous folder waits under a hidden name beside `work` (never a second visible
    model) and is deleted once the new one is in place.
    """
    fsync_dir(work)
    old = None
    if final.exists():
        old = unique_path(work.parent, f".{final.name}")
        os.rename(final, old)
    os.rename(work, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_orphans(root: Path, name: re.Pattern[str]) -> None:
    """Remove the folders in `root` that `name` matches whose process (its `pid` group) has ended:
    what a killed process left. Only this user's folders, never a link."""
    if os.name != "posix":  # os.kill(pid, 0) is only a liveness probe on POSIX
        return
    for entry in root.iterdir():
        match = name.fullmatch(entry.name)
        if not match:
            continue
        try:
            st = entry.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not process_running(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def process_running(pid: int) -> bool:
    """Whether a process with this id exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
