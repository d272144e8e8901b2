"""Nothing left in the temp directory: ctransformers' private library copies live in a directory
that whoever made it removes, after a load that fails as after a close; one that a killed process
left (named by its process id) is removed by the next that makes one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from service.engine.ctransformers_backend import Engine, make_libdir
from service.engine.sampling import SamplingParams
from service.runtime.replay import LocalModel
from service.runtime.runtime import Runtime
from tests.support.server import LiveServer


@pytest.fixture
def tmpdir_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile's directory, for this test only: what is made there is this test's."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def left(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_an_engine_removes_the_directory_it_made_at_close(tiny_model: Path, tmpdir_root: Path) -> None:
    engine = Engine(tiny_model, threads=1)
    assert len(left(tmpdir_root)) == 1
    "".join(engine.generate(engine.tokenizer.encode("Hi"), SamplingParams(max_new_tokens=2)))
    engine.close()
    assert left(tmpdir_root) == []


def test_a_failed_load_leaves_no_directory(tiny_model: Path, tmp_path: Path, tmpdir_root: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated"):
        Engine(bad, threads=1)
    with pytest.raises(ValueError):
        LocalModel(bad)
    assert left(tmpdir_root) == []


def test_a_runtime_that_cannot_start_leaves_no_directory(settings_for, tmp_path: Path, tmpdir_root: Path) -> None:
    with pytest.raises(Exception, match="model"):
        Runtime(settings_for(tmp_path / "missing.bin"))
    assert left(tmpdir_root) == []


def test_a_runtime_makes_its_directory_at_the_first_ggml_load_and_removes_it_at_shutdown(
        settings_for, tiny_model: Path, tmpdir_root: Path) -> None:
    async def main() -> tuple[list[str], list[str]]:
        runtime = Runtime(settings_for(tiny_model))
        before = left(tmpdir_root)  # an app made but never started, or serving llama.cpp only: none
        async with runtime.serving(None):
            during = left(tmpdir_root)
        await runtime.shutdown()
        return before, during

    before, during = asyncio.run(main())
    assert before == [] and len(during) == 1 and during[0].startswith(f"minivault-lib-{os.getpid()}-")
    assert left(tmpdir_root) == []


def test_directories_of_processes_that_ended_are_removed_by_the_next_one(tmpdir_root: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    orphan = tmpdir_root / f"minivault-lib-{ended.stdout.strip()}-abc123"
    orphan.mkdir()
    (orphan / "0-libctransformers.so").write_bytes(b"x")
    live = tmpdir_root / f"minivault-lib-{os.getpid()}-def456"  # a running process's
    live.mkdir()
    unnamed = tmpdir_root / "minivault-lib-q9z8y7"  # whose process no name tells
    unnamed.mkdir()
    target = tmpdir_root / "elsewhere"
    target.mkdir()
    link = tmpdir_root / f"minivault-lib-{ended.stdout.strip()}-link"
    link.symlink_to(target)
    made = make_libdir()
    assert not orphan.exists() and live.is_dir() and unnamed.is_dir() and target.is_dir() and link.is_symlink()
    assert made.is_dir() and made.name.startswith(f"minivault-lib-{os.getpid()}-")


def test_a_killed_servers_directory_is_removed_when_the_next_server_starts(tiny_model: Path, tmp_path: Path,
                                                                           tmpdir_root: Path) -> None:
    server = LiveServer(tiny_model, tmp_path / "log.jsonl", TMPDIR=str(tmpdir_root))
    try:
        (its,) = left(tmpdir_root)  # the preloaded GGML model's library copy
        assert its.startswith(f"minivault-lib-{server.proc.pid}-")
    finally:
        server.proc.send_signal(signal.SIGKILL)
        server.wait_stopped()
    assert left(tmpdir_root) == [its]  # killed: it could not remove it
    second = LiveServer(tiny_model, tmp_path / "log2.jsonl", TMPDIR=str(tmpdir_root))
    try:
        (now,) = left(tmpdir_root)
        assert now != its and now.startswith(f"minivault-lib-{second.proc.pid}-")
    finally:
        assert second.stop() == 0
    assert left(tmpdir_root) == []
