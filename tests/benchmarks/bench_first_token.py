"""Time to first token on short prompts, MiniVault's llama.cpp engine against llama-server, in many
paired rounds with a confidence interval.

On a 32-token prompt the two are within a few per cent of each other, less than what separates two
32-round runs of bench_peers.py on this machine. This runs only that comparison, cold (prefix
reuse off), long enough to tell: each round sends the same prompt to both servers, in a random
order, 50 ms apart; the figure is the median of the per-round ratios, with a bootstrap 95%
interval and the share of rounds MiniVault was first. The two servers are started in one order for
the first half of the rounds and in the other for the second (bench_peers.py's halves).

    .venv/bin/python tests/benchmarks/bench_first_token.py [--rounds 400] [--prompt 32] [--threads 2]
        [--llama-server PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import DEFAULT_LLAMA_SERVER, halves, llama_server, minivault_llama, prompt_of, say  # noqa: E402
from common import gpt2_small  # noqa: E402

from service.formats.ggml_to_gguf import ggml_to_gguf  # noqa: E402

GAP_S = 0.05  # between two requests: each finds the machine idle, as a user's first request does


def interval(ratios: np.ndarray, draws: int = 4000) -> tuple[float, float]:
    """A bootstrap 95% interval of the median of `ratios` (seeded: the same figures, the same interval)."""
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(ratios, (draws, ratios.size)), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quant", default="q4_0")
    ap.add_argument("--llama-server", default=str(DEFAULT_LLAMA_SERVER))
    args = ap.parse_args()
    text, ids = prompt_of(args.prompt)
    times: dict[str, list[float]] = {"minivault-llamacpp": [], "llama-server": []}
    say(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        gguf = ggml_to_gguf(gpt2_small(tmp / "model.bin", args.quant), tmp / "model.gguf")
        for reverse, rounds in halves(args.rounds + 4):  # two rounds a half to warm up, not counted
            makers = [lambda: minivault_llama(gguf, tmp, args.threads),
                      lambda: llama_server(Path(args.llama_server), gguf, tmp, args.threads)]
            peers = [p for make in (makers[::-1] if reverse else makers) for p in make()]
            try:
                if len(peers) < 2:
                    raise SystemExit("needs both servers (see the reasons above)")
                for n, _ in enumerate(rounds):
                    random.shuffle(peers)
                    for p in peers:
                        time.sleep(GAP_S)
                        first = p.run(text, ids, 2, cache=False)[0] * 1000
                        if n >= 2:
                            times[p.name].append(first)
            finally:
                for p in peers:
                    p.close()
    say(f"load average {os.getloadavg()[0]:.1f} at the end")
    ours, theirs = (np.array(times[name]) for name in times)
    ratios = ours / theirs
    low, high = interval(ratios)
    print(f"time to first token, {args.prompt}-token prompt, {args.threads} threads, {ratios.size} paired rounds")
    print("| peer | median ms |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} |")
    print(f"minivault-llamacpp / llama-server, median of paired ratios: {np.median(ratios):.3f}x "
          f"(95% interval {low:.3f}-{high:.3f}); MiniVault first in {np.mean(ratios < 1):.0%} of rounds")


if __name__ == "__main__":
    main()
