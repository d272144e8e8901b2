"""Reading the SQLite request log: filters, rows as dicts, and per-model / per-day statistics."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from typing import Any, Iterable

import msgspec

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
FAILED = ("error", "timeout")  # what the error rate counts (a cancel is the client's choice)


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """What `minivault logs` selects; None means no condition."""

    since: str | None = None  # ISO UTC, as the records' ts
    until: str | None = None
    status: tuple[str, ...] = ()
    model: str | None = None
    endpoint: str | None = None
    id: str | None = None
    grep: str | None = None
    after_seq: int | None = None


def parse_when(text: str, now: dt.datetime | None = None) -> str:
    """`1h`, `30m`, `2d` (that long ago) or an ISO date/timestamp -> the records' ts format (UTC).

    Raises ValueError with what is accepted.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    m = _DURATION.match(text.strip().lower())
    if m:
        when = now - dt.timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    else:
        try:
            when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is neither a duration (90s, 30m, 1h, 2d, 1w) "
                             "nor a timestamp (2026-12-01, 2026-12-01T21:00:00Z)") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)  # the log is in UTC; so are bare timestamps
    return when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _where(f: Filters) -> tuple[str, list[Any]]:
    """The WHERE clause and its parameters for the filters."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, op, value in (("ts", ">=", f.since), ("ts", "<", f.until), ("model", "=", f.model),
                              ("endpoint", "=", f.endpoint), ("id", "=", f.id), ("seq", ">", f.after_seq)):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            args.append(value)
    if f.status:
        clauses.append(f"status IN ({', '.join('?' * len(f.status))})")
        args.extend(f.status)
    if f.grep:
        clauses.append("(instr(prompt, ?) > 0 OR instr(response, ?) > 0 OR instr(error, ?) > 0)")
        args.extend([f.grep] * 3)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def select(conn: sqlite3.Connection, f: Filters, limit: int | None = None) -> list[dict[str, Any]]:
    """Matching rows, oldest first; with `limit`, the latest `limit` of them."""
    where, args = _where(f)
    sql = f"SELECT * FROM requests{where} ORDER BY seq DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    rows = [as_record(r) for r in conn.execute(sql, args)]
    rows.reverse()
    return rows


def as_record(row: sqlite3.Row) -> dict[str, Any]:
    """A row as the record it came from (JSON columns parsed), plus its `seq`."""
    out: dict[str, Any] = {}
    for key in row.keys():
        value = row[key]
        if key in ("params", "usage", "timings"):
            value = json.loads(value) if value else None
        elif key == "extra":
            out.update(json.loads(value) if value else {})
            continue
        out[key] = value
    return out


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def stats(conn: sqlite3.Connection, f: Filters) -> dict[str, list[dict[str, Any]]]:
    """Counts, error rate, latency percentiles and tokens/s, per model and per day."""
    where, args = _where(f)
    sql = f"SELECT model, substr(ts, 1, 10) AS day, status, total_ms, tokens_per_second FROM requests{where}"
    by_model: dict[str, list] = {}
    by_day: dict[str, list] = {}
    for model, day, status, total_ms, tps in conn.execute(sql, args):
        by_model.setdefault(model or "?", []).append((status, total_ms, tps))
        by_day.setdefault(day or "?", []).append((status, total_ms, tps))
    return {"per_model": [_summary("model", k, v) for k, v in sorted(by_model.items())],
            "per_day": [_summary("day", k, v) for k, v in sorted(by_day.items())]}


def _summary(key: str, name: str, rows: Iterable[tuple]) -> dict[str, Any]:
    rows = list(rows)
    counts: dict[str, int] = {}
    for status, _, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    latency = sorted(t for s, t, _ in rows if s == "ok" and t is not None)
    tps = sorted(v for s, _, v in rows if s == "ok" and v)
    failed = sum(counts.get(s, 0) for s in FAILED)
    return {
        key: name, "requests": len(rows), "ok": counts.get("ok", 0), "error": counts.get("error", 0),
        "timeout": counts.get("timeout", 0), "cancelled": counts.get("cancelled", 0),
        "error_rate": round(failed / len(rows), 4) if rows else 0.0,
        "p50_ms": percentile(latency, 50), "p90_ms": percentile(latency, 90), "p99_ms": percentile(latency, 99),
        "tokens_per_second": percentile(tps, 50),
    }
