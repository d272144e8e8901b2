"""Download GPT-2 models from the Hugging Face Hub into the models dir.

Three kinds of repo are accepted: one holding a ready GGML gpt2 `.bin` file, installed
as is; one holding GPT-2 GGUF files (one chosen by --quant), converted to GGML; and a
GPT-2-family checkpoint (config.json with model_type gpt2 + model.safetensors),
converted locally to GGML. Files come through huggingface_hub's
cache (so HF_HUB_OFFLINE works from it); the model is assembled in
models/.partial/ and renamed into models/<name> only once complete.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

from service.config import NO_HUB_ROUTES
from service.errors import one_line
from service.fileio import install, write_atomic
from service.formats import convert
from service.formats.ggml.format import FTYPES, read_gpt2
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
from service.hub import repoplan
from service.hub.client import (
    Hub,
    HubError,
    Listing,
    Unreachable,
    cached_listing,
    names_commit,
    remote_listing,
)
from service.hub.importer import report_gguf
from service.hub.store import (
    ModelEntry,
    copy_hashed,
    human_size,
    list_models,
    work_folder,
)
from service.tokenizer.files import tokenizer_json_bytes

__all__ = ["DEFAULT_QUANT", "DEFAULT_REPO", "HubError", "ModelEntry", "download", "list_models"]

DEFAULT_REPO = "distilgpt2"
DEFAULT_QUANT = "q4_0"

_COMMIT = re.compile(r"[0-9a-f]{40}")
# the quant names GGUF file names carry: Q4_K_M, Q8_0, IQ2_XS, BF16, ...
_GGUF_QUANT = re.compile(r"(?i)i?q\d(_[a-z0-9]+)*|bf16|f16|f32")


def say(message: str) -> None:
    """One progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


# --- download -------------------------------------------------------------------------------


def download(
    repo_id: str = DEFAULT_REPO,
    *,
    models_dir: str | os.PathLike[str],
    quant: str | None = None,
    revision: str | None = None,
    force: bool = False,
) -> Path:
    """Install a model from the Hub into `models_dir` and return the path of its GGML file.

    A GGML repo lands in models/<repo name>/, a converted checkpoint in
    models/<repo name lowercased>-<quant>/ (model.bin, tokenizer.json, manifest.json).
    A model already installed from the same repo, revision and quant that still
    verifies is left alone unless `force`. Honours HF_TOKEN, HF_ENDPOINT,
    HF_HUB_OFFLINE and HF_HOME / HF_HUB_CACHE. Raises HubError (one line) when the
    Hub can't be used or the repo holds nothing MiniVault can run.
    """
    if quant is not None and quant.lower() not in FTYPES and not _GGUF_QUANT.fullmatch(quant):
        raise HubError(f"unknown quant {quant!r}; choose one of {', '.join(FTYPES)} "
                       "(or, for a GGUF repo, the quant its file names carry, e.g. Q4_K_M)")
    chosen, quant = quant, (quant or DEFAULT_QUANT).lower()
    models_dir = Path(models_dir)
    hub = Hub.from_env()
    installed = None if force else _installed(models_dir, repo_id, quant)
    if installed and revision and names_commit(revision, installed.manifest.source.revision) \
            and _fits(installed.manifest, quant, None):
        return _keep(installed)

    listing = _resolve(hub, repo_id, revision, keep_if_unreachable=installed is not None and revision is None)
    if listing is None:
        return _keep(installed)
    if installed and listing.commit == installed.manifest.source.revision \
            and _fits(installed.manifest, quant, listing.files):
        return _keep(installed)
    try:
        plan = repoplan.plan(repo_id, set(listing.files), _model_type(hub, repo_id, listing), chosen)
    except repoplan.Refused:
        if not listing.local:
            raise
        shown = ", ".join(sorted(listing.files)[:5]) or "nothing"
        raise HubError(f"{listing.note}, and the local cache holds only part of {repo_id}@{revision or 'main'} "
                       f"({shown}); connect to the Hub to fetch the rest") from None
    base = repo_id.rsplit("/", 1)[-1]
    name = {"checkpoint": f"{base.lower()}-{quant}", "ggml": base,
            "gguf": f"{base.lower()}-{(repoplan.gguf_tag(plan.files[0]) or 'gguf').lower()}"}[plan.kind]
    final = models_dir / name
    _check_target(final, repo_id, force)
    work = work_folder(models_dir, name)
    try:
        if plan.kind == "checkpoint":
            manifest = _fetch_checkpoint(hub, repo_id, listing, plan, work, name, quant)
        elif plan.kind == "gguf":
            manifest = _fetch_gguf(hub, repo_id, listing, plan.files[0], work, name)
        else:
            manifest = _fetch_ggml(hub, repo_id, listing, plan, work, name, quant)
        install(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model = final / "model.bin"
    say(f"Installed {model} ({human_size(manifest.size)}, {manifest.quant}, sha256 {manifest.sha256[:16]}…)")
    return model


def _resolve(hub: Hub, repo_id: str, revision: str | None, *, keep_if_unreachable: bool) -> Listing | None:
    """The repo's commit and files: from the Hub, else from the local cache.

    None means the Hub can't be asked and the installed copy should be kept.
    """
    where = "the local cache (HF_HUB_OFFLINE is set)" if hub.offline else hub.endpoint
    say(f"Resolving {repo_id}@{revision or 'main'} on {where}")
    try:
        return remote_listing(hub, repo_id, revision)
    except Unreachable as why:
        if keep_if_unreachable:
            say(f"{why}; keeping the installed copy")
            return None
        listing = cached_listing(hub, repo_id, revision, note=str(why))
        if listing is None:
            raise HubError(f"{why}, and {repo_id}@{revision or 'main'} is not in the local cache "
                           f"({hub.cache_dir}); {NO_HUB_ROUTES}") from None
        if not hub.offline:
            say(f"{why}; using the local cache")
        return listing


class _Installed(NamedTuple):
    """A model already in the models dir, with its manifest."""

    model: Path
    manifest: Manifest


def _installed(models_dir: Path, repo_id: str, quant: str) -> _Installed | None:
    """A verified install of `repo_id` at `quant` (or a GGML install of it), or None."""
    base = repo_id.rsplit("/", 1)[-1]
    for name in (f"{base.lower()}-{quant}", base):
        model = models_dir / name / "model.bin"
        if not model.is_file():
            continue
        try:
            manifest = read_manifest(model)
        except (OSError, ValueError):
            continue
        if manifest is None or manifest.source.repo != repo_id:
            continue
        if manifest.source.kind != "ggml" and manifest.quant != quant:
            continue
        try:
            verify(model, manifest, full=True)
        except (OSError, ValueError) as e:
            say(f"{model} no longer matches its manifest ({one_line(e)}); installing again")
            return None
        return _Installed(model, manifest)
    return None


def _fits(manifest: Manifest, quant: str, files: list[str] | None) -> bool:
    """Whether an install answers a request for `quant`.

    A GGML file is installed at whatever quant the repo ships, so another quant only
    calls for a new download when the repo has a file named for it.
    """
    if manifest.source.kind != "ggml" or manifest.quant == quant:
        return True
    return files is not None and not any(quant in f.lower() for f in repoplan.ggml_candidates(set(files), quant))


def _keep(installed: _Installed) -> Path:
    """Say the model is already there and return its path."""
    model, manifest = installed
    rev = (manifest.source.revision or "?")[:7]
    say(f"{model.parent.name} is already installed ({model}, {manifest.source.repo}@{rev}, {manifest.quant}); "
        "nothing to do (--force reinstalls)")
    return model


def _check_target(final: Path, repo_id: str, force: bool) -> None:
    """Refuse to replace a model that came from somewhere else, unless forced."""
    if not final.exists() or force:
        return
    if not final.is_dir():
        raise HubError(f"{final} exists and is not a model folder; move it away or pass --force")
    try:
        manifest = read_manifest(final / "model.bin")
    except (OSError, ValueError):
        manifest = None
    if manifest is None and not (final / "model.bin").exists():
        return
    if manifest is None or manifest.source.repo != repo_id:
        origin = "a model without a manifest" if manifest is None else f"a model from {manifest.source.repo}"
        raise HubError(f"{final} already holds {origin}; pass --force to replace it")


# --- fetching and assembling ----------------------------------------------------------------


def _fetch_checkpoint(hub: Hub, repo_id: str, listing: Listing, plan: repoplan.Plan, staging: Path, name: str,
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


def _fetch_gguf(hub: Hub, repo_id: str, listing: Listing, filename: str, staging: Path, name: str):
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


def _fetch_ggml(hub: Hub, repo_id: str, listing: Listing, plan: repoplan.Plan, staging: Path, name: str, quant: str):
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


def _model_type(hub: Hub, repo_id: str, listing: Listing) -> str | None:
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
