"""The cost of the metrics and API-key layers on streaming: one server with both on, one with both off.

Per model, two live servers run the same model file: "off" (MINIVAULT_METRICS=false, no keys) and
"on" (metrics, MINIVAULT_API_KEYS, every request with a bearer key, and /metrics scraped every second
while it runs, 15 times Prometheus's default rate). Rounds alternate off/on in one run so machine
noise hits both alike. Each round streams --tokens tokens (decode tokens/s, first to last chunk) and
sends --short one-token requests (the per-request latency, where a per-request layer would show).
The table gives medians and on/off ratios.

    .venv/bin/python tests/benchmarks/bench_security_metrics.py [--rounds 7] [--tokens 128] [--short 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpt2_small, start_server  # noqa: E402

from tests.support.long_model import write_long_model  # noqa: E402

KEY = "bench-key-0123456789abcdef"
PROMPT = "Once upon a time"


def stream_rate(client: httpx.Client, tokens: int) -> float:
    """Decode tokens/s of one streamed request (first chunk to last)."""
    stamps = []
    with client.stream("POST", "/generate/stream", json={"prompt": PROMPT, "max_new_tokens": tokens, "seed": 1}) as r:
        r.raise_for_status()
        for _ in r.iter_raw():
            stamps.append(time.perf_counter())
    return (tokens - 1) / (stamps[-1] - stamps[0])


def short_latency(client: httpx.Client, n: int) -> float:
    """Median wall time in ms of n one-token streamed requests."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with client.stream("POST", "/generate/stream", json={"prompt": PROMPT, "max_new_tokens": 1}) as r:
            r.raise_for_status()
            r.read()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


class Scraper(threading.Thread):
    """GET /metrics every second, as a (very eager) Prometheus would."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.count = url, threading.Event(), 0

    def run(self) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as c:
            while not self.stop.wait(1.0):
                c.get(self.url + "/metrics").raise_for_status()
                self.count += 1


def layer_costs(n: int = 20_000) -> dict[str, float]:
    """Microseconds per call of what the layers add to a request, in-process (median of 5 runs)."""
    import timeit

    from prometheus_client import generate_latest

    from service.api.security import KeyRing
    from service.engine.sampling import SamplingParams
    from service.runtime.jobs import Job
    from service.runtime.metrics import Load, Metrics

    metrics = Metrics("bench", "0", "ctransformers", lambda: Load("bench", True, 1.0, 1, 0, 0))
    job = Job("/generate/stream", PROMPT, [1, 2, 3, 4], SamplingParams(max_new_tokens=128))
    job.started_at, job.ended_at = job.admitted_at + 0.001, job.admitted_at + 1.0
    ring = KeyRing([KEY, "another-key-0123456789"])
    calls = {
        "metrics per job (observe_job)": lambda: metrics.observe_job(job),
        "metrics per refused request": lambda: metrics.observe_request("/generate", "refused_422"),
        "key check (2 keys, constant time)": lambda: ring.identify(KEY),
    }
    out = {name: min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6 for name, f in calls.items()}
    out["one /metrics render"] = min(timeit.repeat(lambda: generate_latest(metrics.registry), number=200,
                                                   repeat=5)) / 200 * 1e6
    return out


def models(tmp: Path, which: list[str]) -> dict[str, Path]:
    out = {}
    for name in which:
        path = tmp / name / "model.bin"
        path.parent.mkdir()
        t = time.perf_counter()
        if name == "gpt2-small-q4_0":
            gpt2_small(path, "q4_0")
        else:  # a fast model: the per-request share of the layers is largest here
            write_long_model(path)
        print(f"{name}: wrote {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        out[name] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--short", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="gpt2-small-q4_0,tiny-384x6")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--micro-only", action="store_true", help="only the in-process cost per call")
    args = ap.parse_args()
    costs = layer_costs()
    print("in-process cost per call (best of 5):", file=sys.stderr)
    for name, us in costs.items():
        print(f"  {name}: {us:.1f} µs", file=sys.stderr)
    if args.micro_only:
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, model in models(tmp, args.models.split(",")).items():
            off = start_server(model, tmp / f"{name}-off.jsonl", workers=1, threads=args.threads, metrics="false")
            on = start_server(model, tmp / f"{name}-on.jsonl", workers=1, threads=args.threads, api_keys=KEY)
            scraper = Scraper(on.url)
            try:
                with httpx.Client(base_url=off.url, timeout=600) as c_off, \
                        httpx.Client(base_url=on.url, timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as c_on:
                    for c in (c_off, c_on):  # warm both
                        stream_rate(c, 8)
                    scraper.start()
                    rates = {"off": [], "on": []}
                    lat = {"off": [], "on": []}
                    for n in range(args.rounds):
                        for label, c in (("off", c_off), ("on", c_on)) if n % 2 == 0 else (("on", c_on), ("off", c_off)):
                            rates[label].append(stream_rate(c, args.tokens))
                            lat[label].append(short_latency(c, args.short))
                        print(f"{name} round {n + 1}: off {rates['off'][-1]:.1f} tok/s {lat['off'][-1]:.1f} ms, "
                              f"on {rates['on'][-1]:.1f} tok/s {lat['on'][-1]:.1f} ms", file=sys.stderr)
            except BaseException:
                for label, server in (("off", off), ("on", on)):
                    server.stop()
                    print(f"--- {label} server (exit {server.proc.returncode}):\n{server.output[-3000:]}", file=sys.stderr)
                raise
            finally:
                scraper.stop.set()
                off.stop()
                on.stop()
            results[name] = {
                "off_tps": statistics.median(rates["off"]), "on_tps": statistics.median(rates["on"]),
                "tps_ratio": statistics.median(a / b for a, b in zip(rates["on"], rates["off"])),
                "off_short_ms": statistics.median(lat["off"]), "on_short_ms": statistics.median(lat["on"]),
                "short_ratio": statistics.median(a / b for a, b in zip(lat["on"], lat["off"])),
                "scrapes": scraper.count, "rounds": args.rounds, "tokens": args.tokens, "threads": args.threads,
            }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"median of {args.rounds} alternating rounds: {args.tokens}-token streams and {args.short} one-token "
          f"requests each, {args.threads} thread(s); on = metrics + API key + /metrics scraped every 1 s")
    print("| model | off tok/s | on tok/s | on/off | off 1-token ms | on 1-token ms | on/off |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['off_tps']:.1f} | {r['on_tps']:.1f} | {r['tps_ratio']:.3f} | "
              f"{r['off_short_ms']:.1f} | {r['on_short_ms']:.1f} | {r['short_ratio']:.3f} |")


if __name__ == "__main__":
    main()
