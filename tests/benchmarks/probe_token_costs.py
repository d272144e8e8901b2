"""Where a streamed token's time goes on the llama.cpp engine, beside the model's own step.

Run by hand (not in CI): .venv/bin/python tests/benchmarks/probe_token_costs.py [--requests 10]
GPT-2-small-shaped q4_0 model written by the project's writer and copied into a GGUF; 2 threads.

1. The sampler at the defaults on the model's logits: right after a llama_decode (as it runs in
   the step loop: the decode has evicted the interpreter's and numpy's code and data from the
   caches) and again in a tight loop (everything hot). Medians, microseconds.
2. CPU time per streamed token, by thread, of a live server (one slot, `POST /generate/stream`,
   128 tokens a request), from /proc: the event loop (the process's main thread), the two
   busiest threads (the step thread and llama.cpp's OpenMP worker, both spinning between steps),
   and the rest (the request's thread, the log writer). On two cores, everything that is not
   decoding runs on a core a decoding thread wants.
3. What streaming itself costs: the decode tokens/s (from the request log's timings) of
   `POST /generate/stream` against `POST /generate` (no per-token work on the event loop or in
   the client) on the same server, alternating, at 1 and 2 threads; median of the paired ratios.
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
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, gpt2_small, start_server  # noqa: E402

sys.path.insert(0, str(ROOT))
from service.engine.llamacpp_backend import LlamaContext  # noqa: E402
from service.engine.sampling import Sampler, SamplingParams  # noqa: E402
from service.formats.ggml_to_gguf import ggml_to_gguf  # noqa: E402
from service.runtime.loading import gguf_tokenizer_for  # noqa: E402


def sampler_costs(model: Path, gguf: Path, steps: int = 200) -> tuple[float, float]:
    """(us after a decode, us hot) for one default-parameter draw, medians over `steps`."""
    ctx = LlamaContext(gguf, parallel=1, threads=2, tokenizer=gguf_tokenizer_for(model, gguf))
    try:
        lc, b = ctx._lc, ctx._batch
        sampler, history = Sampler(SamplingParams(seed=1)), list(range(300, 372))
        cold, hot = [], []
        for pos in range(steps):  # one token a step, as a stream decodes
            b.token[0], b.pos[0], b.n_seq_id[0], b.logits[0] = 400 + pos % 50, pos, 1, 1
            b.seq_id[0][0] = 0
            b.n_tokens = 1
            lc.llama_decode(ctx._ctx, b)
            logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx._ctx, 0), shape=(ctx.vocab_size,))
            t0 = time.perf_counter()
            sampler(logits, history)
            cold.append(time.perf_counter() - t0)
            for _ in range(3):  # the same draw again, now that it is all in the caches
                t0 = time.perf_counter()
                sampler(logits, history)
                hot.append(time.perf_counter() - t0)
        return statistics.median(cold) * 1e6, statistics.median(hot) * 1e6
    finally:
        ctx.close()


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def serving_costs(gguf: Path, tmp: Path, requests: int) -> tuple[float, dict[str, float]]:
    """(tokens/s, CPU microseconds per token by kind of thread) of a live server on one slot."""
    server = start_server(gguf, tmp / "log.jsonl", engine="llamacpp", parallel=1, threads=2)
    body = {"prompt": "abcdefgh", "max_new_tokens": 128, "seed": 1, "cache_prompt": False}
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            def stream() -> None:
                with client.stream("POST", "/generate/stream", json=body) as r:
                    r.raise_for_status()
                    for _ in r.iter_raw():
                        pass

            stream()  # warm up
            before, t0 = thread_cpu(server.proc.pid), time.perf_counter()
            for _ in range(requests):
                stream()
            wall, after = time.perf_counter() - t0, thread_cpu(server.proc.pid)
    finally:
        server.stop()
    tokens = requests * 128
    used = {tid: (after[tid] - before.get(tid, 0.0)) / tokens * 1e6 for tid in after}
    main = used.pop(server.proc.pid)
    busiest = sorted(used, key=used.get, reverse=True)[:2]
    return tokens / wall, {"event loop (main thread)": main,
                           "step thread + OpenMP worker": sum(used.pop(t) for t in busiest),
                           "the rest (request thread, log writer, ...)": sum(used.values())}


def streaming_cost(gguf: Path, tmp: Path, threads: int, pairs: int) -> tuple[float, float, float]:
    """(stream tok/s, non-stream tok/s, median paired ratio): decode speed from the log's timings."""
    log = tmp / f"log-stream-{threads}.jsonl"
    server = start_server(gguf, log, engine="llamacpp", parallel=1, threads=threads)
    body = {"prompt": "abcdefgh", "max_new_tokens": 256, "seed": 1, "cache_prompt": False}
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for _ in range(pairs + 1):  # the first pair warms up
                with client.stream("POST", "/generate/stream", json=body) as r:
                    r.raise_for_status()
                    for _ in r.iter_raw():
                        pass
                client.post("/generate", json=body).raise_for_status()
    finally:
        server.stop()
    rates: dict[str, list[float]] = {"/generate/stream": [], "/generate": []}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        rates[rec["endpoint"]].append(rec["timings"]["tokens_per_second"])
    streamed, whole = rates["/generate/stream"][1:], rates["/generate"][1:]
    return (statistics.median(streamed), statistics.median(whole),
            statistics.median(a / b for a, b in zip(streamed, whole)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="minivault-costs-") as tmp:
        model = gpt2_small(Path(tmp) / "model.bin", "q4_0")
        gguf = ggml_to_gguf(model, Path(tmp) / "model.gguf")
        cold, hot = sampler_costs(model, gguf)
        print(f"sampler at the defaults: {cold:.0f} us right after a decode, {hot:.0f} us hot")
        rate, per = serving_costs(gguf, Path(tmp), args.requests)
        print(f"live server, one stream, 2 threads: {rate:.0f} tok/s; CPU us per token:")
        for name, us in per.items():
            print(f"  {name}: {us:.0f}")
        for threads in (1, 2):
            streamed, whole, ratio = streaming_cost(gguf, Path(tmp), threads, args.requests)
            print(f"decode, {threads} thread(s): streamed {streamed:.0f} tok/s, not streamed {whole:.0f} tok/s: "
                  f"{ratio:.3f}x (paired)")


if __name__ == "__main__":
    main()
