"""Load time and memory of each model when several are served and loaded on demand.

One live server over a models dir holding GPT-2-small-shaped random models in several types, with
MINIVAULT_MAX_LOADED_MODELS=1 so that each request for another model unloads the last one and
loads its own. For each round, each model in turn: the time of its first request (load + one
token), the load time and the resident memory the load added as the server measured them
(/health), and the server's RSS from /proc before and after. Medians over the rounds.

    .venv/bin/python tests/benchmarks/bench_models.py [--quants q4_0,q8_0,f16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpt2_small, start_server  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quants", default="q4_0,q5_1,q8_0,f16")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    quants = args.quants.split(",")
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        for q in quants:
            (root / f"gpt2-{q}").mkdir(parents=True)
            started = time.monotonic()
            gpt2_small(root / f"gpt2-{q}" / "model.bin", q)
            sizes[q] = (root / f"gpt2-{q}" / "model.bin").stat().st_size
            print(f"wrote gpt2-{q} in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        server = start_server(root, Path(tmp) / "log.jsonl", model="", models_dir=root, preload="none",
                              max_loaded_models=1, threads=1)
        rows: dict[str, list[tuple[float, float, float, float]]] = {q: [] for q in quants}
        try:
            for _ in range(args.rounds):
                for q in quants:
                    name = f"gpt2-{q}"
                    t0 = time.perf_counter()
                    r = httpx.post(server.url + "/generate", json={"model": name, "prompt": "a", "max_new_tokens": 1},
                                   timeout=300)
                    first = time.perf_counter() - t0
                    r.raise_for_status()
                    rss = rss_mib(server.proc.pid)  # this model alone loaded (the last one was unloaded)
                    [m] = [m for m in httpx.get(server.url + "/health").json()["models"] if m["id"] == name]
                    rows[q].append((first, m["load_seconds"], m.get("memory_mb") or 0.0, rss))
        finally:
            server.stop()
    print(f"medians of {args.rounds} rounds, 1 worker, 1 thread")
    print("| model | file | first request (load + 1 token) | load | memory the load added (/health) "
          "| server RSS with it loaded |")
    print("|---|---|---|---|---|---|")
    for q in quants:
        med = [statistics.median(col) for col in zip(*rows[q])]
        print(f"| gpt2-small {q} | {sizes[q] / 2**20:.0f} MiB | {med[0] * 1000:.0f} ms | {med[1] * 1000:.0f} ms "
              f"| {med[2]:.0f} MiB | {med[3]:.0f} MiB |")


if __name__ == "__main__":
    main()
