"""`minivault replay` of /v1/completions and /v1/chat/completions records the server logged itself."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import replay_openai
from service.cli.main import app
from tests.support.server import LiveServer, read_log

runner = CliRunner()
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
PROMPT = "Hello there, my friend"
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there, friend"}]
KINDS = [
    (COMPLETIONS, {"temperature": 0}),  # greedy
    (COMPLETIONS, {"temperature": 0.9, "seed": 1234, "n": 2}),  # seeded: choice k ran with seed + k
    (COMPLETIONS, {"temperature": 1.1, "top_p": 0.9, "n": 2}),  # the server picked each choice's seed
    (COMPLETIONS, {"temperature": 0.9, "seed": 7, "n": 2, "stream": True, "prompt": ["One", "Two, three"]}),
    (COMPLETIONS, {"temperature": 0, "stream": True, "prompt": ""}),  # an empty prompt starts at end-of-text
    (COMPLETIONS, {"temperature": 0.8, "seed": 5, "echo": True, "logprobs": 2, "frequency_penalty": 0.7,
                   "presence_penalty": 0.4, "logit_bias": {"13": 4.0}, "top_k": 30, "repetition_penalty": 1.2}),
    (CHAT, {"temperature": 0}),
    (CHAT, {"temperature": 0.9, "seed": 42, "n": 2, "stream": True}),
    (CHAT, {"temperature": 1.0, "top_k": 40, "max_completion_tokens": 12}),  # server-seeded
    (CHAT, {"temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "stop": "."}),
]
IDS = [f"{'chat' if e == CHAT else 'completions'}-{'-'.join(p)}" for e, p in KINDS]


@pytest.fixture(scope="module")
def server(gpt2_vocab_model, tmp_path_factory) -> Iterator[LiveServer]:
    s = LiveServer(gpt2_vocab_model, tmp_path_factory.mktemp("replay-v1") / "logs" / "log.jsonl")
    yield s
    s.stop()


def _texts(endpoint: str, body: dict, response: httpx.Response) -> list[str]:
    """What the client got: each choice's text, by index, whole or assembled from the stream."""
    texts: dict[int, str] = {}
    if body.get("stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        for event in map(json.loads, events[:-1]):
            for c in event["choices"]:
                piece = c.get("text") if endpoint == COMPLETIONS else c["delta"].get("content")
                texts[c["index"]] = texts.get(c["index"], "") + (piece or "")
    else:
        for c in response.json()["choices"]:
            texts[c["index"]] = c["text"] if endpoint == COMPLETIONS else c["message"]["content"]
    return [texts[i] for i in sorted(texts)]


def wait_for(server: LiveServer, record_id: str) -> dict:
    """The record with this id, once it is in the JSONL and in the database."""
    deadline = time.monotonic() + 10
    while not (mine := [r for r in read_log(server.log_file) if r["id"] == record_id]) and time.monotonic() < deadline:
        time.sleep(0.02)
    [record] = mine
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(server.log_file.with_name("log.db")) as conn:
                if conn.execute("SELECT 1 FROM requests WHERE id = ?", (record_id,)).fetchone():
                    return record
        except sqlite3.OperationalError:
            pass  # its schema is not made yet
        time.sleep(0.02)
    raise AssertionError(f"{record_id} never reached the database")


def send(server: LiveServer, endpoint: str, params: dict) -> dict:
    """Make the request for real; its log record, checked to hold what the client received."""
    rid = uuid.uuid4().hex  # replays are logged too: find this request's own record by its id
    body = {"max_tokens": 20, **params}
    body |= {} if "prompt" in body else {"prompt": PROMPT} if endpoint == COMPLETIONS else {"messages": MESSAGES}
    r = httpx.post(server.url + endpoint, json=body, headers={"X-Request-ID": rid}, timeout=60)
    assert r.status_code == 200, r.text
    record = wait_for(server, ("cmpl-" if endpoint == COMPLETIONS else "chatcmpl-") + rid)
    got = _texts(endpoint, body, r)
    logged = [c["text"] for c in record["choices"]]
    if endpoint == CHAT:
        assert [{k: v for k, v in m.items() if v is not None} for m in record["messages"]] == body["messages"]
        logged = [t.lstrip() for t in logged]
    elif body.get("echo"):
        got = [t[len(PROMPT):] for t in got]
    assert got == logged and record["status"] == "ok"
    return record


def replay(server: LiveServer, *args: str, **env: str):
    full_env = {"MINIVAULT_LOG_FILE": str(server.log_file), "MINIVAULT_LOG_DB": "", "MINIVAULT_URL": server.url} | env
    return runner.invoke(app, ["replay", *args], env=full_env)


def _edit_db(server: LiveServer, record_id: str, edit) -> None:
    """Change the database copy of a record: `edit` gets and changes its dict of extra fields."""
    with sqlite3.connect(server.log_file.with_name("log.db")) as conn:
        [(extra,)] = conn.execute("SELECT extra FROM requests WHERE id = ?", (record_id,)).fetchall()
        fields = json.loads(extra)
        edit(fields)
        conn.execute("UPDATE requests SET extra = ? WHERE id = ?", (json.dumps(fields), record_id))


@pytest.mark.parametrize("endpoint, params", KINDS, ids=IDS)
def test_v1_replay_over_http_is_identical(server, endpoint, params):
    record = send(server, endpoint, params)
    result = replay(server, record["id"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "" and result.stdout.startswith(f"identical: {record['id']} ({endpoint}, ")
    seeds = ", ".join(str(c["seed"]) for c in record["choices"])
    assert f"seed{'s' if len(record['choices']) > 1 else ''} {seeds})" in result.stdout


@pytest.mark.parametrize("endpoint, params", KINDS, ids=IDS)
def test_v1_replay_in_process_is_identical(server, gpt2_vocab_model, endpoint, params):
    record = send(server, endpoint, params)
    result = replay(server, record["id"], "--local", "--model", str(gpt2_vocab_model))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "" and "replayed in-process" in result.stdout


def test_the_request_is_sent_whole_when_its_seed_gives_every_choice_else_choice_by_choice(server):
    seeded = send(server, COMPLETIONS, {"temperature": 0.9, "seed": 2**63 - 1, "n": 2, "prompt": ["A", "B"]})
    assert [c["seed"] for c in seeded["choices"]] == [2**63 - 1, 0, 2**63 - 1, 0]  # seed + k wraps
    [(body, indexes)] = replay_openai.requests(seeded)
    assert body["seed"] == 2**63 - 1 and body["n"] == 2 and body["prompt"] == ["A", "B"] and indexes == [0, 1, 2, 3]
    picked = send(server, CHAT, {"temperature": 0.9, "n": 2})
    assert picked["params"]["seed"] is None
    plan = replay_openai.requests(picked)
    assert [(b["seed"], b["n"], i) for b, i in plan] == [(c["seed"], 1, [k]) for k, c in enumerate(picked["choices"])]
    assert all(b["messages"] == picked["messages"] for b, _ in plan)


def test_a_choice_that_differs_exits_1_and_says_which_and_where(server):
    record = send(server, COMPLETIONS, {"temperature": 0.9, "seed": 31, "n": 2, "max_tokens": 24})
    logged = record["choices"][1]["text"]
    assert len(logged) > 4
    changed = logged[:3] + ("#" if logged[3] != "#" else "%") + logged[4:]

    def edit(fields: dict) -> None:  # the record as if another engine had written choice 1
        fields["choices"][1]["text"] = changed

    _edit_db(server, record["id"], edit)
    result = replay(server, record["id"])
    assert result.exit_code == 1 and result.stderr == ""
    assert result.stdout.startswith(f"{record['id']}: choice 1 differs at character 3 (line 1, column 4)")


def test_an_edited_chat_reply_in_the_jsonl_differs_in_process(server, gpt2_vocab_model, tmp_path):
    record = send(server, CHAT, {"temperature": 0, "max_tokens": 24})
    reply = record["choices"][0]["text"]
    assert reply.strip()
    record["choices"][0]["text"] = reply + " and more"
    copy = tmp_path / "edited.jsonl"
    copy.write_text(json.dumps(record) + "\n")
    result = replay(server, record["id"], "--local", "--model", str(gpt2_vocab_model), "--log-file", str(copy),
                    "--db", str(tmp_path / "absent.db"))
    assert result.exit_code == 1 and result.stderr == ""
    at = len(reply.lstrip())
    assert result.stdout.startswith(f"{record['id']}: differs at character {at} ")


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.pop("messages"), "it has no messages (logged by an older MiniVault"),
    (lambda f: f["choices"][0].pop("seed"), "a choice has no logged seed"),
    (lambda f: f["choices"].pop(), "it has 1 choices, not n=2 for each of its prompts"),
])
def test_chat_records_that_cannot_be_replayed_are_refused_in_one_line(server, edit, message):
    record = send(server, CHAT, {"temperature": 0, "n": 2})
    _edit_db(server, record["id"], edit)
    result = replay(server, record["id"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"minivault: record {record['id']} cannot be replayed exactly: {message}")
    assert result.stderr.count("\n") == 1


def test_a_record_that_did_not_end_ok_is_refused(server):
    record = send(server, COMPLETIONS, {"temperature": 0})
    with sqlite3.connect(server.log_file.with_name("log.db")) as conn:
        conn.execute("UPDATE requests SET status = 'cancelled' WHERE id = ?", (record["id"],))
    result = replay(server, record["id"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "it ended cancelled, so its choices' texts may be cut short" in result.stderr


def test_records_logged_without_prompts_are_refused(gpt2_vocab_model, tmp_path: Path):
    quiet = LiveServer(gpt2_vocab_model, tmp_path / "logs" / "log.jsonl", MINIVAULT_LOG_PROMPTS="false")
    try:
        for endpoint in (COMPLETIONS, CHAT):
            field = "prompt" if endpoint == COMPLETIONS else "messages"
            rid = uuid.uuid4().hex
            r = httpx.post(quiet.url + endpoint, json={field: PROMPT if endpoint == COMPLETIONS else MESSAGES,
                                                       "max_tokens": 4}, headers={"X-Request-ID": rid}, timeout=60)
            assert r.status_code == 200
            record = wait_for(quiet, r.json()["id"])
            assert "prompt" not in record and "messages" not in record and "text" not in record["choices"][0]
            result = replay(quiet, record["id"])
            assert result.exit_code == 2 and result.stdout == ""
            assert "MINIVAULT_LOG_PROMPTS=false" in result.stderr and result.stderr.count("\n") == 1
    finally:
        quiet.stop()


def test_a_v1_record_from_another_model_is_refused(server, tiny_model):
    record = send(server, CHAT, {"temperature": 0})
    result = replay(server, record["id"], "--local", "--model", str(tiny_model))
    assert result.exit_code == 2 and result.stdout == ""
    assert f"refusing to replay {record['id']}: it ran on a model with sha256 {record['model_sha256']}" in result.stderr
