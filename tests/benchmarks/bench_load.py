"""`minivault bench` against a GPT-2-small-shaped q4_0 model: 1, 2 and 4 streams, 1 and 2 workers.

For each worker count a server starts (threads per worker: the cores divided among them, the
default), then the load generator runs at each concurrency in turn. Prints a Markdown table.

    .venv/bin/python tests/benchmarks/bench_load.py [--requests 12] [--tokens 128] [--quant q4_0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpt2_small, start_server  # noqa: E402

from service.cli import bench  # noqa: E402


def fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--quant", default="q4_0")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--concurrency", default="1,2,4")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = gpt2_small(Path(tmp) / "model.bin", args.quant)
        for workers in (int(w) for w in args.workers.split(",")):
            server = start_server(model, Path(tmp) / "log.jsonl", workers=workers, max_queue=64)
            try:
                url = server.url
                bench.run(url, {"prompt": "warm up", "max_new_tokens": 8}, requests=workers, concurrency=workers,
                          duration=120)
                for c in (int(c) for c in args.concurrency.split(",")):
                    body = {"prompt": "Once upon a time", "max_new_tokens": args.tokens, "seed": 1}
                    r = bench.run(url, body, requests=args.requests, concurrency=c, duration=600)
                    if r.failed or r.cut_off:
                        raise SystemExit(f"workers={workers} c={c}: {r.failed} failed, {r.cut_off} cut off: {r.errors}")
                    rows.append((workers, c, r))
                    print(f"workers={workers} concurrency={c}: {r.tokens_per_s:.1f} tok/s", file=sys.stderr)
            finally:
                server.stop()
    print(f"`minivault bench`, GPT-2-small-shaped {args.quant}, {args.requests} requests x {args.tokens} tokens each")
    print("| workers | streams | req/s | aggregate tok/s | per-stream tok/s p50 | TTFT p50 / p95 ms | ITL p50 / p95 / p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for workers, c, r in rows:
        print(f"| {workers} | {c} | {r.requests_per_s:.2f} | {r.tokens_per_s:.1f} | {fmt(r.stream_tokens_per_s.p50, 1)} "
              f"| {fmt(r.ttft_ms.p50)} / {fmt(r.ttft_ms.p95)} "
              f"| {fmt(r.itl_ms.p50, 1)} / {fmt(r.itl_ms.p95, 1)} / {fmt(r.itl_ms.p99, 1)} |")


if __name__ == "__main__":
    main()
