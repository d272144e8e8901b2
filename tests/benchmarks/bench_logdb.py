"""The request log's costs: throughput with the SQLite log on/off and per fsync mode (paired rounds
under load), database size per 10,000 records, and `minivault logs --stats` time over 100,000 records.

    .venv/bin/python tests/benchmarks/bench_logdb.py [--rounds 7] [--requests 48] [--records 100000]

Servers run the tiny test model (fast requests, so the log's share of each request is as large as
it gets); each round sends the same burst to every configuration in turn, in a rotating order.
Prints Markdown tables: medians over the rounds and the ratio to the baseline (DB off, fsync off).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx  # noqa: E402
from common import ROOT  # noqa: E402

from service.formats.ggml.tiny import make_tiny_gpt2  # noqa: E402
from service.runtime import logdb, logquery  # noqa: E402
from service.runtime.logbook import LogBook  # noqa: E402
from service.runtime.logdb import LogDB  # noqa: E402
from tests.support.server import LiveServer  # noqa: E402

CONFIGS = {  # name -> server settings
    "db off, fsync off": {"MINIVAULT_LOG_DB": "off", "MINIVAULT_LOG_FSYNC": "off"},
    "db on, fsync off": {"MINIVAULT_LOG_FSYNC": "off"},
    "db on, fsync 100 ms": {"MINIVAULT_LOG_FSYNC": "100"},
    "db on, fsync record": {"MINIVAULT_LOG_FSYNC": "record"},
}


def burst(url: str, requests: int, concurrency: int, tokens: int) -> float:
    """Requests per second for `requests` /generate calls, `concurrency` at a time."""
    body = {"prompt": "The quick brown fox jumps over the lazy dog", "max_new_tokens": tokens, "temperature": 0}
    with httpx.Client(base_url=url, timeout=60) as c, ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        for r in pool.map(lambda _: c.post("/generate", json=body), range(requests)):
            r.raise_for_status()
        return requests / (time.perf_counter() - start)


def throughput(tmp: Path, rounds: int, requests: int, concurrency: int, tokens: int) -> None:
    model = tmp / "tiny" / "model.bin"
    model.parent.mkdir()
    make_tiny_gpt2(model, scale=0.5, no_eos=True)
    servers = {name: LiveServer(model, tmp / name.replace(" ", "_").replace(",", "") / "log.jsonl",
                                MINIVAULT_WORKERS="2", MINIVAULT_MAX_QUEUE="64", **env)
               for name, env in CONFIGS.items()}
    results: dict[str, list[float]] = {name: [] for name in CONFIGS}
    try:
        for server in servers.values():
            burst(server.url, 8, concurrency, tokens)  # warm-up
        names = list(CONFIGS)
        for i in range(rounds):
            for name in names[i % len(names):] + names[: i % len(names)]:
                results[name].append(burst(servers[name].url, requests, concurrency, tokens))
    finally:
        for server in servers.values():
            server.stop()
    base = statistics.median(results[names[0]])
    print(f"\n{rounds} paired rounds of {requests} requests ({concurrency} at a time, {tokens} tokens, 2 workers)\n")
    print("| log configuration | requests/s (median) | min-max | vs db off |")
    print("|---|---|---|---|")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} | {min(values):.1f}-{max(values):.1f} | {med / base:.3f} |")


def record(i: int, now: dt.datetime) -> dict:
    """A realistic record: a ~300-character prompt and a ~600-character response."""
    ts = (now - dt.timedelta(seconds=(100_000 - i) * 30)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    status = "ok" if i % 20 else ("error" if i % 40 else "timeout")
    return {
        "id": os.urandom(16).hex(), "ts": ts, "endpoint": "/generate" if i % 3 else "/generate/stream",
        "model": f"model-{i % 3}", "model_sha256": "ab" * 32, "engine": "ctransformers", "version": "0.1.0",
        "status": status, "finish_reason": "length", "prompt": f"prompt {i} " + "lorem ipsum dolor " * 16,
        "response": f"response {i} " + "sit amet consectetur " * 28,
        "params": {"max_new_tokens": 128, "temperature": 0.8, "top_k": 40, "top_p": 0.95,
                   "repetition_penalty": 1.1, "seed": i * 7919, "stop": []},
        "usage": {"prompt_tokens": 60, "completion_tokens": 128},
        "timings": {"queue_ms": 0.2, "first_token_ms": 20.0 + i % 50, "total_ms": 900.0 + i % 400,
                    "tokens_per_second": 130.0 + i % 30},
    }


def writer_cost(tmp: Path, count: int = 1000, rounds: int = 5) -> None:
    """CPU time of the writer thread per record, records arriving one at a time (a transaction each)."""
    now = dt.datetime.now(dt.timezone.utc)
    configs = {"JSONL only": ("off", False), "JSONL + SQLite": ("off", True), "JSONL + SQLite, fsync record": ("record", True)}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    for r in range(rounds):
        for name, (fsync, db) in configs.items():
            d = tmp / f"writer-{r}-{len(results[name])}-{name.replace(' ', '').replace(',', '').replace('+', '')}"
            book = LogBook(d / "log.jsonl", fsync=fsync, mirror=LogDB(d / "log.db") if db else None)
            records = [record(i, now) for i in range(count)]
            wall, cpu = time.perf_counter(), time.process_time()
            for i, rec in enumerate(records):
                book.write(rec)
                while book.written <= i:
                    time.sleep(0.0001)
            results[name].append(((time.perf_counter() - wall) / count * 1e6, (time.process_time() - cpu) / count * 1e6))
            book.close()
    print(f"\n| writer, one record at a time ({rounds} paired rounds of {count}) | wall µs/record | process CPU µs/record |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(v[0] for v in values):.0f} | {statistics.median(v[1] for v in values):.0f} |")


def size_and_stats(tmp: Path, records: int) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    small = tmp / "size"
    book = LogBook(small / "log.jsonl", mirror=LogDB(small / "log.db"))
    for i in range(10_000):
        book.write(record(i, now))
    start = time.perf_counter()
    book.close(timeout=600)
    write_s = time.perf_counter() - start
    db_mb = (small / "log.db").stat().st_size / 1e6  # closed: the WAL is checkpointed into it
    jsonl_mb = (small / "log.jsonl").stat().st_size / 1e6
    print("\n| per 10,000 records | size |\n|---|---|")
    print(f"| log.db (SQLite, prompts and responses kept) | {db_mb:.2f} MB |")
    print(f"| log.jsonl | {jsonl_mb:.2f} MB |")
    print(f"| writer thread: JSONL + SQLite for 10,000 queued records | {write_s:.2f} s |")

    big = tmp / "big"
    book = LogBook(big / "log.jsonl", mirror=LogDB(big / "log.db"))
    for i in range(records):
        book.write(record(i, now))
    book.close(timeout=1800)
    env = os.environ | {"MINIVAULT_LOG_FILE": str(big / "log.jsonl")}

    def command(*args: str) -> tuple[float, float]:
        """Median wall and CPU (user + sys) seconds of a whole `minivault` command, over 5 runs."""
        wall, cpu = [], []
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env=env, capture_output=True, check=True)
            wall.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return statistics.median(wall), statistics.median(cpu)

    conn = logdb.connect(big / "log.db")
    query = []
    for _ in range(5):
        start = time.process_time()
        logquery.stats(conn, logquery.Filters())
        query.append(time.process_time() - start)
    conn.close()
    print(f"\n| over {records:,} records (median of 5) | wall | CPU |\n|---|---|---|")
    print(f"| the `--stats` query itself (in-process) | - | {statistics.median(query):.2f} s |")
    for label, args in ((f"`minivault logs --stats`, all {records:,} records", ["logs", "--stats"]),
                        ("`minivault logs --stats --since 1d` (2,880 records)", ["logs", "--stats", "--since", "1d"]),
                        ("`minivault --help` (start-up alone, for comparison)", ["--help"])):
        wall, cpu = command(*args)
        print(f"| {label} | {wall:.2f} s | {cpu:.2f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_throughput:
            throughput(Path(tmp), args.rounds, args.requests, args.concurrency, args.tokens)
        writer_cost(Path(tmp))
        size_and_stats(Path(tmp), args.records)


if __name__ == "__main__":
    main()
