"""The manifest: what a model file is, where it came from, and how to check it is intact.

A model folder holds model.bin (GGML), tokenizer.json and manifest.json; the manifest
always sits beside the model file it describes.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from service.fileio import write_atomic

if TYPE_CHECKING:
    from service.formats.ggml.format import HParams as GGMLHParams

MANIFEST_NAME = "manifest.json"

SourceKind = Literal["converted", "ggml", "local", "gguf"]


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """Where the model came from: a Hub repo and revision, or a local checkpoint (repo None).

    kind: "converted" (made from a Hugging Face checkpoint), "ggml" (a GGML file fetched
    as is), "local" (a file that was already on disk) or "gguf" (converted from a GGUF file).
    """

    repo: str | None = None
    revision: str | None = None
    kind: SourceKind = "local"


class HParams(msgspec.Struct, frozen=True, kw_only=True):
    """GPT-2 shape, as in the GGML header."""

    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int

    @classmethod
    def of(cls, hp: GGMLHParams) -> HParams:
        """The shape of a GGML header's hyper-parameters."""
        return cls(n_vocab=hp.n_vocab, n_ctx=hp.n_ctx, n_embd=hp.n_embd, n_head=hp.n_head, n_layer=hp.n_layer)


class Requantised(msgspec.Struct, frozen=True, kw_only=True):
    """A tensor a GGUF held in another type than the file's one, requantised at import."""

    tensor: str  # its GGUF name
    source_type: str
    type: str
    rms_error: float  # RMS(new - old) / RMS(old), over the tensor's values


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """Identity and integrity record of one installed model file.

    `file` and `tokenizer` are file names relative to the manifest's folder;
    `quant` is the GGML ftype name (f32, f16, q8_0, q5_1, q5_0, q4_1, q4_0);
    `parameters` counts distinct weights (a tied lm_head is not counted twice);
    `size` is the model file's size in bytes and `sha256` its hex digest;
    `created` is an ISO 8601 UTC timestamp.
    """

    name: str
    file: str
    source: Source
    quant: str
    hparams: HParams
    parameters: int
    size: int
    sha256: str
    created: str
    tokenizer: str | None = None
    # for a model converted from a GGUF file: that file, its sha256, {ggml type: tensor count} it
    # held, and the tensors that had to be requantised to the one type ctransformers loads
    source_file: str | None = None
    source_sha256: str | None = None
    source_types: dict[str, int] | None = None
    requantised: list[Requantised] | None = None


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string, e.g. 2024-05-01T12:00:00Z."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def manifest_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the manifest of a model file lives: manifest.json beside it."""
    return Path(model_path).with_name(MANIFEST_NAME)


def write_manifest(model_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write `model_dir`/manifest.json atomically (temp file, fsync, rename); return its path."""
    path = Path(model_dir) / MANIFEST_NAME
    data = msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"
    write_atomic(path, data)
    return path


def read_manifest(model_path: str | os.PathLike[str]) -> Manifest | None:
    """The manifest beside a model file, or None if there is none or it names another file.

    Raises ValueError if manifest.json exists but is not a valid manifest.
    """
    path = manifest_path(model_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{path}: invalid manifest: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path}: manifest is not valid JSON: {exc}") from None
    if manifest.file != Path(model_path).name:
        return None
    return manifest


def verify(model_path: str | os.PathLike[str], manifest: Manifest, full: bool = False) -> None:
    """Check a model file against its manifest: size always, sha256 too when `full`.

    The size check is instant and catches truncated or partly written files; the full
    check reads the whole file. Raises ValueError saying what differs.
    """
    path = Path(model_path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ValueError(f"{path}: model file is missing (manifest {manifest.name!r} expects it)") from None
    if size != manifest.size:
        raise ValueError(
            f"{path}: size is {size} bytes but the manifest says {manifest.size}; "
            "the file is incomplete or was replaced"
        )
    if full:
        digest = file_sha256(path)
        if digest != manifest.sha256.lower():
            raise ValueError(
                f"{path}: sha256 is {digest} but the manifest says {manifest.sha256}; the file is corrupt or was replaced"
            )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
