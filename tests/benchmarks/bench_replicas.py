"""Aggregate throughput of 1 vs 2 MiniVault replicas behind the compose LB (HAProxy), 1 thread each.

Builds both images, starts compose.yaml's `replicas` profile with a GPT-2-small-shaped q4_0
model, then alternates 1 and 2 replicas round by round (`--scale replica=N`): each round sends
`--requests` non-streaming requests of `--tokens` tokens from `--clients` concurrent clients
through the LB and counts completion tokens per second of wall time. Prints a Markdown table
of the medians and the median of the per-round 2/1 ratios.

    DOCKER_HOST=... .venv/bin/python tests/benchmarks/bench_replicas.py [--rounds 3] [--requests 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, gpt2_small  # noqa: E402

from tests.support.replicas import Replicas, build_lb  # noqa: E402
from tests.test_container import run  # noqa: E402


def round_tokens_per_s(url: str, clients: int, requests: int, tokens: int) -> float:
    """Completion tokens per second of wall time, `requests` spread over `clients` at once."""
    def one(i: int) -> int:
        body = {"prompt": "Once upon a time", "max_new_tokens": tokens, "seed": i}
        r = httpx.post(url + "/generate", json=body, timeout=600)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["completion_tokens"]

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(one, range(requests)))
    return done / (time.monotonic() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--quant", default="q4_0")
    args = ap.parse_args()
    suffix = uuid.uuid4().hex[:8]
    image, lb = f"minivault-bench:{suffix}", f"minivault-lb-bench:{suffix}"
    run(["docker", "build", "--tag", image, str(ROOT)], timeout=1800)
    build_lb(lb)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Replicas(image, lb, Path(tmp), MINIVAULT_THREADS="1", MINIVAULT_WORKERS="1")
        (stack.models / "gpt2").mkdir()
        gpt2_small(stack.models / "gpt2" / "model.bin", args.quant)
        results: dict[int, list[float]] = {1: [], 2: []}
        try:
            for r in range(args.rounds):
                for n in (1, 2) if r % 2 == 0 else (2, 1):
                    stack.scale(n)
                    round_tokens_per_s(stack.url, n, n, 8)  # warm-up: each replica's first request
                    tps = round_tokens_per_s(stack.url, args.clients, args.requests, args.tokens)
                    results[n].append(tps)
                    print(f"round {r + 1}: {n} replica(s): {tps:.1f} tok/s", file=sys.stderr, flush=True)
        finally:
            stack("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=180)
            run(["docker", "rmi", "--no-prune", image, lb], check=False)
    ratios = [b / a for a, b in zip(results[1], results[2])]
    print(f"\n{args.clients} clients, {args.requests} requests x {args.tokens} tokens per round, "
          f"{args.rounds} rounds, GPT-2-small shape {args.quant}, 1 worker x 1 thread per replica\n")
    print("| replicas | aggregate tok/s (median) | rounds |")
    print("|---:|---:|---|")
    for n in (1, 2):
        print(f"| {n} | {statistics.median(results[n]):.1f} | {', '.join(f'{x:.1f}' for x in results[n])} |")
    print(f"\n2 / 1 replicas: median of per-round ratios {statistics.median(ratios):.2f} "
          f"({', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
