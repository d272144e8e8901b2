"""The sampler per token: the top-k-only one against the whole-vocabulary reference it replaced.

Run by hand (not collected by pytest): .venv/bin/python tests/benchmarks/bench_sampler.py --rounds 9
Each round times both samplers on the same 50,257 random float32 logits and histories, in
alternating order; it prints the median ms per token of each and the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from service.engine.sampling import Sampler, SamplingParams  # noqa: E402
from tests.engine.test_sampling import ReferenceSampler  # noqa: E402

VOCAB = 50_257
CASES = {
    "defaults (t 0.8, top-k 40, top-p 0.95, rep 1.1)": {},
    "greedy (t 0)": {"temperature": 0.0},
    "top-k 200, top-p 0.9": {"top_k": 200, "top_p": 0.9},
    "presence 0.5 + frequency 0.5": {"presence_penalty": 0.5, "frequency_penalty": 0.5},
    "logit_bias, 50 ids": {"logit_bias": tuple((i * 997, 2.0) for i in range(50))},
    "top-k 0 (whole vocabulary)": {"top_k": 0},
}


def workload(tokens: int, seed: int) -> list[tuple[np.ndarray, list[int]]]:
    """Logits and the history before each of `tokens` steps after a 32-token prompt."""
    rng = np.random.default_rng(seed)
    history = [int(t) for t in rng.integers(0, VOCAB, size=32)]
    out = []
    for _ in range(tokens):
        out.append(((rng.standard_normal(VOCAB) * 3).astype(np.float32), list(history)))
        history.append(int(rng.integers(0, VOCAB)))
    return out


def per_token_ms(sampler, steps) -> float:
    """Mean ms per call over the steps."""
    start = time.perf_counter()
    for logits, history in steps:
        sampler(logits, history)
    return (time.perf_counter() - start) * 1000 / len(steps)


def main() -> None:
    """Paired rounds per case; a table in Markdown."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=100)
    args = ap.parse_args()
    print("| parameters | reference ms/token | new ms/token | new / reference (median of rounds) |")
    print("|---|---:|---:|---:|")
    for name, params in CASES.items():
        sp = SamplingParams(**params, seed=1)
        old_ms, new_ms = [], []
        for r in range(args.rounds):
            steps = workload(args.tokens, r)
            pair = [(ReferenceSampler(sp, 32), old_ms), (Sampler(sp, 32), new_ms)]
            for sampler, out in pair if r % 2 == 0 else pair[::-1]:
                out.append(per_token_ms(sampler, steps))
        ratio = statistics.median(n / o for n, o in zip(new_ms, old_ms))
        print(f"| {name} | {statistics.median(old_ms):.3f} | {statistics.median(new_ms):.3f} | {ratio:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
