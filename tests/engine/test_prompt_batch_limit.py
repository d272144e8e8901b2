"""The prompt batch at the worst case the wheel's library meets: GPT-2 small's shape, full context.

ggml aborts or crashes the process when one eval call needs more scratch memory than the
library's fixed buffer; the need grows with the batch and with the context already filled.
tests/benchmarks/probe_prompt_batch.py found the limit (README, Performance); this checks the
batch MiniVault uses, in a child process, at the end of a full 1024-token context.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.engine.generation import PROMPT_BATCH
from service.formats.ggml.tiny import EOT, make_tiny_gpt2

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
import numpy as np
from service.engine.ctransformers_backend import Engine
eng = Engine(sys.argv[1], threads=int(sys.argv[3]))
batch = int(sys.argv[2])
ids = [(i * 7919) % 50000 for i in range(batch)]
eng.eval(ids, eng.context_length - batch)
assert np.isfinite(eng.logits()).all()
print("ok", eng.context_length)
eng.close()
"""


@pytest.fixture(scope="module")
def gpt2_small(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpt2-small") / "model.bin"
    vocab = [bytes([b]) for b in range(256)] + [f"<t{i}>".encode() for i in range(50257 - 257)] + [EOT]
    make_tiny_gpt2(path, vocab=vocab, n_embd=768, n_head=12, n_layer=12, n_ctx=1024, ftype="q4_0")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_prompt_batch_evaluates_at_the_end_of_a_full_gpt2_small_context(gpt2_small, threads):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(gpt2_small), str(PROMPT_BATCH), str(threads)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "1024"]
