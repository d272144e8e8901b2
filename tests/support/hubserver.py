"""A small threaded HTTP server that answers like the Hugging Face Hub, for tests.

It serves the endpoints huggingface_hub uses to resolve and download model repos:
  GET  /api/models/{repo}[/revision/{rev}]        model info (sha, siblings, gated)
  GET  /api/models/{repo}/tree/{rev}[/{path}]     file listing (with LFS metadata)
  HEAD/GET /{repo}/resolve/{rev}/{path}           file metadata / content
  GET  /cdn/{sha256}                              LFS content (the Hub redirects there)
Small files answer /resolve directly with ETag = git blob id; LFS files (*.bin,
*.safetensors) answer with a 302 to another host name (localhost) carrying
X-Linked-Etag / X-Linked-Size, as the real Hub does for its CDN. Errors carry the
X-Error-Code headers huggingface_hub maps to its exceptions.

Faults for tests, queued per file name and used by its next downloads in order:
`drop(filename, after=n)` closes the connection after n body bytes; `fail(filename,
status)` answers an error; `stall(filename, after=n)` sends n bytes, then hangs until
the server closes.

Also here, for the tests and benchmarks that download through it: `serve_hub`, the body of a
pytest fixture pointing huggingface_hub at a fresh server, and `gpt2_tensors`, a GPT-2 state
dict in Hugging Face layout to serve as a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from safetensors.numpy import save_file

from service.tokenizer.bpe import bytes_to_unicode

if TYPE_CHECKING:
    import pytest

LFS_SUFFIXES = (".bin", ".safetensors", ".gguf", ".pt")


@dataclass
class Blob:
    """One file of a repo at one commit."""

    data: bytes
    lfs: bool

    @cached_property
    def git_oid(self) -> str:
        """The git blob id, which the Hub sends as ETag of small files."""
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @cached_property
    def sha256(self) -> str:
        """The LFS object id, which the Hub sends as X-Linked-Etag."""
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Repo:
    """A repo: named revisions pointing at commits, each commit a set of files."""

    repo_id: str
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    gated: bool = False
    tokens: set[str] = field(default_factory=set)


@dataclass
class Fault:
    """A misbehaviour injected into the next downloads of one file."""

    kind: str  # "drop" | "fail" | "stall"
    after: int = 0
    status: int = 500


class HubServer:
    """Hub-shaped HTTP server on 127.0.0.1 (random port); use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.faults: dict[str, list[Fault]] = {}
        # With strict_tokens, a token that is neither here nor a gated repo's gets a 401, as on the Hub.
        # Off by default: a developer's saved Hub login is sent along and must not break tests.
        self.tokens: set[str] = set()
        self.strict_tokens = False
        self.stalled = threading.Event()  # set when a stalled download has sent its bytes
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # LFS content is served from a different host name, as the Hub's CDN is.
        self.cdn_url = f"http://localhost:{self.port}/cdn"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release stalled downloads and stop serving."""
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | str | Path],
        *,
        revision: str = "main",
        gated: bool = False,
        tokens: tuple[str, ...] = (),
    ) -> str:
        """Publish `files` as a new commit of `repo_id` on `revision`; return the commit sha."""
        blobs = {}
        for path, content in files.items():
            if isinstance(content, Path):
                content = content.read_bytes()
            elif isinstance(content, str):
                content = content.encode()
            blobs[path] = Blob(content, path.endswith(LFS_SUFFIXES))
        digest = hashlib.sha1(repo_id.encode())
        for path in sorted(blobs):
            digest.update(f"{path}\0{blobs[path].git_oid}\0".encode())
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        digest.update(str(len(repo.commits)).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = blobs
        repo.refs[revision] = sha
        repo.gated = repo.gated or gated
        repo.tokens.update(tokens)
        return sha

    def drop(self, filename: str, *, after: int) -> None:
        """Close the connection after `after` body bytes of a coming download."""
        self.faults.setdefault(filename, []).append(Fault("drop", after=after))

    def fail(self, filename: str, *, status: int = 500) -> None:
        """Answer a coming download of `filename` with `status`."""
        self.faults.setdefault(filename, []).append(Fault("fail", status=status))

    def stall(self, filename: str, *, after: int) -> None:
        """Send `after` bytes of a coming download, then hang until the server closes."""
        self.faults.setdefault(filename, []).append(Fault("stall", after=after))

    def downloads(self, filename: str) -> int:
        """How many GET requests fetched `filename`'s content (resolve or CDN)."""
        names = {filename}
        for repo in self.repos.values():
            for blobs in repo.commits.values():
                if filename in blobs and blobs[filename].lfs:
                    names.add(blobs[filename].sha256)
        return sum(
            1 for method, path, _ in self.requests if method == "GET" and path.rsplit("/", 1)[-1] in names
        )

    def _take_fault(self, filename: str) -> Fault | None:
        """The next queued fault for `filename`, if any."""
        with self._lock:
            queue = self.faults.get(filename)
            return queue.pop(0) if queue else None

    def _blob_by_sha256(self, sha256: str) -> tuple[str, Blob] | None:
        """The LFS file with this sha256, for the CDN route."""
        for repo in self.repos.values():
            for blobs in repo.commits.values():
                for path, blob in blobs.items():
                    if blob.lfs and blob.sha256 == sha256:
                        return path, blob
        return None


def serve_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """Fixture body: a HubServer that huggingface_hub uses, with no token and a fresh cache under tmp_path."""
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def gpt2_tensors(n_vocab: int, n_ctx: int, n_embd: int, n_layer: int,
                 weight: Callable[..., np.ndarray]) -> dict[str, np.ndarray]:
    """GPT-2 tensors under Hugging Face names: `weight(*shape)` for embeddings and matrices, unit norms, 0 biases."""
    e = n_embd
    tensors = {"wte.weight": weight(n_vocab, e), "wpe.weight": weight(n_ctx, e),
               "ln_f.weight": np.ones(e, np.float32), "ln_f.bias": np.zeros(e, np.float32)}
    for i in range(n_layer):
        p = f"h.{i}."
        tensors |= {
            p + "ln_1.weight": np.ones(e, np.float32), p + "ln_1.bias": np.zeros(e, np.float32),
            p + "ln_2.weight": np.ones(e, np.float32), p + "ln_2.bias": np.zeros(e, np.float32),
            p + "attn.c_attn.weight": weight(e, 3 * e), p + "attn.c_attn.bias": np.zeros(3 * e, np.float32),
            p + "attn.c_proj.weight": weight(e, e), p + "attn.c_proj.bias": np.zeros(e, np.float32),
            p + "mlp.c_fc.weight": weight(e, 4 * e), p + "mlp.c_fc.bias": np.zeros(4 * e, np.float32),
            p + "mlp.c_proj.weight": weight(4 * e, e), p + "mlp.c_proj.bias": np.zeros(e, np.float32),
        }
    return tensors


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests (HTTP/1.1 keep-alive, as huggingface_hub's client expects)."""

    protocol_version = "HTTP/1.1"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test output
        pass

    # --- plumbing -------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """A response with a body (none for HEAD)."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: object, headers: dict[str, str] | None = None) -> None:
        """A 200 JSON response."""
        self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        """An error as the Hub sends it: X-Error-Code / X-Error-Message headers and a JSON body."""
        extra = {"X-Error-Message": message, **(headers or {})}
        if code:
            extra["X-Error-Code"] = code
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _repo(self, repo_id: str) -> Repo | None:
        """The repo, or None after answering 401 RepoNotFound (as the Hub does signed out)."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: Repo, rev: str) -> str | None:
        """The commit a revision names, or None after answering 404 RevisionNotFound."""
        if rev in repo.commits:
            return rev
        if rev in repo.refs:
            return repo.refs[rev]
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return None

    def _known(self, token: str) -> bool:
        """Whether a token exists at all (an unknown one is refused everywhere, as on the Hub)."""
        return token in self.hub.tokens or any(token in repo.tokens for repo in self.hub.repos.values())

    def _authorized(self, repo: Repo) -> bool:
        """Whether the request may read the repo's files."""
        auth = self.headers.get("authorization") or ""
        return not repo.gated or auth.removeprefix("Bearer ") in repo.tokens

    # --- routes ---------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        """Dispatch a request by path."""
        split = urlsplit(self.path)
        path = split.path
        auth = self.headers.get("authorization")
        self.hub.requests.append((self.command, path, auth))
        if self.hub.strict_tokens and auth and not path.startswith("/cdn/") \
                and not self._known(auth.removeprefix("Bearer ")):
            self._error(401, None, "Invalid credentials in Authorization header")
            return
        if path.startswith("/api/models/"):
            self._api(path.removeprefix("/api/models/"), parse_qs(split.query))
        elif path.startswith("/cdn/"):
            self._cdn(path.removeprefix("/cdn/"))
        elif "/resolve/" in path:
            self._resolve(path.lstrip("/"))
        else:
            self._error(404, None, "Not found")

    def _api(self, rest: str, query: dict[str, list[str]]) -> None:
        """/api/models/...: model info or tree listing."""
        if "/tree/" in rest:
            repo_id, tail = rest.split("/tree/", 1)
            rev, _, sub = tail.partition("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            self._tree(unquote(repo_id), unquote(rev), unquote(sub), recursive)
            return
        repo_id, _, rev = rest.partition("/revision/")
        repo = self._repo(unquote(repo_id))
        if repo is None:
            return
        sha = self._commit(repo, unquote(rev) if rev else "main")
        if sha is None:
            return
        blobs = repo.commits[sha]
        self._json(
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": sha,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(blobs)],
            }
        )

    def _tree(self, repo_id: str, rev: str, sub: str, recursive: bool) -> None:
        """The tree listing: files (with LFS metadata) and folders."""
        repo = self._repo(repo_id)
        if repo is None:
            return
        sha = self._commit(repo, rev)
        if sha is None:
            return
        entries: list[dict[str, object]] = []
        folders: set[str] = set()
        prefix = f"{sub}/" if sub else ""
        for path, blob in sorted(repo.commits[sha].items()):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            parts = rel.split("/")
            for i in range(1, len(parts)):
                folder = prefix + "/".join(parts[:i])
                if folder not in folders and (recursive or i == 1):
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
            if len(parts) > 1 and not recursive:
                continue
            entry: dict[str, object] = {"type": "file", "oid": blob.git_oid, "size": len(blob.data), "path": path}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
            entries.append(entry)
        self._json(entries)

    def _resolve(self, rest: str) -> None:
        """/{repo}/resolve/{rev}/{path}: small files directly, LFS files by redirect to the CDN."""
        repo_id, tail = rest.split("/resolve/", 1)
        rev, _, filename = tail.partition("/")
        repo = self._repo(unquote(repo_id))
        if repo is None:
            return
        sha = self._commit(repo, unquote(rev))
        if sha is None:
            return
        filename = unquote(filename)
        commit_header = {"X-Repo-Commit": sha}
        if not self._authorized(repo):
            message = (f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                       "authenticated to access it. Please log in.")
            status = 403 if self.headers.get("authorization") else 401  # signed in but not granted: 403
            self._error(status, "GatedRepo", message, commit_header)
            return
        blob = repo.commits[sha].get(filename)
        if blob is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist on \"{rev}\"", commit_header)
            return
        if blob.lfs:
            self._send(
                302,
                headers={
                    **commit_header,
                    "ETag": f'"{blob.git_oid}"',
                    "X-Linked-Etag": f'"{blob.sha256}"',
                    "X-Linked-Size": str(len(blob.data)),
                    "Location": f"{self.hub.cdn_url}/{blob.sha256}",
                },
            )
            return
        self._content(filename, blob, {**commit_header, "ETag": f'"{blob.git_oid}"'})

    def _cdn(self, sha256: str) -> None:
        """LFS content by sha256."""
        found = self.hub._blob_by_sha256(sha256)
        if found is None:
            self._error(404, None, "No such object")
            return
        self._content(*found, {"ETag": f'"{sha256}"'})

    def _content(self, filename: str, blob: Blob, headers: dict[str, str]) -> None:
        """Serve a file's bytes, honouring `Range: bytes=N-` and any injected fault."""
        data, status = blob.data, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and self.command == "GET":
            start = int(rng.removeprefix("bytes=").split("-", 1)[0] or 0)
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            data, status = data[start:], 206
        fault = self.hub._take_fault(filename) if self.command == "GET" else None
        if fault is not None and fault.kind == "fail":
            self._error(fault.status, None, "Internal Error")
            return
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is None:
            self.wfile.write(data)
            return
        self.close_connection = True
        try:
            self.wfile.write(data[: fault.after])
            self.wfile.flush()
            if fault.kind == "stall":
                self.hub.stalled.set()
                self.hub._release.wait()
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end early
        except OSError:  # the client is gone already (a killed download)
            pass


def checkpoint_files(tmp: Path, *, n_embd: int = 32, n_layer: int = 2, n_ctx: int = 64,
                     shards: int = 1) -> dict[str, bytes]:
    """A random-weight GPT-2 in Hugging Face layout (written via `tmp`), with a pickle and a README.

    With `shards` > 1 the weights are model-0000i-of-0000n.safetensors + their index.
    """
    vocab = {c: i for i, c in enumerate(sorted(bytes_to_unicode().values()))}  # GPT-2's order: printable first
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    for m in merges:
        vocab["".join(m.split())] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    n_vocab, e = len(vocab), n_embd
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = gpt2_tensors(n_vocab, n_ctx, e, n_layer, w)
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": n_vocab,
              "n_positions": n_ctx, "n_ctx": n_ctx, "n_embd": e, "n_head": 4, "n_layer": n_layer,
              "layer_norm_epsilon": 1e-5, "bos_token_id": n_vocab - 1, "eos_token_id": n_vocab - 1}
    files = {}
    if shards == 1:
        save_file(tensors, str(tmp / "model.safetensors"))
        files["model.safetensors"] = (tmp / "model.safetensors").read_bytes()
    else:
        weight_map = {}
        for i in range(shards):
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: v for j, (k, v) in enumerate(sorted(tensors.items())) if j % shards == i}
            save_file(part, str(tmp / shard))
            files[shard] = (tmp / shard).read_bytes()
            weight_map |= dict.fromkeys(part, shard)
        files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files | {
        "config.json": json.dumps(config).encode(),
        "vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
        "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode(),
        "README.md": b"# tiny gpt2\n",
        "pytorch_model.bin": b"PK\x03\x04 pickle stand-in",
    }
