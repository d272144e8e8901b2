"""Nothing left in the temp directory: ctransformers' private library copies live in a directory
that whoever made it removes, after a load that fails as after a close."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from service.engine.ctransformers_backend import Engine
from service.engine.sampling import SamplingParams
from service.runtime.replay import LocalModel
from service.runtime.runtime import Runtime


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


def test_a_runtime_removes_its_directory_at_shutdown(settings_for, tiny_model: Path, tmpdir_root: Path) -> None:
    async def main() -> list[str]:
        runtime = Runtime(settings_for(tiny_model))
        during = left(tmpdir_root)
        await runtime.shutdown()
        return during

    assert len(asyncio.run(main())) == 1
    assert left(tmpdir_root) == []

