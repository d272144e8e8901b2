"""Durable writes: whole file or old file, never a stray temp, readable by other users."""

import os
import stat
from pathlib import Path

import pytest

from service.fileio import atomic_file, write_atomic
from service.tokenizer.bpe import GPT2Tokenizer, bytes_to_unicode


def test_write_atomic_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old model")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half a new mo")
        raise RuntimeError("conversion failed")
    assert target.read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_files_follow_the_umask_not_0600(tmp_path: Path) -> None:
    # a model installed by one user must stay readable by a service running as another
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", b"{}")
        vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
        GPT2Tokenizer(vocab | {"ab": 256}, ["a b"]).save(tmp_path / "tokenizer.json")
    finally:
        os.umask(old)
    for name in ("a.json", "tokenizer.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
