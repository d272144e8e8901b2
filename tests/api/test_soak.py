"""Soak: a few thousand mixed requests against a live server; resources stay flat, nothing is lost."""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import time
from collections import Counter

import httpx
import pytest

from tests.support.server import new_records, wait_idle

REQUESTS = 2000
RSS_GROWTH_MB = 40  # the bounds the README states
FD_GROWTH = 4
THREAD_GROWTH = 2


def resources(pid: int) -> dict[str, int]:
    """RSS (kB), open file descriptors and threads of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"])}


def one(client: httpx.Client, url: str, i: int, kind: str) -> tuple[str, int]:
    """Send request i of a kind; (kind, status). A refused client backs off a little, as clients do."""
    result = _send(client, url, i, kind)
    if result[1] == 429:
        time.sleep(0.05)
    return result


def _send(client: httpx.Client, url: str, i: int, kind: str) -> tuple[str, int]:
    headers = {"X-Request-ID": f"soak-{i}"}
    if kind == "complete":
        r = client.post(url + "/generate", json={"prompt": f"soak {i}", "max_new_tokens": 3}, headers=headers)
        return kind, r.status_code
    if kind == "timeout":
        r = client.post(url + "/generate", json={"prompt": f"soak {i}", "max_new_tokens": 900}, headers=headers)
        return kind, r.status_code
    with client.stream("POST", url + "/generate/stream", json={"prompt": f"soak {i}", "max_new_tokens": 900},
                       headers=headers) as r:
        for _ in r.iter_raw():
            break  # one piece, then leave: the server must cancel it
        return kind, r.status_code


@pytest.mark.slow
def test_a_few_thousand_mixed_requests_leave_resources_flat_and_each_logged_once(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS=2, MINIVAULT_MAX_QUEUE=2, MINIVAULT_TIMEOUT_S=0.3)
    rng = random.Random(7)
    kinds = rng.choices(["complete", "cancelled", "timeout"], weights=[80, 15, 5], k=REQUESTS)
    results: list[tuple[str, int]] = []
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16)) as client:
        warm = 100
        with cf.ThreadPoolExecutor(5) as pool:
            results += pool.map(lambda i: one(client, server.url, i, kinds[i]), range(warm))
        wait_idle(server.url, timeout=60)
        before = resources(server.proc.pid)
        with cf.ThreadPoolExecutor(5) as pool:
            results += pool.map(lambda i: one(client, server.url, i, kinds[i]), range(warm, REQUESTS))
        wait_idle(server.url, timeout=60)
    after = resources(server.proc.pid)
    by = Counter(results)
    print(f"soak: {REQUESTS} requests {dict(by)}; before {before}, after {after}")
    assert {s for _, s in results} <= {200, 429}, by
    refused = sum(n for (_, s), n in by.items() if s == 429)
    assert refused > 0 and REQUESTS - refused > 0.25 * REQUESTS  # the mix really happened
    admitted = REQUESTS - refused
    records = new_records(server.log_file, 0, count=admitted, timeout=30)
    ids = Counter(r["id"] for r in records)
    assert len(records) == admitted and max(ids.values()) == 1  # every admitted request logged exactly once
    statuses = Counter(r["status"] for r in records)
    assert statuses["ok"] > 0 and statuses["cancelled"] > 0 and statuses["timeout"] > 0, statuses
    assert after["rss_kb"] - before["rss_kb"] < RSS_GROWTH_MB * 1024, (before, after)
    assert after["fds"] - before["fds"] <= FD_GROWTH, (before, after)
    assert after["threads"] - before["threads"] <= THREAD_GROWTH, (before, after)
