"""The SQLite mirror of the request log: one row per JSONL record, written by the log's thread.

WAL mode, so readers (`minivault logs`, even `--follow`) never block the writer; the schema is
versioned with PRAGMA user_version and migrated by MIGRATIONS below. A failure here never fails a
request or the JSONL record: it is reported on stderr and counted (`errors`), and `minivault logs
--reindex` rebuilds whatever is missing from the JSONL.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

# Each entry moves the schema up one version (index + 1); append, never edit a released one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE requests (
            seq INTEGER PRIMARY KEY,
            line_sha1 TEXT NOT NULL UNIQUE,  -- the JSONL line's hash: a reindex adds each record once
            id TEXT NOT NULL, ts TEXT NOT NULL, endpoint TEXT, model TEXT, model_sha256 TEXT, engine TEXT,
            version TEXT, status TEXT, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
            cached_tokens INTEGER, queue_ms REAL, first_token_ms REAL, prompt_ms REAL, total_ms REAL,
            tokens_per_second REAL, key_id TEXT, replica TEXT, seed INTEGER,
            prompt TEXT, response TEXT, error TEXT,
            params TEXT, usage TEXT, timings TEXT,  -- JSON, whatever fields they hold
            extra TEXT  -- JSON of any other top-level fields of the record
        )""",
        "CREATE INDEX requests_id ON requests(id)",
        # covers --stats and the time filters: they never read the wide rows (prompt, response)
        "CREATE INDEX requests_ts ON requests(ts, model, status, total_ms, tokens_per_second)",
        "CREATE INDEX requests_model_ts ON requests(model, ts)",
        "CREATE INDEX requests_status_ts ON requests(status, ts)",
        "CREATE INDEX requests_endpoint_ts ON requests(endpoint, ts)",
        "CREATE INDEX requests_key_id ON requests(key_id) WHERE key_id IS NOT NULL",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

_SCALARS = ("id", "ts", "endpoint", "model", "model_sha256", "engine", "version", "status", "finish_reason",
            "key_id", "replica", "prompt", "response", "error")
_JSON = ("params", "usage", "timings")
COLUMNS = ("line_sha1", *_SCALARS, "prompt_tokens", "completion_tokens", "cached_tokens", "queue_ms",
           "first_token_ms", "prompt_ms", "total_ms", "tokens_per_second", "seed", *_JSON, "extra")
_INSERT = f"INSERT OR IGNORE INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class SchemaTooNew(sqlite3.DatabaseError):
    """The database was made by a newer MiniVault than this one."""


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in WAL mode (readers never block the writer) with the schema migrated."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: consistent after any crash
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations the database lacks, each in its own transaction; the version reached."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"the log database has schema version {version}; this MiniVault knows up to "
                           f"{SCHEMA_VERSION}: upgrade MiniVault or point MINIVAULT_LOG_DB elsewhere")
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == number:  # not done meanwhile by another
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def row_of(record: dict[str, Any], line: bytes) -> tuple:
    """The requests row of one record and its JSONL line."""
    usage = record.get("usage") or {}
    timings = record.get("timings") or {}
    params = record.get("params") or {}
    extra = {k: v for k, v in record.items() if k not in _SCALARS and k not in _JSON}
    return (
        hashlib.sha1(line).hexdigest(),
        *(_text(record.get(k)) for k in _SCALARS),
        usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("cached_tokens"),
        timings.get("queue_ms"), timings.get("first_token_ms"), timings.get("prompt_ms"), timings.get("total_ms"),
        timings.get("tokens_per_second"), params.get("seed"),
        *(json.dumps(record[k], ensure_ascii=False) if k in record else None for k in _JSON),
        json.dumps(extra, ensure_ascii=False) if extra else None,
    )


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def insert(conn: sqlite3.Connection, rows: Iterable[tuple]) -> int:
    """Insert rows in one transaction; how many were new."""
    before = conn.total_changes
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return conn.total_changes - before


class LogDB:
    """The LogBook's mirror: each batch of written records goes in as one transaction.

    Used only from the log's writer thread (it connects there, lazily). Counters for metrics:
    `inserted` rows, `errors` failed batches, `lost` records of those batches.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.inserted = 0
        self.errors = 0
        self.lost = 0
        self._conn: sqlite3.Connection | None = None
        self._failing = False

    def write_batch(self, records: list[dict[str, Any]], lines: list[bytes]) -> None:
        """Insert the records; on failure report once per outage, count, and retry on the next batch."""
        try:
            if self._conn is None:
                self._conn = connect(self.path)
            self.inserted += insert(self._conn, [row_of(r, line) for r, line in zip(records, lines)])
        except Exception as exc:  # never let the database fail a request or the JSONL
            self.errors += 1
            self.lost += len(records)
            self.close()
            if not self._failing:
                self._failing = True
                print(f"minivault: could not write the log database {self.path}: {exc}; the JSONL log has "
                      "the records (`minivault logs --reindex` adds them)", file=sys.stderr, flush=True)
            return
        if self._failing:
            self._failing = False
            print(f"minivault: the log database {self.path} is writable again", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None


def jsonl_records(path: str | Path) -> Iterator[tuple[dict[str, Any] | None, bytes]]:
    """(record, line) for every line of a JSONL log; record None for a line that is not a JSON object."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                continue  # a last line still being written (or torn by a crash): not a record yet
            try:
                record = json.loads(raw)
            except ValueError:
                yield None, raw
                continue
            yield (record if isinstance(record, dict) else None), raw


def reindex(conn: sqlite3.Connection, jsonl: str | Path, chunk: int = 5000) -> tuple[int, int, int]:
    """Add every record of `jsonl` missing from the database: (records read, rows added, bad lines)."""
    read = added = bad = 0
    rows: list[tuple] = []
    for record, line in jsonl_records(jsonl):
        if record is None:
            bad += 1
            continue
        read += 1
        rows.append(row_of(record, line))
        if len(rows) >= chunk:
            added += insert(conn, rows)
            rows = []
    if rows:
        added += insert(conn, rows)
    return read, added, bad
