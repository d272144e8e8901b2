"""`minivault replay` against a real server and in-process, on records the server logged itself."""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from service.cli.main import app
from tests.support.server import LiveServer, read_log

runner = CliRunner()
KINDS = [
    ("/generate", {"temperature": 0}),  # greedy
    ("/generate", {"temperature": 0.9, "seed": 1234}),  # seeded
    ("/generate", {"temperature": 1.2, "top_k": 0, "top_p": 0.9}),  # the server picks the seed; it is logged
    ("/generate/stream", {"temperature": 0}),
    ("/generate/stream", {"temperature": 0.9, "seed": 99, "repetition_penalty": 1.3}),
]


@pytest.fixture(scope="module")
def server(gpt2_vocab_model, tmp_path_factory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("replay") / "logs" / "log.jsonl"
    s = LiveServer(gpt2_vocab_model, log)
    yield s
    s.stop()


def send(server: LiveServer, endpoint: str, params: dict, prompt: str = "Hello there, my friend") -> dict:
    rid = uuid.uuid4().hex  # replays are logged too: find this request's own record by its id
    body = {"prompt": prompt, "max_new_tokens": 24, **params}
    headers = {"X-Request-ID": rid}
    if endpoint.endswith("stream"):
        with httpx.stream("POST", server.url + endpoint, json=body, headers=headers, timeout=60) as r:
            text = "".join(r.iter_text())
    else:
        text = httpx.post(server.url + endpoint, json=body, headers=headers, timeout=60).json()["response"]
    deadline = time.monotonic() + 10
    while not (mine := [r for r in read_log(server.log_file) if r["id"] == rid]) and time.monotonic() < deadline:
        time.sleep(0.02)
    [record] = mine
    assert record["response"] == text
    deadline = time.monotonic() + 10  # and in the database (the same writer, just after the JSONL)
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(server.log_file.with_name("log.db")) as conn:
                if conn.execute("SELECT 1 FROM requests WHERE id = ?", (rid,)).fetchone():
                    break
        except sqlite3.OperationalError:
            pass  # its schema is not made yet
        time.sleep(0.02)
    return record


def replay(server: LiveServer, *args: str, **env: str):
    full_env = {"MINIVAULT_LOG_FILE": str(server.log_file), "MINIVAULT_LOG_DB": "", "MINIVAULT_URL": server.url} | env
    return runner.invoke(app, ["replay", *args], env=full_env)


@pytest.mark.parametrize("endpoint, params", KINDS)
def test_replay_over_http_is_identical(server, endpoint, params):
    record = send(server, endpoint, params)
    assert record["params"]["seed"] is not None
    result = replay(server, record["id"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "" and result.stdout.startswith(f"identical: {record['id']} ({endpoint}")


@pytest.mark.parametrize("endpoint, params", KINDS)
def test_replay_in_process_is_identical(server, gpt2_vocab_model, endpoint, params):
    record = send(server, endpoint, params)
    result = replay(server, record["id"], "--local", "--model", str(gpt2_vocab_model))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "" and "replayed in-process" in result.stdout


def test_a_different_text_exits_1_and_says_where_it_first_differs(server):
    record = send(server, "/generate", {"temperature": 0})
    db = server.log_file.with_name("log.db")
    logged = record["response"]
    changed = logged[:5] + ("#" if logged[5:6] != "#" else "%") + logged[6:]
    with sqlite3.connect(db) as conn:  # the record as if an older engine had written other text
        conn.execute("UPDATE requests SET response = ? WHERE id = ?", (changed, record["id"]))
    result = replay(server, record["id"])
    assert result.exit_code == 1 and result.stderr == ""
    assert f"{record['id']}: differs at character 5 (line 1, column 6)" in result.stdout


def test_a_record_from_another_model_is_refused(server, tiny_model):
    record = send(server, "/generate", {"temperature": 0})
    result = replay(server, record["id"], "--local", "--model", str(tiny_model))
    assert result.exit_code == 2 and result.stdout == ""
    assert f"refusing to replay {record['id']}: it ran on a model with sha256 {record['model_sha256']}" in result.stderr
    other = LiveServer(tiny_model, server.log_file.with_name("other.jsonl"))
    try:
        result = replay(server, record["id"], "--url", other.url)
    finally:
        other.stop()
    assert result.exit_code == 2 and result.stdout == ""
    assert "refusing to replay" in result.stderr and f"the server at {other.url}" in result.stderr


def test_replay_finds_records_in_the_jsonl_when_there_is_no_database(server, tmp_path):
    record = send(server, "/generate", {"temperature": 0, "seed": 3})
    result = replay(server, record["id"], "--db", str(tmp_path / "absent.db"))
    assert result.exit_code == 0 and result.stdout.startswith("identical:")


@pytest.mark.parametrize("change, message", [
    ({"endpoint": "/v2/unknown"}, "which replay does not know"),
    ({"prompt": None}, "MINIVAULT_LOG_PROMPTS=false"),
])
def test_records_that_cannot_be_replayed_are_refused_clearly(server, change, message):
    record = send(server, "/generate", {"temperature": 0})
    [(column, value)] = change.items()
    with sqlite3.connect(server.log_file.with_name("log.db")) as conn:
        conn.execute(f"UPDATE requests SET {column} = ? WHERE id = ?", (value, record["id"]))
    result = replay(server, record["id"])
    assert result.exit_code == 2 and result.stdout == "" and message in result.stderr


def test_an_unknown_id_is_refused(server):
    result = replay(server, "no-such-id")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("minivault: no record with id no-such-id in ")


def test_a_record_from_another_engine_is_refused(server):
    record = send(server, "/generate", {"temperature": 0})
    with sqlite3.connect(server.log_file.with_name("log.db")) as conn:
        conn.execute("UPDATE requests SET engine = 'llamacpp' WHERE id = ?", (record["id"],))
    result = replay(server, record["id"])  # /health names the engine of each model
    assert result.exit_code == 2 and result.stdout == ""
    assert f"it ran on the llamacpp engine, but the server at {server.url} uses ctransformers" in result.stderr


def test_replay_finds_the_records_model_among_several(gpt2_vocab_model, tiny_model, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(gpt2_vocab_model.parent, models / "words")
    shutil.copytree(tiny_model.parent, models / "bytes")
    s = LiveServer(models, tmp_path / "logs" / "log.jsonl", MINIVAULT_MODEL="", MINIVAULT_MODELS_DIR=str(models),
                   MINIVAULT_PRELOAD="none", MINIVAULT_MAX_LOADED_MODELS="1")
    try:
        record = send(s, "/generate", {"temperature": 0.9, "seed": 5, "model": "bytes"})
        assert record["model"] == "bytes"
        send(s, "/generate", {"temperature": 0, "model": "words"})  # unloads `bytes`
        assert {m["id"]: m["state"] for m in httpx.get(s.url + "/health").json()["models"]}["bytes"] == "unloaded"
        result = replay(s, record["id"])  # loads `bytes` again to check its sha256, then replays on it
        assert result.exit_code == 0 and result.stdout.startswith("identical:"), result.output
        local = replay(s, record["id"], "--local", MINIVAULT_MODELS_DIR=str(models))  # the record's model
        assert local.exit_code == 0 and local.stdout.startswith("identical:"), local.output
    finally:
        s.stop()
