"""huggingface_hub access for `minivault download`: settings, resolution, errors.

Reads the HF_* environment at call time, resolves a repo revision to a commit and
its file list (from the Hub, or from the local cache when offline or unreachable),
and turns huggingface_hub's exceptions into one-line HubErrors.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from huggingface_hub import HfApi, hf_hub_download, scan_cache_dir, snapshot_download
from huggingface_hub import utils as hf_utils

from service.errors import one_line


class HubError(Exception):
    """The Hub can't give us a usable model; the message is one line for the user."""


class Unreachable(Exception):
    """The Hub can't be asked right now (offline mode, or no connection)."""


_TRUE = {"1", "on", "yes", "true"}
# The HTTP library huggingface_hub uses differs across its versions; take whichever it loaded.
_NETWORK_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(sys.modules[mod], attr)
    for mod, attr in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException"))
    if mod in sys.modules and hasattr(sys.modules[mod], attr)
) + (hf_utils.OfflineModeIsEnabled,)


@dataclass(frozen=True)
class Hub:
    """Where and how to reach the Hub, read from the environment at call time.

    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once at import;
    reading them here and passing them explicitly makes a later change count.
    """

    endpoint: str
    token: str | None
    cache_dir: Path
    offline: bool

    @classmethod
    def from_env(cls) -> "Hub":
        """The settings as the environment has them now."""
        env = os.environ
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
            token=env.get("HF_TOKEN") or None,  # None lets huggingface_hub use a saved login
            cache_dir=Path(os.path.expandvars(cache)).expanduser(),
            offline=(env.get("HF_HUB_OFFLINE") or "").strip().lower() in _TRUE,
        )

    def _common(self, listing: "Listing") -> dict:
        """Arguments every huggingface_hub download call takes."""
        return dict(revision=listing.revision, cache_dir=self.cache_dir, endpoint=self.endpoint,
                    token=self.token, local_files_only=listing.local, library_name="minivault")

    def download_file(self, repo_id: str, filename: str, listing: "Listing") -> Path:
        """One file of the repo, through the cache."""
        with _hub_errors(self, repo_id, listing):
            return Path(hf_hub_download(repo_id, filename, **self._common(listing)))

    def snapshot(self, repo_id: str, listing: "Listing", patterns: list[str]) -> Path:
        """The repo files matching `patterns`, through the cache; returns the snapshot folder."""
        with _hub_errors(self, repo_id, listing):
            return Path(snapshot_download(repo_id, allow_patterns=patterns, **self._common(listing)))


@dataclass(frozen=True)
class Listing:
    """A repo at one commit: its files, and whether they come from the local cache only."""

    commit: str
    files: list[str]
    revision: str | None  # what to ask huggingface_hub for (a name it can find in refs/)
    local: bool
    note: str = ""  # why the Hub wasn't asked, for a local listing


def remote_listing(hub: Hub, repo_id: str, revision: str | None) -> Listing:
    """Resolve the revision and list the repo's files on the Hub; Unreachable if it can't be asked."""
    if hub.offline:
        raise Unreachable("HF_HUB_OFFLINE is set")
    api = HfApi(endpoint=hub.endpoint, token=hub.token, library_name="minivault")
    listing = Listing("", [], revision, local=False)
    try:
        with _hub_errors(hub, repo_id, listing):
            info = api.model_info(repo_id, revision=revision, timeout=15)
            files = ([s.rfilename for s in info.siblings] if info.siblings is not None
                     else api.list_repo_files(repo_id, revision=info.sha))
    except _NetworkDown as e:
        raise Unreachable(f"can't reach the Hub at {hub.endpoint} ({e})") from None
    return Listing(info.sha, files, revision, local=False)


def cached_listing(hub: Hub, repo_id: str, revision: str | None, note: str = "") -> Listing | None:
    """The repo's files at `revision` as huggingface_hub's cache holds them, or None."""
    try:
        cache = scan_cache_dir(hub.cache_dir)
    except (hf_utils.CacheNotFound, OSError, ValueError):
        return None
    want = revision or "main"
    for repo in cache.repos:
        if repo.repo_id != repo_id or repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            by_ref = want in rev.refs
            if by_ref or names_commit(want, rev.commit_hash):
                files = [Path(f.file_path).relative_to(rev.snapshot_path).as_posix() for f in rev.files]
                return Listing(rev.commit_hash, files, want if by_ref else rev.commit_hash, local=True, note=note)
    return None


def names_commit(revision: str, commit: str | None) -> bool:
    """Whether a revision is the commit's sha, in full or abbreviated (7+ characters)."""
    return bool(commit) and (revision == commit or (len(revision) >= 7 and commit.startswith(revision)))


class _NetworkDown(Exception):
    """Internal: a connection-level failure while resolving (so the cache may be tried)."""


@contextmanager
def _hub_errors(hub: Hub, repo_id: str, listing: Listing) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line HubErrors that say what to do."""
    rev = listing.revision or "main"
    try:
        yield
    except hf_utils.HFValidationError as e:
        raise HubError(f"invalid repo id {repo_id!r}: {one_line(e)}") from None
    except hf_utils.GatedRepoError:
        if hub.token:
            raise HubError(f"{repo_id} is gated and the token in HF_TOKEN has no access to it; request access "
                           f"at {hub.endpoint}/{repo_id}") from None
        raise HubError(f"{repo_id} is gated: accept its terms at {hub.endpoint}/{repo_id}, then set HF_TOKEN to "
                       "a token of that account") from None
    except hf_utils.RepositoryNotFoundError:
        hint = "check the token in HF_TOKEN" if hub.token else "set HF_TOKEN if it is private"
        raise HubError(f"{repo_id} was not found on {hub.endpoint} ({hint})") from None
    except hf_utils.RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {rev!r} (a branch, tag or commit sha)") from None
    except hf_utils.LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if hub.offline else f"the Hub at {hub.endpoint} could not be used"
        raise HubError(f"{why} and the local cache ({hub.cache_dir}) lacks files of {repo_id}@{rev}: "
                       f"{one_line(e)[:200]}") from None
    except hf_utils.EntryNotFoundError as e:
        raise HubError(f"{repo_id}@{rev}: a file is missing on the Hub ({one_line(e)[:200]})") from None
    except hf_utils.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None) or 0
        if status >= 500 and not listing.commit:  # Hub down while resolving: the cache may do
            raise _NetworkDown(f"HTTP {status}") from None
        if status in (401, 403):  # e.g. an expired token, even for a public repo
            raise HubError(f"the Hub at {hub.endpoint} refused access to {repo_id} (HTTP {status}); "
                           "check the token in HF_TOKEN or your saved login") from None
        raise HubError(f"the Hub at {hub.endpoint} answered HTTP {status} for {repo_id}@{rev}; "
                       "try again later") from None
    except _NETWORK_ERRORS as e:
        if not listing.commit:  # still resolving: the caller may fall back to the cache
            raise _NetworkDown(one_line(e)) from None
        raise HubError(f"download of {repo_id}@{rev} from {hub.endpoint} failed ({one_line(e)}); "
                       "run the command again") from None
    except OSError as e:  # e.g. the size check after a cut-off download, or a full disk
        raise HubError(f"download of {repo_id}@{rev} failed: {one_line(e)[:300]}") from None
