"""Replicas behind HAProxy: compose.yaml's `replicas` profile with 2 replicas, on the container engine.

Spread (per-replica log counts), overflow held by the LB instead of refused, and one
replica stopped mid-load: its streams drain, new requests go to the other, nothing fails.
Each replica gets MINIVAULT_MAX_QUEUE=1 (room for 2 requests), so overload is easy to provoke.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import httpx
import pytest

from tests.support.long_model import write_long_model
from tests.support.replicas import Replicas, build_lb, tokens_per_second
from tests.support.server import read_log
from tests.test_container import build_image, run

pytestmark = pytest.mark.container

STREAM_SECONDS = 6


@pytest.fixture(scope="module")
def images(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """MiniVault's image and the LB's, built from the repo (removed afterwards; layers stay cached)."""
    image = build_image(request, "minivault-test")
    lb = f"minivault-lb-test:{image.split(':')[1]}"
    build_lb(lb)
    yield image, lb
    run(["docker", "rmi", "--no-prune", image, lb], check=False)


@pytest.fixture(scope="module")
def replicas(images, tmp_path_factory, request) -> Iterator[Replicas]:
    """Two replicas and the LB, up and routed to."""
    stack = Replicas(*images, tmp_path_factory.mktemp("replicas"), MINIVAULT_MAX_QUEUE="1")
    model = stack.models / "long" / "model.bin"
    model.parent.mkdir()
    write_long_model(model)
    try:
        stack.scale(2)
        yield stack
    finally:
        if request.session.testsfailed:
            logs = stack("logs", "--no-color", check=False, timeout=60)
            print(logs.stdout[-8000:], logs.stderr[-2000:])
        stack("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=180)


def generate(url: str, tokens: int, seed: int) -> httpx.Response:
    body = {"prompt": "hello", "max_new_tokens": tokens, "seed": seed}
    return httpx.post(url + "/generate", json=body, timeout=120)


def test_requests_spread_over_both_replicas_with_their_own_logs(replicas: Replicas) -> None:
    ids = replicas.replicas()
    before = replicas.counts()
    with ThreadPoolExecutor(4) as pool:  # 4 at once: 2 per replica fills both (1 running, 1 queued)
        responses = list(pool.map(lambda i: generate(replicas.url, 24, i), range(12)))
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    served = {r.json()["id"] for r in responses}

    time.sleep(1)  # the log writer thread
    after = replicas.counts()
    hosts = [replicas.hostname(c) for c in ids]
    assert sorted(after) == sorted(hosts), f"one log folder per replica expected: {after}"
    assert not (replicas.logs / "log.jsonl").exists(), "a shared log file"
    new = {h: after[h] - before.get(h, 0) for h in hosts}
    assert sum(new.values()) == 12 and min(new.values()) >= 3, new
    for container, host in zip(ids, hosts):
        records = read_log(replicas.log_of(container))
        assert {r["replica"] for r in records} == {host}
    logged = {r["id"] for c in ids for r in read_log(replicas.log_of(c))}
    assert served <= logged


def test_more_requests_than_the_replicas_admit_wait_in_the_lb_instead_of_429(replicas: Replicas) -> None:
    """2 replicas x (1 worker + 1 queued) = 4 places; 8 at once would get 4 x 429 without the LB's limit."""
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: generate(replicas.url, 16, 100 + i), range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [(r.status_code, r.text) for r in responses]


def test_a_replica_stopped_mid_load_drains_and_the_other_takes_new_requests(replicas: Replicas) -> None:
    ids = replicas.replicas()
    victim, survivor = ids
    victim_log, survivor_log = replicas.log_of(victim), replicas.log_of(survivor)
    with httpx.Client(base_url=replicas.url, timeout=120) as client:
        n = max(32, min(900, int(tokens_per_second(client) * STREAM_SECONDS)))
    time.sleep(1)
    before = {victim: len(read_log(victim_log)), survivor: len(read_log(survivor_log))}

    # one long stream on each replica (least connections puts the second on the idle one)
    results: list[tuple[int, str]] = [(0, "")] * 2
    first = [threading.Event(), threading.Event()]

    def stream(k: int) -> None:
        text, status = [], 0
        try:
            body = {"prompt": "hello", "max_new_tokens": n, "seed": k}
            with httpx.stream("POST", replicas.url + "/generate/stream", json=body, timeout=120) as r:
                status = r.status_code
                for piece in r.iter_text():
                    text.append(piece)
                    first[k].set()
        finally:
            first[k].set()
            results[k] = (status, "".join(text))

    streams = [threading.Thread(target=stream, args=(k,)) for k in range(2)]
    for t in streams:
        t.start()
        assert first[streams.index(t)].wait(60), "no first chunk"
    assert len(read_log(victim_log)) == before[victim]  # both still running

    stop = subprocess.Popen(["docker", "stop", "--time", "60", victim], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # new requests while the victim drains, one at a time (the survivor's stream holds its one
    # worker, its queue has room for one more): each must succeed, on the survivor
    during: list[httpx.Response] = []
    deadline = time.monotonic() + STREAM_SECONDS / 2
    while time.monotonic() < deadline:
        during.append(generate(replicas.url, 8, 200 + len(during)))
    for t in streams:
        t.join(120)
    out, err = stop.communicate(timeout=120)
    assert stop.returncode == 0, out + err

    assert [r.status_code for r in during] == [200] * len(during), [(r.status_code, r.text) for r in during]
    assert len(during) >= 1
    assert [s for s, _ in results] == [200, 200]
    state = json.loads(run(["docker", "inspect", victim]).stdout)[0]["State"]
    assert not state["Running"] and state["ExitCode"] == 0, state

    time.sleep(1)
    victim_new = read_log(victim_log)[before[victim]:]
    survivor_new = read_log(survivor_log)[before[survivor]:]
    # the victim finished its stream whole (and whatever reached it before the SIGTERM did)
    victim_streams = [r for r in victim_new if r["endpoint"] == "/generate/stream"]
    assert [(r["status"], r["usage"]["completion_tokens"]) for r in victim_streams] == [("ok", n)]
    assert victim_streams[0]["response"] in {text for _, text in results}
    assert all(r["status"] == "ok" for r in victim_new + survivor_new)
    # exactly one record for each request: the 2 streams and every new one
    ids = [r["id"] for r in victim_new + survivor_new]
    assert sorted(ids) == sorted({r.json()["id"] for r in during} | {r["id"] for r in victim_streams}
                                 | {r["id"] for r in survivor_new if r["endpoint"] == "/generate/stream"})
    assert len(ids) == len(during) + 2
    assert len(survivor_new) >= len(during), "new requests did not go to the survivor"
