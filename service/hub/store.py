"""The models dir: atomic installs of model folders, and what is installed.

A model folder is assembled under models/.partial/<name>.<pid>.<random>/ and renamed
into models/<name> only when complete, so a killed download never leaves a loadable
half model; folders of processes that are gone are swept on the next download.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import msgspec

from service.errors import one_line
from service.fileio import remove_orphans, unique_path
from service.formats.ggml.format import read_gpt2
from service.formats.manifest import file_sha256, read_manifest

PARTIAL_DIR = ".partial"
# <name>.<pid>.<random>, or the converter's .<that>.<random>.partial working folder beside it
_WORK_NAME = re.compile(r"\.?.+\.(?P<pid>\d+)\.[0-9a-f]{8}(\.[0-9a-f]{8}\.partial)?")


class ModelEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One installed model, as `minivault models` lists it."""

    name: str
    path: str  # the GGML file
    quant: str
    size: int
    source: str | None  # "repo@commit (kind)" from the manifest; None for a bare file
    sha256: str
    problem: str | None = None  # why it may not load, when something looks wrong


def work_folder(models_dir: Path, name: str) -> Path:
    """A fresh folder under models/.partial/, after sweeping ones left by dead processes."""
    root = models_dir / PARTIAL_DIR
    root.mkdir(parents=True, exist_ok=True)
    remove_orphans(root, _WORK_NAME)  # left by killed downloads
    work = unique_path(root, name)
    work.mkdir()  # not mkdtemp: its 0700 mode would hide the model from a service running as another user
    return work


def copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    """Copy a file, fsync it, and return (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return size, digest.hexdigest()


def human_size(size: int) -> str:
    """A byte count in B, KB, MB or GB."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def list_models(models_dir: str | os.PathLike[str]) -> list[ModelEntry]:
    """Every model in `models_dir`: models/<name>/model.bin folders and bare *.bin files.

    Facts come from the manifest when there is one; a bare file's quant is read from
    its GGML header and its sha256 computed.
    """
    root = Path(models_dir)
    if not root.is_dir():
        return []
    entries = [_bare_entry(p, p.stem) for p in root.glob("*.bin") if p.is_file()]
    for folder in root.iterdir():
        model = folder / "model.bin"
        if folder.name.startswith(".") or not folder.is_dir() or not model.is_file():
            continue
        entries.append(_managed_entry(model, folder.name))
    return sorted(entries, key=lambda e: e.name)


def _managed_entry(model: Path, name: str) -> ModelEntry:
    """A models/<name>/model.bin entry, from its manifest when it has one."""
    try:
        manifest = read_manifest(model)
    except (OSError, ValueError, msgspec.MsgspecError) as e:
        entry = _bare_entry(model, name)
        return msgspec.structs.replace(entry, problem=entry.problem or f"unreadable manifest: {one_line(e)}")
    if manifest is None:
        return _bare_entry(model, name)
    size = model.stat().st_size
    src = manifest.source
    origin = f"{src.repo}@{(src.revision or '?')[:7]}" if src.repo else "local"
    return ModelEntry(
        name=name, path=str(model), quant=manifest.quant, size=size,
        source=f"{origin} ({src.kind})", sha256=manifest.sha256,
        problem=None if size == manifest.size else f"size {size} differs from the manifest's {manifest.size}",
    )


def _bare_entry(model: Path, name: str) -> ModelEntry:
    """An entry for a file without manifest: quant from its header, sha256 computed."""
    problem = None
    try:
        quant = read_gpt2(model).hparams.ftype
    except (ValueError, OSError, UnicodeDecodeError) as e:
        quant, problem = "?", one_line(e).replace(str(model), model.name)
    return ModelEntry(name=name, path=str(model), quant=quant, size=model.stat().st_size, source=None,
                      sha256=file_sha256(model), problem=problem)
