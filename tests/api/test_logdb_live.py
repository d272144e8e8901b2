"""The request log of a real server: SQLite rows equal the JSONL, kill -9, SIGHUP, readers under load."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from service.formats.manifest import file_sha256
from service.runtime import logdb
from tests.support.server import ROOT, LiveServer, new_records, read_log, wait_idle

LONG = {"max_new_tokens": 1000}  # beyond what 1 s can give on any machine here (the long model: ~200-400 tok/s)


def rows(db) -> list[dict]:
    conn = logdb.connect(db)
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY seq")]
    finally:
        conn.close()


def line_hashes(log_file) -> set[str]:
    return {hashlib.sha1(line).hexdigest() for line in log_file.read_bytes().splitlines(keepends=True)}


def test_concurrent_requests_cancelled_and_timed_out_give_one_row_per_jsonl_record(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS="2", MINIVAULT_MAX_QUEUE="32", MINIVAULT_TIMEOUT_S="1")
    db = server.log_file.with_name("log.db")

    def full(i: int) -> None:
        r = httpx.post(server.url + "/generate", json={"prompt": f"request {i}", "max_new_tokens": 4}, timeout=60)
        assert r.status_code == 200

    def timed_out(i: int) -> None:
        r = httpx.post(server.url + "/generate", json=LONG | {"prompt": f"long {i}"}, timeout=60)
        assert r.json()["finish_reason"] == "timeout"

    def cancelled(i: int) -> None:
        with httpx.stream("POST", server.url + "/generate/stream", json=LONG | {"prompt": f"s{i}"}, timeout=60) as r:
            next(r.iter_raw())  # one token, then hang up

    jobs = [full] * 6 + [timed_out] * 3 + [cancelled] * 4
    with ThreadPoolExecutor(len(jobs)) as pool:
        for f in [pool.submit(job, i) for i, job in enumerate(jobs)]:
            f.result()
    wait_idle(server.url, timeout=30)
    records = new_records(server.log_file, 0, count=len(jobs), timeout=10)
    assert len(records) == len(jobs)
    deadline = time.monotonic() + 5
    while len(rows(db)) < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.05)
    got = rows(db)
    assert [(r["id"], r["status"]) for r in got] == [(r["id"], r["status"]) for r in records]
    assert {"ok", "timeout", "cancelled"} <= {r["status"] for r in got}  # a loaded machine may time out more
    sha = file_sha256(long_model)
    assert {r["model_sha256"] for r in got} == {sha} and {r["engine"] for r in got} == {"ctransformers"}
    assert httpx.get(server.url + "/health").json()["model_sha256"] == sha
    assert all(r["seed"] is not None for r in got if r["status"] != "cancelled")


def test_kill_9_during_a_burst_leaves_whole_lines_a_consistent_database_and_a_restart_appends(
        tiny_model, tmp_path):
    log = tmp_path / "logs" / "log.jsonl"
    db = log.with_name("log.db")
    server = LiveServer(tiny_model, log, MINIVAULT_WORKERS="2", MINIVAULT_MAX_QUEUE="64")
    stop = threading.Event()

    def hammer(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    c.post("/generate", json={"prompt": f"burst {i}", "max_new_tokens": 16})
                except httpx.HTTPError:
                    return  # the server is gone

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(read_log(log)) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGKILL)
    server.wait_stopped()
    stop.set()
    for t in threads:
        t.join()

    before = read_log(log)  # every line parses
    assert len(before) >= 20 and log.read_bytes().endswith(b"\n")
    conn = logdb.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    in_db = {r["line_sha1"] for r in conn.execute("SELECT line_sha1 FROM requests")}
    assert in_db <= line_hashes(log)  # the database never holds a record the JSONL lacks
    fresh = logdb.connect(tmp_path / "rebuilt.db")
    logdb.reindex(fresh, log)
    logdb.reindex(conn, log)
    rebuilt = [tuple(r) for r in fresh.execute("SELECT * FROM requests ORDER BY id, ts")]
    assert [tuple(r) for r in conn.execute("SELECT * FROM requests ORDER BY id, ts")][0][1:] == rebuilt[0][1:]
    assert {r[1] for r in rebuilt} == line_hashes(log) == {r["line_sha1"] for r in conn.execute(
        "SELECT line_sha1 FROM requests")}
    conn.close()
    fresh.close()

    again = LiveServer(tiny_model, log)
    try:
        r = httpx.post(again.url + "/generate", json={"prompt": "after", "max_new_tokens": 2}, timeout=30)
        after = new_records(log, len(before))
    finally:
        assert again.stop() == 0
    assert read_log(log)[: len(before)] == before and [x["id"] for x in after] == [r.json()["id"]]
    assert rows(db)[-1]["id"] == r.json()["id"]


def test_sighup_reopens_the_log_after_rotation(start_server, tiny_model):
    server = start_server(tiny_model)
    log = server.log_file
    httpx.post(server.url + "/generate", json={"prompt": "one", "max_new_tokens": 2}, timeout=30)
    new_records(log, 0)
    log.rename(log.with_name("log.jsonl.1"))
    server.proc.send_signal(signal.SIGHUP)  # logrotate's postrotate
    time.sleep(0.2)
    assert server.proc.poll() is None
    r = httpx.post(server.url + "/generate", json={"prompt": "two", "max_new_tokens": 2}, timeout=30)
    assert [x["id"] for x in new_records(log, 0)] == [r.json()["id"]]
    assert len(read_log(log.with_name("log.jsonl.1"))) == 1


def test_logs_follow_sees_every_request_while_the_server_writes_under_load(start_server, tiny_model):
    server = start_server(tiny_model, MINIVAULT_WORKERS="2", MINIVAULT_MAX_QUEUE="64")
    httpx.post(server.url + "/generate", json={"prompt": "first", "max_new_tokens": 2}, timeout=30)
    new_records(server.log_file, 0)
    env = os.environ | {"MINIVAULT_LOG_FILE": str(server.log_file)}
    follower = subprocess.Popen(
        [sys.executable, "-m", "service", "logs", "--follow", "--jsonl", "--interval", "0.05"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        seen: list[dict] = [json.loads(follower.stdout.readline())]  # the existing record first
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda i: httpx.post(
                server.url + "/generate", json={"prompt": f"load {i}", "max_new_tokens": 8}, timeout=60,
            ).json()["id"], range(40)))
        while len(seen) < 41:
            seen.append(json.loads(follower.stdout.readline()))
    finally:
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=10)
    assert follower.returncode == 130 and err.strip() == "minivault: interrupted"
    assert sorted(r["id"] for r in seen[1:]) == sorted(ids)
    wait_idle(server.url)
    assert len(rows(server.log_file.with_name("log.db"))) == 41
