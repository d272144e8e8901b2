"""What the llama.cpp engine's per-token hand-over costs: decode + sample on one thread, the same
work handed between two threads by events, and MiniVault's LlamaContext, paired round by round.

Run by hand (not in CI): .venv/bin/python tests/benchmarks/probe_handover.py --rounds 7
GPT-2-small-shaped q4_0 model written by the project's writer and copied into a GGUF; one
sequence, 128 tokens after an 8-token prompt, default sampling. Prints ms per token, medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, gpt2_small  # noqa: E402

sys.path.insert(0, str(ROOT))
from service.engine.llamacpp_backend import LlamaContext  # noqa: E402
from service.engine.sampling import Sampler, SamplingParams  # noqa: E402
from service.formats.ggml_to_gguf import ggml_to_gguf  # noqa: E402
from service.runtime.loading import gguf_tokenizer_for  # noqa: E402

PROMPT = list(range(300, 308))


def _prompt(ctx: LlamaContext) -> None:
    """Clear sequence 0 and decode the prompt into it, by hand (the step thread is idle)."""
    lc, b = ctx._lc, ctx._batch
    lc.llama_memory_seq_rm(ctx._mem, 0, 0, -1)
    for j, t in enumerate(PROMPT):
        b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = t, j, 1, j == len(PROMPT) - 1
        b.seq_id[j][0] = 0
    b.n_tokens = len(PROMPT)
    lc.llama_decode(ctx._ctx, b)


def _by_hand(ctx: LlamaContext, tokens: int, handed: bool) -> float:
    """ms per token decoding on this thread; sampling here too, or on a second thread (handed)."""
    lc, b = ctx._lc, ctx._batch
    sampler, history = Sampler(SamplingParams(seed=1)), list(PROMPT)
    box: dict = {"token": 400}
    go, back = threading.Event(), threading.Event()

    def sample() -> None:
        box["token"] = sampler(box["logits"], history)
        history.append(box["token"])

    def sampling_thread() -> None:
        for _ in range(tokens):
            go.wait()
            go.clear()
            sample()
            back.set()

    helper = threading.Thread(target=sampling_thread) if handed else None
    if helper:
        helper.start()
    with ctx._decoding:
        _prompt(ctx)
        t0 = time.perf_counter()
        for i in range(tokens):
            b.token[0], b.pos[0], b.n_seq_id[0], b.logits[0], b.n_tokens = box["token"], len(PROMPT) + i, 1, 1, 1
            b.seq_id[0][0] = 0
            lc.llama_decode(ctx._ctx, b)
            box["logits"] = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx._ctx, 0), shape=(ctx.vocab_size,)).copy()
            if helper:
                go.set()
                back.wait()
                back.clear()
            else:
                sample()
        per = (time.perf_counter() - t0) / tokens * 1000
        lc.llama_memory_seq_rm(ctx._mem, 0, 0, -1)
    if helper:
        helper.join()
    return per


def _engine(ctx: LlamaContext, tokens: int) -> float:
    """ms per token through a LlamaSlot's generation (the step thread decodes and samples, this thread makes text)."""
    slot = ctx.slots[0]
    slot.kv_len, slot.sequence, slot.last_prompt = 0, [], None
    stamps = [time.perf_counter() for _ in slot.generate(PROMPT, SamplingParams(max_new_tokens=tokens + 1, seed=1),
                                                         cache_prompt=False)]
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="minivault-handover-") as tmp:
        model = gpt2_small(Path(tmp) / "model.bin", "q4_0")
        gguf = ggml_to_gguf(model, Path(tmp) / "model.gguf")
        ctx = LlamaContext(gguf, parallel=1, threads=args.threads, tokenizer=gguf_tokenizer_for(model, gguf))
        try:
            runs: dict[str, list[float]] = {"one thread": [], "handed over": [], "LlamaContext": []}
            for r in range(args.rounds):
                runs["one thread"].append(_by_hand(ctx, args.tokens, handed=False))
                runs["handed over"].append(_by_hand(ctx, args.tokens, handed=True))
                runs["LlamaContext"].append(_engine(ctx, args.tokens))
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items()), flush=True)
        finally:
            ctx.close()
    print("median ms per token: " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in runs.items()))


if __name__ == "__main__":
    main()
