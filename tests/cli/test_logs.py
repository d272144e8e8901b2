"""`minivault logs` through the CLI runner on a database written by the real log writer."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from typer.testing import CliRunner

from service.cli.main import app
from service.runtime.logbook import LogBook
from service.runtime.logdb import LogDB

runner = CliRunner()
NOW = dt.datetime.now(dt.timezone.utc)


def ts(minutes_ago: float) -> str:
    return (NOW - dt.timedelta(minutes=minutes_ago)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rec(i: str, ago: float, status="ok", model="tiny", endpoint="/generate", prompt="hello", total=10.0, tps=100.0):
    return {"id": i, "ts": ts(ago), "endpoint": endpoint, "model": model, "model_sha256": "ab" * 32,
            "engine": "ctransformers", "version": "0.1.0", "status": status,
            "finish_reason": {"ok": "length"}.get(status, status), "prompt": prompt, "response": f"out-{i}",
            "params": {"seed": 1}, "usage": {"prompt_tokens": 2, "completion_tokens": 4},
            "timings": {"queue_ms": 0.1, "first_token_ms": 1.0, "total_ms": total, "tokens_per_second": tps},
            **({"error": "generation failed: boom"} if status == "error" else {})}


RECORDS = [
    rec("a1", 3 * 24 * 60, total=50.0),  # three days ago
    rec("a2", 120, status="error", prompt="kaboom", total=5.0),
    rec("a3", 30, model="other", endpoint="/generate/stream", total=20.0, tps=50.0),
    rec("a4", 10, status="timeout", total=1000.0),
    rec("a5", 5, status="cancelled", endpoint="/generate/stream", prompt="a needle here"),
    rec("a6", 1, total=30.0, tps=200.0),
]


@pytest.fixture
def logs_dir(tmp_path):
    book = LogBook(tmp_path / "log.jsonl", mirror=LogDB(tmp_path / "log.db"))
    for r in RECORDS:
        book.write(r)
    book.close()
    return tmp_path


def run(logs_dir, *args: str):
    env = {"MINIVAULT_LOG_FILE": str(logs_dir / "log.jsonl"), "MINIVAULT_LOG_DB": ""}
    return runner.invoke(app, ["logs", *args], env=env)


def ids(result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return [r["id"] for r in map(json.loads, result.stdout.splitlines())]


def test_the_table_is_aligned_with_a_header(logs_dir):
    result = run(logs_dir)
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "ID", "ENDPOINT", "MODEL", "STATUS", "FINISH", "PROMPT", "COMPL", "TOTAL_MS",
                                "TOK/S"]
    assert [line.split()[1] for line in lines[1:]] == [r["id"] for r in RECORDS]
    col = lines[0].index("STATUS")
    assert all(line[col:].split()[0] in ("STATUS", "ok", "error", "timeout", "cancelled") for line in lines)


@pytest.mark.parametrize("args, expected", [
    (["--since", "1h"], ["a3", "a4", "a5", "a6"]),
    (["--since", "3h", "--until", ts(20)], ["a2", "a3"]),
    (["--until", (NOW - dt.timedelta(days=1)).date().isoformat()], ["a1"]),
    (["--status", "error"], ["a2"]),
    (["--status", "error", "--status", "timeout"], ["a2", "a4"]),
    (["--model", "other"], ["a3"]),
    (["--endpoint", "/generate/stream"], ["a3", "a5"]),
    (["--id", "a4"], ["a4"]),
    (["--grep", "needle"], ["a5"]),
    (["--grep", "boom"], ["a2"]),  # matches the prompt and the error
    (["--grep", "out-a6"], ["a6"]),  # the response
    (["--limit", "2"], ["a5", "a6"]),
    (["--model", "tiny", "--status", "ok"], ["a1", "a6"]),
])
def test_each_filter(logs_dir, args, expected):
    assert ids(run(logs_dir, "--jsonl", *args)) == expected


def test_json_is_one_array_of_whole_records(logs_dir):
    result = run(logs_dir, "--json", "--id", "a2")
    assert result.exit_code == 0 and result.stderr == ""
    [row] = json.loads(result.stdout)
    assert row["error"] == "generation failed: boom" and row["params"] == {"seed": 1}
    assert row["usage"] == {"prompt_tokens": 2, "completion_tokens": 4} and row["model_sha256"] == "ab" * 32


def test_stats_per_model_and_per_day(logs_dir):
    result = run(logs_dir, "--stats", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    stats = json.loads(result.stdout)
    tiny = next(m for m in stats["per_model"] if m["model"] == "tiny")
    assert (tiny["requests"], tiny["ok"], tiny["error"], tiny["timeout"], tiny["cancelled"]) == (5, 2, 1, 1, 1)
    assert tiny["error_rate"] == 0.4  # error + timeout, of all
    assert (tiny["p50_ms"], tiny["p99_ms"], tiny["tokens_per_second"]) == (30.0, 50.0, 100.0)  # over ok requests
    assert sum(d["requests"] for d in stats["per_day"]) == 6
    text = run(logs_dir, "--stats")
    assert text.exit_code == 0 and text.stderr == ""
    assert text.stdout.splitlines()[0] == "per model:" and "per day (UTC):" in text.stdout
    assert text.stdout.splitlines()[1].split()[:3] == ["MODEL", "REQUESTS", "OK"]


def test_reindex_builds_the_database_from_the_jsonl_alone(logs_dir):
    (logs_dir / "log.db").unlink()
    for suffix in ("-wal", "-shm"):
        (logs_dir / f"log.db{suffix}").unlink(missing_ok=True)
    missing = run(logs_dir)
    assert missing.exit_code == 1 and missing.stdout == ""
    assert "no log database" in missing.stderr and "minivault logs --reindex" in missing.stderr
    result = run(logs_dir, "--reindex", "--jsonl")
    assert result.exit_code == 0
    assert result.stderr.strip() == (f"minivault: reindexed {logs_dir / 'log.jsonl'}: 6 record(s) read, 6 added to "
                                     f"{logs_dir / 'log.db'}")
    assert [json.loads(x)["id"] for x in result.stdout.splitlines()] == [r["id"] for r in RECORDS]
    again = run(logs_dir, "--reindex", "--id", "a1", "--jsonl")
    assert "6 record(s) read, 0 added" in again.stderr and len(again.stdout.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "neither a duration"),
    (["--json", "--follow"], "--json prints one array"),
    (["--stats", "--follow"], "do not go together"),
])
def test_bad_usage_is_one_line_on_stderr(logs_dir, args, message):
    result = run(logs_dir, *args)
    assert result.exit_code == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr


def test_an_empty_selection_prints_just_the_header(logs_dir):
    result = run(logs_dir, "--model", "nope")
    assert result.exit_code == 0 and result.stderr == "" and result.stdout.split()[0] == "TIME"
    assert len(result.stdout.splitlines()) == 1
