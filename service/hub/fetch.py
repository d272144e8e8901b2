"""Fetching a repo's files through huggingface_hub and assembling a model from them in a staging
folder (hub/download.py decides what to fetch and installs the result)."""

from __future__ import annotations

import glob
import json
import math
import re
import sys
from pathlib import Path

from service.errors import one_line
from service.fileio import write_atomic
from service.formats import convert
from service.formats.ggml.format import read_gpt2
from service.formats.gguf_convert import convert_gguf
from service.formats.manifest import HParams, Manifest, Source, utc_now, write_manifest
from service.hub import repoplan
from service.hub.client import Hub, HubError, Listing
from service.hub.importer import report_gguf
from service.hub.store import copy_hashed
from service.tokenizer.files import tokenizer_json_bytes

_COMMIT = re.compile(r"[0-9a-f]{40}")


def say(message: str) -> None:
    """One progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def fetch_checkpoint(hub: Hub, repo_id: str, listing: Listing, plan: repoplan.Plan, staging: Path, name: str,
                     quant: str):
    """Download the checkpoint's files and convert them into `staging`."""
    say(f"{repo_id}@{listing.commit[:7]} is a GPT-2 safetensors checkpoint; fetching {', '.join(plan.files)}")
    folder = hub.snapshot(repo_id, listing, plan.files)
    say(f"Converting to GGML {quant} into {name}")
    try:
        return convert.convert_checkpoint(folder, staging, quant, name=name, source_repo=repo_id,
                                          revision=_commit_of(folder, listing))
    except ValueError as e:
        raise HubError(f"{repo_id}: conversion failed: {one_line(e)}") from None


def fetch_gguf(hub: Hub, repo_id: str, listing: Listing, filename: str, staging: Path, name: str):
    """Download one GGUF file and convert it into `staging` (blocks copied, a mix requantised)."""
    say(f"{repo_id}@{listing.commit[:7]}: fetching {filename}")
    folder = hub.snapshot(repo_id, listing, [glob.escape(filename)])
    say(f"Converting GGUF {filename} to GGML into {name}")
    try:
        manifest = convert_gguf(folder / filename, staging, name=name, source_repo=repo_id,
                                revision=_commit_of(folder, listing))
    except ValueError as e:
        raise HubError(f"{repo_id} can't be used: {one_line(e).replace(str(folder) + '/', '')}") from None
    report_gguf(manifest, say)
    return manifest


def fetch_ggml(hub: Hub, repo_id: str, listing: Listing, plan: repoplan.Plan, staging: Path, name: str, quant: str):
    """Download the first candidate that really is a GGML gpt2 file, as is, into `staging`."""
    rejected = []
    for candidate in plan.files:
        say(f"{repo_id}@{listing.commit[:7]}: fetching {candidate}" +
            (f" (+ {', '.join(plan.tokenizer)})" if plan.tokenizer else ""))
        folder = hub.snapshot(repo_id, listing, [glob.escape(candidate), *plan.tokenizer])
        path = folder / candidate
        try:
            ggml = read_gpt2(path)
        except (ValueError, OSError, UnicodeDecodeError) as e:
            reason = one_line(e).replace(str(path), candidate)
            say(f"{candidate} is not a GGML gpt2 file: {reason}")
            rejected.append(f"{candidate} ({reason})")
            continue
        hp = ggml.hparams
        say(f"{candidate}: GGML gpt2, {hp.ftype}, {hp.n_layer} layers, n_embd {hp.n_embd}, vocab {hp.n_vocab}")
        if hp.ftype != quant:
            say(f"note: {repo_id} ships a ready {hp.ftype} GGML file, installed as is "
                "(--quant applies to converted checkpoints)")
        size, sha256 = copy_hashed(path, staging / "model.bin")
        tokenizer = _copy_tokenizer(folder, plan.tokenizer, staging)
        if tokenizer is None:
            say(f"note: no tokenizer.json for {name}; the server will fall back to GGML's greedy tokenizer")
        return _write_ggml_manifest(staging, name=name, repo_id=repo_id, revision=_commit_of(folder, listing),
                                    hp=hp, parameters=sum(math.prod(t.shape) for t in ggml.tensors.values()),
                                    size=size, sha256=sha256, tokenizer=tokenizer)
    raise HubError(f"{repo_id} can't be used: no .bin file is a GGML gpt2 file: {'; '.join(rejected)}. "
                   f"MiniVault accepts {repoplan.ACCEPTED}")


def _commit_of(folder: Path, listing: Listing) -> str:
    """The commit a snapshot folder holds (the branch may have moved since it was resolved)."""
    return folder.name if _COMMIT.fullmatch(folder.name) else listing.commit


def _write_ggml_manifest(staging: Path, *, name, repo_id, revision, hp, parameters, size, sha256, tokenizer):
    """Write the manifest of a GGML file installed as is."""
    manifest = Manifest(
        name=name, file="model.bin", source=Source(repo=repo_id, revision=revision, kind="ggml"), quant=hp.ftype,
        hparams=HParams.of(hp),
        parameters=parameters, size=size, sha256=sha256, created=utc_now(), tokenizer=tokenizer,
    )
    write_manifest(staging, manifest)
    return manifest


def _copy_tokenizer(folder: Path, files: list[str], staging: Path) -> str | None:
    """Install tokenizer.json (copied, or built from vocab.json + merges.txt) if the repo has a usable one."""
    if not files:
        return None
    try:
        data = tokenizer_json_bytes(folder)
    except (ValueError, OSError) as e:
        say(f"note: skipping the repo's tokenizer: {one_line(e)}")
        return None
    write_atomic(staging / "tokenizer.json", data)
    return "tokenizer.json"


def model_type(hub: Hub, repo_id: str, listing: Listing) -> str | None:
    """The model_type of the repo's config.json, if it has one."""
    if "config.json" not in listing.files:
        return None
    config = _read_json(hub.download_file(repo_id, "config.json", listing))
    return config.get("model_type") if isinstance(config, dict) else None


def _read_json(path: Path) -> object:
    """A JSON file's content, or None when unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
