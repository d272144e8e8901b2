"""What the service benchmarks share: a GPT-2-small-shaped model and a server process."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.formats.ggml.tiny import EOT, make_tiny_gpt2  # noqa: E402
from tests.fixtures.gpt2_vocab import gpt2_vocab_bytes, write_tokenizer_json  # noqa: E402
from tests.support.server import LiveServer  # noqa: E402


def gpt2_small(path: Path, quant: str) -> Path:
    """A random GPT-2-small-shaped model (12 layers, 768 wide, 50257 tokens, 1024 context).

    GPT-2's real vocabulary, with its tokenizer.json beside the model as a downloaded model has
    it (so servers tokenize with MiniVault's BPE, as they would serve a real model, not with the
    greedy fallback for models without one); end-of-text is never sampled, so every request
    decodes exactly the tokens it asks for.
    """
    make_tiny_gpt2(path, vocab=gpt2_vocab_bytes(), n_embd=768, n_head=12, n_layer=12, n_ctx=1024, ftype=quant, no_eos=True)
    write_tokenizer_json(path.parent / "tokenizer.json")
    return path


def start_server(model: Path, log: Path, /, **settings: object) -> LiveServer:
    """A live `python -m service.api.server` with MINIVAULT_* settings; threads default to the
    service's own (cores divided among workers), not the tests' one thread."""
    env = {"MINIVAULT_THREADS": "0"} | {f"MINIVAULT_{k.upper()}": str(v) for k, v in settings.items()}
    return LiveServer(model, log, **env)
