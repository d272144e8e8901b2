"""`minivault bench` against a real server: counts, percentiles, the duration cap, errors by status."""

from __future__ import annotations

import json
import random
import time
from typing import Iterator

import numpy as np
import pytest
from typer.testing import CliRunner

from service.cli.bench import Outcome, percentile, stats, summarise
from service.cli.main import app
from tests.support.server import LiveServer, free_port, new_records, read_log, wait_idle

runner = CliRunner()


@pytest.fixture(scope="module")
def server(long_model, tmp_path_factory) -> Iterator[LiveServer]:
    """One worker on a model that never stops early: every request streams max_new_tokens tokens."""
    log = tmp_path_factory.mktemp("bench") / "logs" / "log.jsonl"
    live = LiveServer(long_model, log, MINIVAULT_THREADS="1", MINIVAULT_WORKERS="1", MINIVAULT_MAX_QUEUE="16")
    yield live
    live.stop()


def bench(*args: str):
    return runner.invoke(app, ["bench", *args])


def test_small_run_reports_every_request(server):
    before = len(read_log(server.log_file))
    result = bench("--url", server.url, "-c", "3", "-n", "7", "--max-new-tokens", "24", "--seed", "1", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["sent"], report["completed"], report["failed"], report["cut_off"]) == (7, 7, 0, 0)
    assert report["errors"] == {} and report["model"] == "long" and report["concurrency"] == 3
    assert report["params"] == {"max_new_tokens": 24, "seed": 1, "prompt_chars": len(
        "The quick brown fox jumps over the lazy dog. Once upon a time")}
    records = new_records(server.log_file, before, 7)
    assert len(records) == 7 and all(r["endpoint"] == "/generate/stream" for r in records)
    assert all(r["usage"]["completion_tokens"] == 24 for r in records)
    # chunks: one per token, except tokens that end inside a UTF-8 character (merged with the next)
    assert 7 <= report["tokens"] <= 7 * 24
    for key in ("ttft_ms", "itl_ms", "latency_ms", "stream_tokens_per_s"):
        s = report[key]
        assert s["p50"] <= s["p95"] <= s["p99"], key
    assert report["ttft_ms"]["count"] == 7 and report["itl_ms"]["count"] == report["tokens"] - 7
    assert report["latency_ms"]["p99"] >= report["ttft_ms"]["p99"]
    assert report["requests_per_s"] == pytest.approx(7 / report["wall_s"], rel=0.01)
    assert report["tokens_per_s"] == pytest.approx(report["tokens"] / report["wall_s"], rel=0.01)


def test_human_report(server):
    result = bench("--url", server.url, "-c", "2", "-n", "2", "--max-new-tokens", "8")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "2 sent of 2: 2 completed, 0 failed" in out
    for label in ("throughput", "TTFT", "ITL", "latency", "stream tok/s", "errors          none"):
        assert label in out


def test_duration_caps_the_run_and_frees_the_server(server):
    wait_idle(server.url)
    started = time.monotonic()
    result = bench("--url", server.url, "-c", "2", "-n", "500", "--max-new-tokens", "900", "--prompt", "a",
                   "--duration", "0.5", "--json")
    elapsed = time.monotonic() - started
    report = json.loads(result.stdout)
    assert report["cut_off"] >= 1 and report["sent"] < 500
    assert report["wall_s"] < 5 and elapsed < 10
    if report["completed"] == 0:
        assert result.exit_code == 1 and "no request completed" in result.stderr
    wait_idle(server.url)  # the cut-off streams were closed, so the worker is free again


def test_errors_are_counted_by_status_with_the_servers_message(server):
    result = bench("--url", server.url, "-c", "2", "-n", "4", "--prompt", "word " * 100, "--max-new-tokens", "1000",
                   "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["errors"] == {"422": 4} and report["completed"] == 0
    assert "context" in report["error_examples"]["422"]


def test_queue_full_shows_up_as_429(long_model, start_server):
    busy = start_server(long_model, MINIVAULT_MAX_QUEUE="0", MINIVAULT_THREADS="1")
    result = bench("--url", busy.url, "-c", "4", "-n", "4", "--max-new-tokens", "150", "--prompt", "a", "--json")
    report = json.loads(result.stdout)
    assert report["completed"] >= 1 and report["errors"].get("429", 0) >= 1
    assert report["completed"] + report["errors"]["429"] == 4


def test_unreachable_server():
    result = bench("--url", f"http://127.0.0.1:{free_port()}", "-n", "1")
    assert result.exit_code == 3 and result.stdout == ""
    assert "cannot reach the server" in result.stderr


def test_percentiles_match_numpy():
    rng = random.Random(0)
    for n in (1, 2, 5, 101):
        values = [rng.random() * 100 for _ in range(n)]
        for q in (50, 95, 99):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None
    assert stats([0.001, 0.002, 0.003], 1000).p50 == 2.0


def test_summary_keeps_cut_off_and_failed_apart():
    ok = Outcome(status=200, ttft=0.01, itl=[0.002, 0.004], tokens=3, latency=0.02)
    cut = Outcome(status=200, ttft=0.01, itl=[0.002], tokens=2, latency=0.5, cut_off=True)
    busy = Outcome(status=429, error="429", detail="queue full")
    report = summarise("u", "m", {"prompt": "p", "max_new_tokens": 3}, [ok, cut, busy],
                       requests=3, concurrency=2, wall=1.0)
    assert (report.completed, report.cut_off, report.failed) == (1, 1, 1)
    assert report.tokens == 3 and report.errors == {"429": 1} and report.error_examples == {"429": "queue full"}
    assert report.stream_tokens_per_s.p50 == pytest.approx(2 / 0.006, rel=1e-3)
    assert report.itl_ms.count == 2 and report.ttft_ms.p50 == 10.0
