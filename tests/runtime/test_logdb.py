"""The SQLite mirror: schema and migrations, one row per JSONL record, failures never reach the JSONL."""

from __future__ import annotations

import sqlite3

import pytest

from service.runtime import logdb
from service.runtime.logbook import LogBook
from service.runtime.logdb import LogDB
from tests.support.server import read_log


def record(i: int, **extra) -> dict:
    return {
        "id": f"r{i}", "ts": f"2026-12-01T10:00:{i % 60:02d}.000Z", "endpoint": "/generate", "model": "tiny",
        "model_sha256": "ab" * 32, "engine": "ctransformers", "version": "0.1.0", "status": "ok",
        "finish_reason": "length", "prompt": f"prompt {i}", "response": f"text {i}",
        "params": {"max_new_tokens": 4, "temperature": 0.0, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.1,
                   "seed": i, "stop": []},
        "usage": {"prompt_tokens": 2, "completion_tokens": 4},
        "timings": {"queue_ms": 0.1, "first_token_ms": 1.0, "total_ms": 10.0 + i, "tokens_per_second": 100.0},
    } | extra


def test_a_new_database_is_wal_at_the_current_schema_with_its_indexes(tmp_path):
    conn = logdb.connect(tmp_path / "log.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == logdb.SCHEMA_VERSION == 1
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"requests_id", "requests_ts", "requests_model_ts", "requests_status_ts", "requests_key_id"} <= indexes
    # connecting again migrates nothing and keeps the data
    logdb.insert(conn, [logdb.row_of(record(1), b"x\n")])
    conn.close()
    again = logdb.connect(tmp_path / "log.db")
    assert again.execute("SELECT count(*) FROM requests").fetchone()[0] == 1


def test_a_database_from_a_newer_minivault_is_refused_with_its_version(tmp_path):
    path = tmp_path / "log.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(logdb.SchemaTooNew, match="schema version 99"):
        logdb.connect(path)


def test_an_old_database_gets_the_missing_migrations(tmp_path, monkeypatch):
    path = tmp_path / "log.db"
    logdb.connect(path).close()  # at version 1
    monkeypatch.setattr(logdb, "MIGRATIONS", [*logdb.MIGRATIONS, ["ALTER TABLE requests ADD COLUMN note TEXT"]])
    monkeypatch.setattr(logdb, "SCHEMA_VERSION", 2)
    conn = logdb.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert "note" in {r[1] for r in conn.execute("PRAGMA table_info(requests)")}


def test_every_record_written_is_one_row_with_its_columns_and_extra_fields(tmp_path):
    db = LogDB(tmp_path / "log.db")
    book = LogBook(tmp_path / "log.jsonl", mirror=db)
    for i in range(300):
        book.write(record(i, key_id="k1" if i % 2 else None, replica="r-a",
                          usage={"prompt_tokens": 2, "completion_tokens": 4, "cached_tokens": 1}))
    book.close()
    assert db.inserted == 300 and db.errors == 0
    conn = logdb.connect(tmp_path / "log.db")
    rows = conn.execute("SELECT * FROM requests ORDER BY seq").fetchall()
    assert [r["id"] for r in rows] == [r["id"] for r in read_log(tmp_path / "log.jsonl")]
    row = rows[7]
    assert (row["key_id"], row["replica"], row["seed"], row["cached_tokens"], row["total_ms"]) == ("k1", "r-a", 7, 1, 17.0)
    assert row["model_sha256"] == "ab" * 32 and row["engine"] == "ctransformers" and row["prompt"] == "prompt 7"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_reindex_adds_each_jsonl_record_once(tmp_path):
    book = LogBook(tmp_path / "log.jsonl")
    for i in range(50):
        book.write(record(i))
    book.write(record(0, ts="2026-12-02T00:00:00.000Z"))  # a client's X-Request-ID again: a second record
    book.close()
    with open(tmp_path / "log.jsonl", "ab") as f:
        f.write(b"not json\n")
    conn = logdb.connect(tmp_path / "log.db")
    assert logdb.reindex(conn, tmp_path / "log.jsonl") == (51, 51, 1)
    assert logdb.reindex(conn, tmp_path / "log.jsonl") == (51, 0, 1)
    assert conn.execute("SELECT count(*) FROM requests WHERE id = 'r0'").fetchone()[0] == 2


def test_a_failing_database_is_reported_and_counted_and_the_jsonl_keeps_every_record(tmp_path, capfd):
    blocked = tmp_path / "db-is-a-dir"
    blocked.mkdir()  # sqlite cannot open a directory as its database
    db = LogDB(blocked)
    book = LogBook(tmp_path / "log.jsonl", mirror=db)
    for i in range(20):
        book.write(record(i))
    book.close()
    assert len(read_log(tmp_path / "log.jsonl")) == 20
    assert db.errors >= 1 and db.lost == 20 and db.inserted == 0
    err = capfd.readouterr().err
    assert err.count("could not write the log database") == 1 and "--reindex" in err
