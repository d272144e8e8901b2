"""What the service benchmarks share: a GPT-2-small-shaped model and a server process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.ggml.tiny import EOT, make_tiny_gpt2

ROOT = Path(__file__).resolve().parents[2]


def gpt2_small(path: Path, quant: str) -> Path:
    """A random GPT-2-small-shaped model (12 layers, 768 wide, 50257 tokens, 1024 context).

    256 byte tokens + distinct filler tokens + <|endoftext|>; end-of-text is never sampled,
    so every request decodes exactly the tokens it asks for.
    """
    vocab = [bytes([b]) for b in range(256)] + [f"<t{i}>".encode() for i in range(50257 - 257)] + [EOT]
    make_tiny_gpt2(path, vocab=vocab, n_embd=768, n_head=12, n_layer=12, n_ctx=1024, ftype=quant, no_eos=True)
    return path


def start_server(model: Path, log: Path, port: int, **settings: object) -> subprocess.Popen:
    """`python -m service.server` on 127.0.0.1:port with MINIVAULT_* settings; returns once healthy."""
    env = os.environ | {"MINIVAULT_MODEL": str(model), "MINIVAULT_LOG_FILE": str(log),
                        "MINIVAULT_HOST": "127.0.0.1", "MINIVAULT_PORT": str(port)}
    env |= {f"MINIVAULT_{k.upper()}": str(v) for k, v in settings.items()}
    proc = subprocess.Popen([sys.executable, "-m", "service.server"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not become healthy")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)
