"""Helpers shared by the tests: scripted models, the request log, a live server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.formats.ggml.tiny import byte_vocab, make_scripted_gpt2

ROOT = Path(__file__).resolve().parents[2]


class Script:
    """A scripted model: greedy output at position p is script[p]; see make_scripted_gpt2."""

    def __init__(self, root: Path, name: str, extra: list[bytes], pieces: list[bytes], prompt_len: int = 3):
        self.vocab = byte_vocab() + [t for t in extra if t not in byte_vocab()]
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.prompt_len = prompt_len
        # the prompt fills positions 0..prompt_len-1; the last of them predicts the first piece
        script = [self.ids[b"a"]] * (prompt_len - 1) + [self.ids[p] for p in pieces]
        self.path = root / name / "model.bin"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        make_scripted_gpt2(self.path, self.vocab, script)

    @property
    def prompt_ids(self) -> list[int]:
        return [self.ids[b"a"]] * self.prompt_len

    @property
    def prompt(self) -> str:
        return "a" * self.prompt_len  # the greedy fallback tokenizer splits it into single bytes


def read_log(path: Path) -> list[dict]:
    """Every record of a JSONL log (each line must parse, split as any Unicode-aware reader would)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def new_records(log_file: Path, before: int, count: int = 1, timeout: float = 5.0) -> list[dict]:
    """The log's records past its first `before`, once `count` of them are written (the log is
    written by a thread) or `timeout` s have passed."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_log(log_file)[before:]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def wait_idle(url: str, timeout: float = 10.0) -> dict:
    """/health once no worker is busy and nothing is queued; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(url + "/health", timeout=5).json()
        if health["busy"] == 0 and health["queued"] == 0:
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"server still busy: {health}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real `python -m service.api.server` process on 127.0.0.1."""

    def __init__(self, model: Path, log_file: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file
        full_env = os.environ | {
            "MINIVAULT_MODEL": str(model), "MINIVAULT_LOG_FILE": str(log_file),
            "MINIVAULT_HOST": "127.0.0.1", "MINIVAULT_PORT": str(self.port),
            # one thread per worker: ggml's spinning thread barrier crawls when other jobs share the cores
            "MINIVAULT_THREADS": "1", "MINIVAULT_TIMEOUT_S": "600",
        } | env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.api.server"], env=full_env, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.output = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.communicate()}")
            try:
                health = httpx.get(self.url + "/health", timeout=1)
                # up, and its preloaded default model loaded (or failed: the test looks at why)
                if health.status_code == 200 and health.json().get("state") in (None, "loaded", "error"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not become healthy: {self.output}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait for the drain; 0 if it shut down cleanly and exited with status 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def wait_stopped(self, timeout: float = 30) -> int:
        """Wait for an exit already under way (after a signal sent by the test), sending nothing:
        a second SIGTERM can land after the server has put back the default handler on its way
        out, and would kill it (status -15) instead of testing its shutdown."""
        return self._reap(timeout)

    def _reap(self, timeout: float) -> int:
        """Wait for the process; 0 if it shut down cleanly and exited with status 0."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.output += out + err
        clean = "Application shutdown complete" in self.output and "Finished server process" in self.output
        return 0 if clean and self.proc.returncode == 0 else self.proc.returncode or -1
