"""Manifest: atomic write, read beside the model file, size and sha256 verification."""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import datetime, timezone

import msgspec
import pytest

from service.formats.manifest import (
    HParams,
    Manifest,
    Source,
    read_manifest,
    utc_now,
    verify,
    write_manifest,
)


def make(tmp_path, content: bytes = b"GGML model bytes", **fields) -> Manifest:
    (tmp_path / "model.bin").write_bytes(content)
    base = dict(
        name="tiny-q4_0", file="model.bin", source=Source(repo="org/tiny", revision="abc123", kind="converted"),
        quant="q4_0", hparams=HParams(n_vocab=268, n_ctx=64, n_embd=64, n_head=4, n_layer=2), parameters=1234,
        size=len(content), sha256=hashlib.sha256(content).hexdigest(), created=utc_now(), tokenizer="tokenizer.json",
    )  # fmt: skip
    return Manifest(**(base | fields))


def test_write_then_read_round_trips(tmp_path):
    manifest = make(tmp_path)
    path = write_manifest(tmp_path, manifest)
    assert path == tmp_path / "manifest.json"
    assert read_manifest(tmp_path / "model.bin") == manifest
    data = json.loads(path.read_text())
    assert data["source"] == {"repo": "org/tiny", "revision": "abc123", "kind": "converted"}
    assert data["hparams"]["n_embd"] == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "model.bin"]  # no temp file left
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by a service running as another user


def test_write_replaces_an_existing_manifest(tmp_path):
    write_manifest(tmp_path, make(tmp_path, name="old"))
    write_manifest(tmp_path, make(tmp_path, name="new"))
    assert read_manifest(tmp_path / "model.bin").name == "new"


def test_created_is_iso_utc():
    created = utc_now()
    assert created.endswith("Z")
    when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    assert when.tzinfo == timezone.utc
    assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 5


def test_no_manifest_or_one_for_another_file_reads_as_none(tmp_path):
    assert read_manifest(tmp_path / "model.bin") is None
    write_manifest(tmp_path, make(tmp_path, file="other.bin"))
    assert read_manifest(tmp_path / "model.bin") is None


@pytest.mark.parametrize(
    "content, message",
    [(b"{not json", "not valid JSON"), (b'{"name": "x"}', "invalid manifest"),
     (b'{"name": "x", "file": "model.bin", "source": {"kind": "stolen"}}', "invalid manifest")],
)  # fmt: skip
def test_damaged_manifest_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path / "model.bin")


def test_unknown_fields_from_a_newer_version_are_ignored(tmp_path):
    manifest = make(tmp_path)
    data = json.loads(msgspec.json.encode(manifest)) | {"license": "mit"}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(tmp_path / "model.bin") == manifest


def test_verify_accepts_the_file_it_describes(tmp_path):
    manifest = make(tmp_path)
    verify(tmp_path / "model.bin", manifest)
    verify(tmp_path / "model.bin", manifest, full=True)


def test_verify_catches_a_truncated_file(tmp_path):
    manifest = make(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"GGML model")
    with pytest.raises(ValueError, match="size is 10 bytes but the manifest says 16"):
        verify(tmp_path / "model.bin", manifest)


def test_full_verify_catches_same_size_corruption(tmp_path):
    manifest = make(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"GGML modal bytes")
    verify(tmp_path / "model.bin", manifest)  # the quick check only looks at the size
    with pytest.raises(ValueError, match="sha256 is [0-9a-f]{64} but the manifest says"):
        verify(tmp_path / "model.bin", manifest, full=True)


def test_verify_reports_a_missing_file(tmp_path):
    manifest = make(tmp_path)
    (tmp_path / "model.bin").unlink()
    with pytest.raises(ValueError, match="missing"):
        verify(tmp_path / "model.bin", manifest)
