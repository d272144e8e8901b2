"""The JSONL writer when things go wrong: fsync modes, an unwritable or full disk, rotation, a torn tail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from service.runtime.logbook import LogBook
from tests.support.server import read_log


def wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["off", "record", "50"])
def test_fsync_modes(tmp_path, mode):
    book = LogBook(tmp_path / "log.jsonl", fsync=mode)
    book.write({"i": 0})
    wait_for(lambda: book.written == 1)
    if mode == "record":
        assert book.fsyncs == 1  # synced before the writer takes the next record
    elif mode == "off":
        time.sleep(0.1)
        assert book.fsyncs == 0
    else:
        wait_for(lambda: book.fsyncs == 1)  # within the 50 ms window, with no further record to trigger it
        for i in range(2000):
            book.write({"i": i})
        wait_for(lambda: book.written == 2001)
        assert book.fsyncs < 50  # bounded by time, not by records
    book.close()
    assert len(read_log(tmp_path / "log.jsonl")) >= 1


def test_an_unwritable_log_keeps_records_and_writes_them_in_order_once_it_works(tmp_path, capfd):
    blocked = tmp_path / "logs"
    blocked.write_text("a file where the log's folder should be")
    book = LogBook(blocked / "log.jsonl", buffer=100)
    for i in range(30):
        book.write({"i": i})
    wait_for(lambda: book.buffered == 30 and book.write_errors >= 1)
    blocked.unlink()  # the folder can be made now
    wait_for(lambda: book.written == 30, timeout=5)
    book.write({"i": 30})
    book.close()
    assert [r["i"] for r in read_log(blocked / "log.jsonl")] == list(range(31))
    assert book.dropped == 0
    err = capfd.readouterr().err
    assert err.count("could not write the request log") == 1  # once per outage, not once per retry
    assert "writable again: wrote 30 waiting record(s)" in err


def test_only_an_overflowing_buffer_drops_records_and_says_how_many(tmp_path, capfd):
    blocked = tmp_path / "logs"
    blocked.write_text("not a folder")
    book = LogBook(blocked / "log.jsonl", buffer=5)
    for i in range(12):
        book.write({"i": i})
    wait_for(lambda: book.dropped == 7)
    blocked.unlink()
    wait_for(lambda: book.written == 5)
    book.close()
    assert [r["i"] for r in read_log(blocked / "log.jsonl")] == [0, 1, 2, 3, 4]
    err = capfd.readouterr().err
    assert "buffer is full (5 records" in err and "7 record(s) were dropped" in err


@pytest.fixture
def small_fs(tmp_path) -> Path:
    """A 256 KiB tmpfs mounted for the test (needs root and mount rights; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_leaves_only_whole_lines_and_the_records_follow_once_there_is_room(small_fs, capfd):
    log = small_fs / "log.jsonl"
    book = LogBook(log, buffer=1000)
    text = "x" * 3000
    for i in range(200):  # ~600 KB: far more than fits
        book.write({"i": i, "text": text})
    wait_for(lambda: book.write_errors >= 1 and book.buffered > 0)
    written_during_outage = read_log(log)  # every line there parses: a short write was cut back off
    assert written_during_outage == [] or [r["i"] for r in written_during_outage] == list(range(len(written_during_outage)))
    assert log.read_bytes().endswith(b"\n") or log.stat().st_size == 0
    # make room: the operator moves the log to another disk; the writer reopens at the path
    shutil.move(str(log), str(small_fs.parent / "archived.jsonl"))
    wait_for(lambda: book.buffered < 200 - len(written_during_outage), timeout=5)
    book.close()
    parts = read_log(small_fs.parent / "archived.jsonl") + read_log(log)
    kept = [r["i"] for r in parts]
    assert kept == sorted(kept) and len(set(kept)) == len(kept)  # in order, none twice
    assert len(kept) + book.dropped + book.buffered == 200
    assert "could not write the request log" in capfd.readouterr().err


def test_a_log_moved_away_is_reopened_at_its_path(tmp_path):
    log = tmp_path / "log.jsonl"
    book = LogBook(log)
    book.write({"i": 0})
    wait_for(lambda: book.written == 1)
    log.rename(tmp_path / "log.jsonl.1")  # logrotate's default: rename, then a new file at the path
    book.write({"i": 1})
    wait_for(lambda: book.written == 2)
    book.close()
    assert read_log(tmp_path / "log.jsonl.1") == [{"i": 0}]
    assert read_log(log) == [{"i": 1}]
    assert book.reopens == 2


def test_reopen_opens_the_path_afresh(tmp_path):
    log = tmp_path / "log.jsonl"
    book = LogBook(log)
    book.write({"i": 0})
    wait_for(lambda: book.written == 1)
    book.reopen()
    book.write({"i": 1})
    wait_for(lambda: book.written == 2)
    book.close()
    assert book.reopens == 2 and read_log(log) == [{"i": 0}, {"i": 1}]


def test_a_partial_last_line_from_a_crash_is_cut_off_before_appending(tmp_path, capfd):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"i": 0}\n{"i": 1, "text": "torn')
    book = LogBook(log)
    book.write({"i": 2})
    book.close()
    assert [json.loads(line) for line in log.read_text().splitlines()] == [{"i": 0}, {"i": 2}]
    assert "ended in a partial line" in capfd.readouterr().err
