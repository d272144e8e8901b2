"""Download GPT-2 models from the Hugging Face Hub into the models dir.

Three kinds of repo are accepted: one holding a ready GGML gpt2 `.bin` file, installed
as is; one holding GPT-2 GGUF files (one chosen by --quant), converted to GGML; and a
GPT-2-family checkpoint (config.json with model_type gpt2 + model.safetensors),
converted locally to GGML. Files come through huggingface_hub's
cache (so HF_HUB_OFFLINE works from it); the model is assembled in
models/.partial/ and renamed into models/<name> only once complete.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

from service.config import NO_HUB_ROUTES
from service.errors import one_line
from service.fileio import install
from service.formats.ggml.format import FTYPES
from service.formats.manifest import Manifest, read_manifest, verify
from service.hub import fetch, repoplan
from service.hub.client import (
    Hub,
    HubError,
    Listing,
    Unreachable,
    cached_listing,
    names_commit,
    remote_listing,
)
from service.hub.fetch import say
from service.hub.store import ModelEntry, human_size, list_models, work_folder

__all__ = ["DEFAULT_QUANT", "DEFAULT_REPO", "HubError", "ModelEntry", "download", "list_models"]

DEFAULT_REPO = "distilgpt2"
DEFAULT_QUANT = "q4_0"

# the quant names GGUF file names carry: Q4_K_M, Q8_0, IQ2_XS, BF16, ...
_GGUF_QUANT = re.compile(r"(?i)i?q\d(_[a-z0-9]+)*|bf16|f16|f32")




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
        plan = repoplan.plan(repo_id, set(listing.files), fetch.model_type(hub, repo_id, listing), chosen)
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
            manifest = fetch.fetch_checkpoint(hub, repo_id, listing, plan, work, name, quant)
        elif plan.kind == "gguf":
            manifest = fetch.fetch_gguf(hub, repo_id, listing, plan.files[0], work, name)
        else:
            manifest = fetch.fetch_ggml(hub, repo_id, listing, plan, work, name, quant)
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
