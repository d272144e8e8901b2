"""Install a local model into the models dir, for machines without the Hub.

Accepted: a GGML gpt2 `.bin` (installed as is, with a tokenizer found beside it), a GPT-2 GGUF
file (converted, see formats/gguf_convert.py) or a Hugging Face GPT-2 checkpoint folder
(converted at a quant). The model is assembled under models/.partial/, verified against its
manifest (sha256) and renamed into models/<name> only once complete, as `download` does.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from service.errors import one_line
from service.fileio import install, write_atomic
from service.formats import convert
from service.formats.ggml.format import FTYPES, MAGIC, read_gpt2
from service.formats.gguf import MAGIC as GGUF_MAGIC
from service.formats.gguf_convert import convert_gguf
from service.formats.manifest import (
    HParams,
    Manifest,
    Source,
    read_manifest,
    utc_now,
    verify,
    write_manifest,
)
from service.hub.store import copy_hashed, human_size, work_folder
from service.tokenizer.files import tokenizer_json_bytes

ACCEPTED = "a GGML gpt2 .bin file, a GPT-2 .gguf file, or a Hugging Face GPT-2 checkpoint folder"
_NAME = re.compile(r"[^a-z0-9_.-]+")


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def model_name(path: Path, kind: str, quant: str) -> str:
    """The models/<name> a local model is installed as: its file or folder name, lowercased."""
    stem = path.name if kind == "checkpoint" else path.stem
    name = _NAME.sub("-", stem.lower()).strip("-.") or "model"
    return f"{name}-{quant}" if kind == "checkpoint" else name


def kind_of(path: Path) -> str:
    """"checkpoint", "gguf" or "ggml"; ValueError naming what `path` is otherwise."""
    if path.is_dir():
        return "checkpoint"
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == GGUF_MAGIC:
        return "gguf"
    if len(head) == 4 and int.from_bytes(head, "little") == MAGIC:
        return "ggml"
    raise ValueError(f"{path} is not a model MiniVault can import (it starts with bytes {head.hex() or 'none'}); "
                     f"accepted: {ACCEPTED}")


def import_model(
    path: str | os.PathLike[str],
    *,
    models_dir: str | os.PathLike[str],
    name: str | None = None,
    quant: str = "q4_0",
    force: bool = False,
    keep_gguf: bool = True,
    say: Callable[[str], None] = _stderr,
) -> Path:
    """Install the local model at `path` into `models_dir`; return the installed GGML file's path.

    `quant` applies to a checkpoint folder only (files keep their types). A GGUF file is also kept
    as model.gguf beside the GGML copy (llama.cpp runs it as it is) unless `keep_gguf` is False. An
    existing models/<name> is replaced only with `force`. ValueError (one line) when refused.
    """
    src, models_dir = Path(path), Path(models_dir)
    kind = kind_of(src)
    if quant not in FTYPES:
        raise ValueError(f"unknown quant {quant!r}; choose one of {', '.join(FTYPES)}")
    name = name or model_name(src, kind, quant)
    if "/" in name or name.startswith("."):
        raise ValueError(f"model name {name!r} must be a plain folder name")
    final = models_dir / name
    if final.exists() and not force:
        raise ValueError(f"{final} already exists; pass --force to replace it, or --name to choose another name")
    work = work_folder(models_dir, name)
    try:
        if kind == "gguf":
            say(f"Converting GGUF {src} to GGML")
            manifest = convert_gguf(src, work, name=name)
            report_gguf(manifest, say)
            if keep_gguf:  # the llama.cpp engine's file: the original, not a copy of the GGML one
                shutil.copyfile(src, work / "model.gguf")
                say(f"Kept the original as model.gguf for the llama.cpp engine ({human_size(src.stat().st_size)})")
        elif kind == "checkpoint":
            say(f"Converting the GPT-2 checkpoint {src} to GGML {quant}")
            manifest = convert.convert_checkpoint(src, work, quant, name=name)
        else:
            manifest = _copy_ggml(src, work, name, say)
        model = work / manifest.file
        verify(model, manifest, full=True)
        read_gpt2(model)  # the header and every tensor are where ctransformers will look
        install(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model = final / manifest.file
    say(f"Installed {model} ({human_size(manifest.size)}, {manifest.quant}, sha256 {manifest.sha256[:16]}…)")
    return model


def report_gguf(manifest: Manifest, say: Callable[[str], None]) -> None:
    """Say which types the GGUF held and which tensors had to be requantised."""
    held = ", ".join(f"{n} {t}" for t, n in (manifest.source_types or {}).items())
    say(f"{manifest.source_file}: GPT-2, {manifest.hparams.n_layer} layers, n_embd {manifest.hparams.n_embd}; "
        f"tensors: {held}")
    changes = manifest.requantised or []
    if not changes:
        say(f"weight matrices copied block for block as {manifest.quant}")
        return
    worst = max(changes, key=lambda c: c.rms_error)
    kinds = ", ".join(sorted({c.source_type for c in changes}))
    say(f"note: ctransformers' gpt2 loader takes one type for all weight matrices; requantised "
        f"{len(changes)} {kinds} tensors to {manifest.quant} (relative RMS error up to {worst.rms_error:.2%}, "
        f"{worst.tensor}); the manifest lists each")


def _copy_ggml(src: Path, work: Path, name: str, say: Callable[[str], None]) -> Manifest:
    """A GGML gpt2 file installed as is, with the tokenizer beside it if there is one."""
    try:
        ggml = read_gpt2(src)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{src} is not a usable GGML gpt2 file: {one_line(e)}") from None
    hp = ggml.hparams
    say(f"{src}: GGML gpt2, {hp.ftype}, {hp.n_layer} layers, n_embd {hp.n_embd}, vocab {hp.n_vocab}")
    size, sha256 = copy_hashed(src, work / convert.MODEL_FILE)
    tokenizer = None
    try:
        own = read_manifest(src)
    except ValueError:
        own = None
    beside = src.parent
    if any((beside / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        try:
            write_atomic(work / convert.TOKENIZER_FILE, tokenizer_json_bytes(beside))
            tokenizer = convert.TOKENIZER_FILE
        except (ValueError, OSError) as e:
            say(f"note: skipping the tokenizer beside {src.name}: {one_line(e)}")
    if tokenizer is None:
        say(f"note: no tokenizer.json beside {src.name}; the server will fall back to GGML's greedy tokenizer")
    source = own.source if own else Source(kind="local")
    manifest = Manifest(
        name=name, file=convert.MODEL_FILE, source=source, quant=hp.ftype, hparams=HParams.of(hp),
        parameters=sum(math.prod(t.shape) for t in ggml.tensors.values()), size=size, sha256=sha256,
        created=utc_now(), tokenizer=tokenizer,
    )
    write_manifest(work, manifest)
    return manifest
