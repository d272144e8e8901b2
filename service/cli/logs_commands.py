"""`minivault logs` (query the SQLite request log) and `minivault replay` (re-run a logged request)."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from service.cli.options import (
    DEFAULT_URL,
    Text,
    Timeout,
    Url,
    app,
    fail,
    opt,
    reporting,
    say,
)

# exit codes as in options.EXIT_TABLE; `logs` never talks HTTP, so it does not import the client (httpx)
GENERIC, USAGE, INTERRUPTED = 1, 2, 130

Db = Annotated[Text, opt("The log database [env MINIVAULT_LOG_DB; log.db beside the log file].")]
LogFile = Annotated[Text, opt("The JSONL log [env MINIVAULT_LOG_FILE; ./logs/log.jsonl].")]
TABLE = (("ts", "TIME"), ("id", "ID"), ("endpoint", "ENDPOINT"), ("model", "MODEL"), ("status", "STATUS"),
         ("finish_reason", "FINISH"), ("prompt_tokens", "PROMPT"), ("completion_tokens", "COMPL"),
         ("total_ms", "TOTAL_MS"), ("tokens_per_second", "TOK/S"))
STATS = (("requests", "REQUESTS"), ("ok", "OK"), ("error", "ERROR"), ("timeout", "TIMEOUT"),
         ("cancelled", "CANCELLED"), ("error_rate", "ERR_RATE"), ("p50_ms", "P50_MS"), ("p90_ms", "P90_MS"),
         ("p99_ms", "P99_MS"), ("tokens_per_second", "TOK/S"))


def _paths(db: str | None, log_file: str | None) -> tuple[Path | None, Path]:
    """The database (None when MINIVAULT_LOG_DB=off and no --db) and the JSONL, as the server finds them."""
    from service.config import Settings, SettingsError

    try:
        settings = Settings.from_env({"log_db": db, "log_file": log_file})
    except SettingsError as exc:
        raise fail(str(exc), USAGE) from None
    return settings.log_db_path, Path(settings.log_file)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], header: bool = True) -> list[str]:
    """Rows as lines of left-aligned columns, each as wide as its widest cell."""
    cells = [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    heads = [title for _, title in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    lines = [c for c in ([heads] if header else []) + cells]
    return ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]


@app.command()
def logs(
    since: Annotated[Text, opt("Only requests since then: a duration ago (30m, 1h, 2d) or a timestamp.")] = None,
    until: Annotated[Text, opt("Only requests before then (same forms as --since).")] = None,
    status: Annotated[Optional[list[str]], opt("ok, error, timeout or cancelled (repeat for several).")] = None,
    model: Annotated[Text, opt("Only this model.")] = None,
    endpoint: Annotated[Text, opt("Only this endpoint, e.g. /generate/stream.")] = None,
    request_id: Annotated[Text, opt("Only the request with this id.", "--id")] = None,
    grep: Annotated[Text, opt("Only requests whose prompt, response or error contains TEXT.")] = None,
    limit: Annotated[int, opt("Show the latest N matching requests; 0 shows all.", min=0)] = 100,
    as_json: Annotated[bool, opt("Print a JSON array of the records.", "--json")] = False,
    as_jsonl: Annotated[bool, opt("Print one JSON record per line.", "--jsonl")] = False,
    follow: Annotated[bool, opt("Keep printing requests as they finish (Ctrl-C stops).", "--follow", "-f")] = False,
    stats: Annotated[bool, opt("Counts, error rate, latency percentiles and tokens/s per model and per day.",
                               "--stats")] = False,
    reindex: Annotated[bool, opt("First add every record of the JSONL log missing from the database.",
                                 "--reindex")] = False,
    db: Db = None,
    log_file: LogFile = None,
    interval: Annotated[float, opt("Seconds between polls with --follow.", min=0.05)] = 0.5,
) -> None:
    """Query the request log database (logs/log.db).

    Filters combine (AND). Errors are error and timeout; latency percentiles are over ok requests.
    `--reindex` builds or refreshes the database from log.jsonl, so older logs become queryable.
    """
    from service.runtime import logdb, logquery

    if as_json and (as_jsonl or follow):
        raise fail("--json prints one array: use --jsonl with --follow or instead of --json", USAGE)
    if stats and follow:
        raise fail("--stats and --follow do not go together", USAGE)
    db_path, jsonl = _paths(db, log_file)
    if db_path is None:
        raise fail("MINIVAULT_LOG_DB is off: give --db PATH to read or build a log database", USAGE)
    try:
        filters = logquery.Filters(
            since=logquery.parse_when(since) if since else None, until=logquery.parse_when(until) if until else None,
            status=tuple(status or ()), model=model, endpoint=endpoint, id=request_id, grep=grep,
        )
    except ValueError as exc:
        raise fail(f"bad --since/--until: {exc}", USAGE) from None
    if not reindex and not db_path.is_file():
        hint = f"; build it from {jsonl} with `minivault logs --reindex`" if jsonl.is_file() else ""
        raise fail(f"no log database at {db_path}{hint}", GENERIC)
    with _reading():
        conn = logdb.connect(db_path)
        try:
            if reindex:
                if not jsonl.is_file():
                    raise fail(f"no JSONL log at {jsonl} to reindex from", GENERIC)
                read, added, bad = logdb.reindex(conn, jsonl)
                say(f"reindexed {jsonl}: {read} record(s) read, {added} added to {db_path}"
                    + (f", {bad} line(s) that are not JSON records skipped" if bad else ""))
            if stats:
                _print_stats(logquery.stats(conn, filters), as_json)
                return
            rows = logquery.select(conn, filters, limit=limit or None)
            _print_rows(rows, as_json, as_jsonl, header=True)
            if follow:
                last = rows[-1]["seq"] if rows else (conn.execute("SELECT max(seq) FROM requests").fetchone()[0] or 0)
                header = not rows
                while True:
                    time.sleep(interval)
                    new = logquery.select(conn, msgspec_replace(filters, after_seq=last))
                    if new:
                        _print_rows(new, False, as_jsonl, header=header)
                        header = False
                        last = new[-1]["seq"]
        finally:
            conn.close()


@contextmanager
def _reading() -> Iterator[None]:
    """Ctrl-C (ends --follow) and a reader gone away (`| head`) as the other commands report them."""
    import sqlite3

    try:
        yield
    except KeyboardInterrupt:
        raise fail("interrupted", INTERRUPTED) from None
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # the interpreter's final flush must not fail again
        except OSError:
            pass
        raise typer.Exit(GENERIC) from None
    except sqlite3.Error as exc:
        raise fail(f"cannot read the log database: {exc}", GENERIC) from None


def msgspec_replace(filters: Any, **changes: Any) -> Any:
    """A copy of the frozen Filters with some fields changed."""
    import msgspec

    return msgspec.structs.replace(filters, **changes)


def _print_rows(rows: list[dict[str, Any]], as_json: bool, as_jsonl: bool, header: bool) -> None:
    out = sys.stdout
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False), file=out, flush=True)
    elif as_jsonl:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False), file=out)
        out.flush()
    elif rows or header:
        for line in _table(rows, TABLE, header=header):
            print(line, file=out)
        out.flush()


def _print_stats(result: dict[str, list[dict[str, Any]]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2), flush=True)
        return
    for title, key in (("per model", "model"), ("per day (UTC)", "day")):
        print(f"{title}:")
        for line in _table(result[f"per_{key}"], ((key, key.upper()), *STATS)):
            print(f"  {line}")
    sys.stdout.flush()


@app.command()
def replay(
    request_id: Annotated[str, typer.Argument(metavar="ID", help="The id of the logged request.")],
    url: Url = DEFAULT_URL,
    local: Annotated[bool, opt("Run it in this process through the engine, without a server.", "--local")] = False,
    model: Annotated[Text, opt("With --local: the model, an id in the models dir or a file "
                               "[env MINIVAULT_MODEL; else the record's model].")] = None,
    db: Db = None,
    log_file: LogFile = None,
    timeout: Timeout = 300.0,
) -> None:
    """Run a logged request again with its logged seeds and parameters and compare the text.

    Replays /generate, /generate/stream, /v1/completions and /v1/chat/completions (every choice).
    Checks first that the model's sha256 (and engine) match the record's. Exit status: 0 the
    text is identical, 1 it differs (the first differing choice and where is shown), 2 it cannot
    be replayed (wrong model, unknown id or endpoint, no prompt logged, a /v1 record not ok),
    3-6 as for the other commands.
    """
    from service.cli import replay as rp

    db_path, jsonl = _paths(db, log_file)
    with reporting():
        record = rp.find_record(request_id, db_path, jsonl)
        replayer = rp.check_replayable(record)
        if record.get("status") != "ok":
            say(f"record {request_id} ended {record.get('status')} ({record.get('finish_reason')}): "
                "its logged text may be cut short, so it may differ")
        texts = _replay_local(record, replayer, model) if local else _replay_http(record, replayer, url, timeout)
        difference = rp.compare(replayer.logged(record), texts)
        if difference is None:
            print(f"identical: {request_id} ({record.get('endpoint')}, {rp.summary(texts, replayer.seeds(record))}) "
                  f"replayed {'in-process' if local else url}", flush=True)
            return
        print(f"{request_id}: {difference}", flush=True)
        raise typer.Exit(1)


def _replay_http(record: dict[str, Any], replayer: Any, url: str, timeout: float) -> list[str]:
    from service.cli import replay as rp
    from service.cli.http import Client

    with Client(url, timeout) as client:
        model, sha, engine = rp.server_model(client, record)
        rp.check_model(record, sha, engine, f"the server at {url}")
        return replayer.http(client, record | {"served_model": model})


def _replay_local(record: dict[str, Any], replayer: Any, model: str | None) -> list[str]:
    from service.cli import replay as rp
    from service.cli.http import USAGE, ClientError
    from service.config import Settings, SettingsError
    from service.errors import ServiceError
    from service.runtime import catalog
    from service.runtime.replay import LocalModel

    try:  # --model, else the record's model in the models dir, else the only one there
        settings = Settings.from_env({"model": model})
        found = catalog.scan(settings)
        chosen = catalog.default_model(settings, found) if model else (
            record.get("model") if record.get("model") in found else catalog.default_model(settings, found))
    except SettingsError as exc:
        raise ClientError(str(exc), USAGE) from None
    if chosen is None or chosen not in found:
        raise ClientError(f"no model {record.get('model')} in {settings.models_dir} (installed: "
                          f"{', '.join(found) or 'none'}); choose one with --model", USAGE)
    path = found[chosen]
    local_model = LocalModel(path)
    try:
        rp.check_model(record, local_model.sha256, local_model.engine_name, str(path))
        try:
            return replayer.local(local_model, record)
        except ServiceError as exc:
            raise ClientError(f"the replay failed: {exc.message}", rp.CANNOT) from None
    finally:
        local_model.close()
