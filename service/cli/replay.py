"""`minivault replay`'s workings: find a record, re-run it by its endpoint, compare the text.

REPLAYERS (the native endpoints here, /v1 from replay_openai.py) maps a logged `endpoint` to how
it is sent again; an endpoint family adds one entry (its checks, its request body from the logged
parameters, how to read the texts back, and how to run it in-process).
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, NamedTuple

from service.cli import replay_openai as v1
from service.cli.http import Client, ClientError, generation_body
from service.cli.replay_openai import CANNOT, no_prompts

NATIVE_PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "stop")


class Replayer(NamedTuple):
    """How to re-send one endpoint's record (over HTTP or in-process) and which texts to compare.

    Each returns one text per choice, in the record's order: native records have one.
    """

    check: Callable[[dict[str, Any]], None]  # raise ClientError (CANNOT) if it cannot be replayed exactly
    logged: Callable[[dict[str, Any]], list[str]]
    seeds: Callable[[dict[str, Any]], list[Any]]
    http: Callable[[Client, dict[str, Any]], list[str]]
    local: Callable[[Any, dict[str, Any]], list[str]]  # (a runtime.replay.LocalModel, record)


def _native_check(record: dict[str, Any]) -> None:
    if record.get("prompt") is None or record.get("response") is None:
        raise no_prompts(record)
    _native_params(record)


def _native_params(record: dict[str, Any]) -> dict[str, Any]:
    """The logged native parameters, the seed actually used among them."""
    params = record.get("params") or {}
    missing = [name for name in NATIVE_PARAMS if name not in params]
    if missing:
        raise ClientError(f"record {record['id']} lacks {', '.join(missing)}: it cannot be replayed exactly", CANNOT)
    return {name: params[name] for name in NATIVE_PARAMS}


def _native_body(record: dict[str, Any]) -> dict[str, Any]:
    """The native request again, to the server's model of the record's sha256 (`served_model`)."""
    body = generation_body(record["prompt"], **_native_params(record))
    return body | ({"model": record["served_model"]} if record.get("served_model") else {})


def _generate(client: Client, record: dict[str, Any]) -> list[str]:
    return [client.generate(_native_body(record)).get("response", "")]


def _stream(client: Client, record: dict[str, Any]) -> list[str]:
    body = _native_body(record)
    with closing(client.stream(body)) as chunks:
        return ["".join(chunks)]


def _native_local(model: Any, record: dict[str, Any]) -> list[str]:
    """The logged native parameters are SamplingParams fields under their own names."""
    from service.engine.sampling import SamplingParams

    params = _native_params(record)
    fields = params | {"stop": tuple(params["stop"] or ())}
    return [model.generate(record["prompt"], SamplingParams(**fields))["text"]]


def _native(http: Callable[[Client, dict[str, Any]], list[str]]) -> Replayer:
    return Replayer(_native_check, lambda r: [r["response"]], lambda r: [(r.get("params") or {}).get("seed")],
                    http, _native_local)


REPLAYERS: dict[str, Replayer] = {
    "/generate": _native(_generate),
    "/generate/stream": _native(_stream),
    "/v1/completions": Replayer(v1.check_completion, v1.logged, v1.seeds, v1.http_completion, v1.local_completion),
    "/v1/chat/completions": Replayer(v1.check_chat, v1.logged_chat, v1.seeds, v1.http_chat, v1.local_chat),
}


def find_record(record_id: str, db: Path | None, log_file: Path | None) -> dict[str, Any]:
    """The latest record with this id: from the database, else by reading the JSONL."""
    if db is not None and db.is_file():
        from service.runtime import logdb, logquery

        conn = logdb.connect(db)
        try:
            rows = logquery.select(conn, logquery.Filters(id=record_id), limit=1)
        finally:
            conn.close()
        if rows:
            return rows[-1]
    if log_file is not None and log_file.is_file():
        from service.runtime.logdb import jsonl_records

        found = None
        for record, _ in jsonl_records(log_file):
            if record is not None and record.get("id") == record_id:
                found = record
        if found is not None:
            return found
    where = " or ".join(str(p) for p in (db, log_file) if p is not None)
    raise ClientError(f"no record with id {record_id} in {where}", CANNOT)


def check_replayable(record: dict[str, Any]) -> Replayer:
    """The record's replayer, or a clear refusal saying what is missing."""
    replayer = REPLAYERS.get(record.get("endpoint") or "")
    if replayer is None:
        known = ", ".join(sorted(REPLAYERS))
        raise ClientError(f"record {record['id']} is from {record.get('endpoint')}, which replay does not know "
                          f"(it replays {known})", CANNOT)
    replayer.check(record)
    if not record.get("model_sha256"):
        raise ClientError(f"record {record['id']} has no model_sha256 (logged by an older MiniVault): "
                          "the model it ran on cannot be checked", CANNOT)
    return replayer


def check_model(record: dict[str, Any], sha256: str | None, engine: str | None, where: str) -> None:
    """Refuse unless the model (and engine, when known) are the ones the record ran on."""
    if sha256 != record["model_sha256"]:
        raise ClientError(f"refusing to replay {record['id']}: it ran on a model with sha256 {record['model_sha256']}, "
                          f"but {where} has {sha256 or 'an unknown sha256'}", CANNOT)
    if engine and record.get("engine") and engine != record["engine"]:
        raise ClientError(f"refusing to replay {record['id']}: it ran on the {record['engine']} engine, "
                          f"but {where} uses {engine}", CANNOT)


def server_model(client: Client, record: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(model id, sha256, engine) of the server's model for a record, from /health: the loaded model
    with the record's sha256, else the model of the record's id (loaded first, to learn its sha256)."""
    health = client.health()
    entries = health.get("models")
    if entries is None:  # a server of one model, older than several-model serving
        sha = health.get("model_sha256") or (health.get("manifest") or {}).get("sha256")
        return health.get("model"), sha, health.get("engine")
    for entry in entries:
        if entry.get("model_sha256") == record["model_sha256"]:
            return entry["id"], entry["model_sha256"], entry.get("engine")
    model = record.get("model")
    if not any(entry["id"] == model for entry in entries):
        return None, None, None
    client.post_json("/tokenize", {"text": "", "model": model})  # loads it, if it is not loaded
    entry = next((e for e in client.health().get("models") or [] if e["id"] == model), {})
    return model, entry.get("model_sha256"), entry.get("engine")


def compare(logged: list[str], replayed: list[str]) -> str | None:
    """None when every choice is identical, else where the first differing one first differs."""
    if len(logged) != len(replayed):
        return f"{len(logged)} choice(s) logged but {len(replayed)} replayed"
    for i, (a, b) in enumerate(zip(logged, replayed)):
        at = first_difference(a, b)
        if at is not None:
            where = describe_difference(a, b, at)
            return where if len(logged) == 1 else f"choice {i} {where}"
    return None


def summary(texts: list[str], seeds: list[Any]) -> str:
    """`N characters, seed S`, with the number of choices and every seed when there are several."""
    chars = f"{sum(len(t) for t in texts)} characters"
    if len(texts) == 1:
        return f"{chars}, seed {seeds[0]}"
    return f"{len(texts)} choices, {chars}, seeds {', '.join(str(s) for s in seeds)}"


def first_difference(a: str, b: str) -> int | None:
    """Index of the first character where a and b differ (or where the shorter ends); None if equal."""
    if a == b:
        return None
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def describe_difference(logged: str, replayed: str, at: int) -> str:
    """Where two texts part, with a little context of each."""
    line = logged.count("\n", 0, at) + 1
    col = at - (logged.rfind("\n", 0, at) + 1) + 1
    start = max(0, at - 20)
    return (f"differs at character {at} (line {line}, column {col}) of {len(logged)} logged / {len(replayed)} "
            f"replayed: logged …{json.dumps(logged[start:at + 20], ensure_ascii=False)}, "
            f"replayed …{json.dumps(replayed[start:at + 20], ensure_ascii=False)}")
