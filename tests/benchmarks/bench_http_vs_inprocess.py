"""Decode speed through `POST /generate/stream` over HTTP against the same engine in-process.

A GPT-2-small-shaped model (12 layers, 768 wide, 50257 tokens, 1024 context; random weights
that never pick end-of-text, so every run decodes exactly --tokens tokens) in each quant type.
The two paths run interleaved, round after round, in one process tree, so machine noise
hits both alike; the table gives medians and the HTTP/in-process ratio.

    .venv/bin/python tests/benchmarks/bench_http_vs_inprocess.py [--rounds 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpt2_small, start_server  # noqa: E402

from service.engine.ctransformers_backend import Engine  # noqa: E402
from service.engine.sampling import SamplingParams  # noqa: E402

PROMPT = "Once upon a time"


def decode_rate(times: list[float], tokens: int) -> float:
    """Tokens per second after the first token (decode only, prompt excluded)."""
    return (tokens - 1) / (times[-1] - times[0])


def in_process(engine: Engine, params: SamplingParams) -> float:
    ids = engine.tokenizer.encode(PROMPT)
    gen = engine.generate(ids, params)
    stamps = []
    for _ in gen:
        stamps.append(time.perf_counter())
    assert len(gen.tokens) == params.max_new_tokens, gen.finish_reason
    return decode_rate(stamps, len(gen.tokens))


def over_http(client: httpx.Client, params: SamplingParams) -> float:
    body = {"prompt": PROMPT, "max_new_tokens": params.max_new_tokens, "seed": params.seed}
    stamps = []
    with client.stream("POST", "/generate/stream", json=body) as r:
        r.raise_for_status()
        for _ in r.iter_raw():
            stamps.append(time.perf_counter())
    # chunks can coalesce on a busy machine; the first and last still bound the decode
    return decode_rate([stamps[0], stamps[-1]], params.max_new_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quants", default="q4_0,q8_0")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    params = SamplingParams(max_new_tokens=args.tokens, seed=1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, quant in enumerate(args.quants.split(",")):
            t = time.perf_counter()
            model = gpt2_small(tmp / f"gpt2-small-{quant}.bin", quant)
            print(f"{quant}: wrote {model.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            engine = Engine(model, threads=args.threads, instance=100 + i)
            server = start_server(model, tmp / "log.jsonl", workers=1, threads=args.threads)
            try:
                with httpx.Client(base_url=server.url, timeout=600) as client:
                    in_process(engine, SamplingParams(max_new_tokens=8))  # warm both paths
                    over_http(client, SamplingParams(max_new_tokens=8))
                    inproc, http = [], []
                    for n in range(args.rounds):
                        inproc.append(in_process(engine, params))
                        http.append(over_http(client, params))
                        print(f"{quant} round {n + 1}: in-process {inproc[-1]:.1f}, HTTP {http[-1]:.1f} tok/s",
                              file=sys.stderr)
            finally:
                server.stop()
                engine.close()
            results[quant] = {
                "in_process_tps": statistics.median(inproc), "http_tps": statistics.median(http),
                "ratio": statistics.median(h / p for h, p in zip(http, inproc)),
                "rounds": args.rounds, "tokens": args.tokens, "threads": args.threads,
            }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"decode tokens/s, median of {args.rounds} interleaved rounds of {args.tokens} tokens, "
          f"{args.threads} threads, GPT-2-small shape")
    print("| quant | in-process tok/s | HTTP stream tok/s | HTTP / in-process |")
    print("|---|---|---|---|")
    for quant, r in results.items():
        print(f"| {quant} | {r['in_process_tps']:.1f} | {r['http_tps']:.1f} | {r['ratio']:.3f} |")


if __name__ == "__main__":
    main()
