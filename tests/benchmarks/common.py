"""What the service benchmarks share: a GPT-2-small-shaped model and a server process."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.formats.ggml.tiny import EOT, make_tiny_gpt2  # noqa: E402
from tests.support.server import LiveServer  # noqa: E402


def gpt2_small(path: Path, quant: str) -> Path:
    """A random GPT-2-small-shaped model (12 layers, 768 wide, 50257 tokens, 1024 context).

    256 byte tokens + distinct filler tokens + <|endoftext|>; end-of-text is never sampled,
    so every request decodes exactly the tokens it asks for.
    """
    vocab = [bytes([b]) for b in range(256)] + [f"<t{i}>".encode() for i in range(50257 - 257)] + [EOT]
    make_tiny_gpt2(path, vocab=vocab, n_embd=768, n_head=12, n_layer=12, n_ctx=1024, ftype=quant, no_eos=True)
    return path


def start_server(model: Path, log: Path, /, **settings: object) -> LiveServer:
    """A live `python -m service.api.server` with MINIVAULT_* settings; threads default to the
    service's own (cores divided among workers), not the tests' one thread."""
    env = {"MINIVAULT_THREADS": "0"} | {f"MINIVAULT_{k.upper()}": str(v) for k, v in settings.items()}
    return LiveServer(model, log, **env)
