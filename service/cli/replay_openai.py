"""Replaying /v1/completions and /v1/chat/completions records: every choice with its logged seed.

A /v1 record keeps `params` under OpenAI's names, the prompt(s) (chat: the transcript, and its
`messages`), and `choices`, prompt by prompt with `n` each, every one with its `seed` and `text`.
Choice k of a prompt ran with the request's `seed + k`; when the logged seeds are exactly those
the request is sent again whole, else (the server picked the seeds) choice by choice with n=1.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from service.cli.http import USAGE, Client, ClientError

CANNOT = USAGE  # exit status when a record cannot be replayed (wrong model, no prompt, unknown id)
SEEDS = 2**63  # choice seeds wrap as the API's do (openai_convert.choice_params)


def no_prompts(record: dict[str, Any]) -> ClientError:
    """The refusal of a record logged without its prompt and text."""
    return ClientError(f"record {record['id']} has no prompt/response (logged with MINIVAULT_LOG_PROMPTS=false): "
                       "nothing to replay", CANNOT)


def _refuse(record: dict[str, Any], why: str) -> ClientError:
    return ClientError(f"record {record['id']} cannot be replayed exactly: {why}", CANNOT)


def _check(record: dict[str, Any]) -> None:
    """What every /v1 record needs: ok choices, their texts and seeds, and the request's params."""
    if record.get("status") != "ok":
        raise _refuse(record, f"it ended {record.get('status')}, so its choices' texts may be cut short or missing")
    choices = record.get("choices") or []
    if record.get("prompt") is None or not choices or any("text" not in c for c in choices):
        raise no_prompts(record)
    params = record.get("params") or {}
    if not isinstance(params.get("n"), int) or "seed" not in params:
        raise _refuse(record, "its params lack n or seed")
    if any(not isinstance(c.get("seed"), int) for c in choices):
        raise _refuse(record, "a choice has no logged seed")
    if len(choices) != params["n"] * len(_prompts(record)):
        raise _refuse(record, f"it has {len(choices)} choices, not n={params['n']} for each of its prompts")


def check_completion(record: dict[str, Any]) -> None:
    """Refuse a /v1/completions record that cannot be sent again as it was."""
    _check(record)


def check_chat(record: dict[str, Any]) -> None:
    """Refuse a chat record without its messages (older MiniVaults logged only the transcript)."""
    if record.get("status") == "ok" and record.get("prompt") is not None and not record.get("messages"):
        raise _refuse(record, "it has no messages (logged by an older MiniVault, which kept only the transcript)")
    _check(record)


def _prompts(record: dict[str, Any]) -> list[str]:
    """The record's prompts; the database keeps a list as its JSON text, told apart by the choice count."""
    prompt = record["prompt"]
    if record.get("endpoint") == "/v1/chat/completions":
        return [prompt]
    n = (record.get("params") or {}).get("n") or 1
    if isinstance(prompt, str) and len(record.get("choices") or []) > n:  # one prompt is logged as a string
        try:
            prompt = json.loads(prompt)
        except ValueError:
            raise _refuse(record, "its prompt list is not readable JSON") from None
    return [prompt] if isinstance(prompt, str) else list(prompt)


def logged(record: dict[str, Any]) -> list[str]:
    """The logged text of every choice."""
    return [c["text"] for c in record["choices"]]


def logged_chat(record: dict[str, Any]) -> list[str]:
    """Chat replies as the API returns them: without the space after the transcript's `Assistant:`."""
    return [c["text"].lstrip() for c in record["choices"]]


def seeds(record: dict[str, Any]) -> list[Any]:
    """The seed each choice ran with."""
    return [c["seed"] for c in record["choices"]]


def _input(record: dict[str, Any], prompt: int | None) -> dict[str, Any]:
    """The request's prompt field(s): prompt `prompt` alone, or all of them (None)."""
    if record["endpoint"] == "/v1/chat/completions":
        return {"messages": record["messages"]}
    prompts = _prompts(record)
    if prompt is not None:
        return {"prompt": prompts[prompt]}
    return {"prompt": prompts[0] if len(prompts) == 1 else prompts}


def _base(record: dict[str, Any]) -> dict[str, Any]:
    # the model is found by sha256 (`served_model`, set by the HTTP replay); its name may differ
    # on the replaying server (a renamed folder)
    params = {k: v for k, v in record["params"].items() if k != "model"}
    return params | ({"model": record["served_model"]} if record.get("served_model") else {})


def choice_body(record: dict[str, Any], i: int) -> dict[str, Any]:
    """The request that runs choice i alone: its prompt, n=1 and the seed it ran with."""
    params = _base(record)
    one = {"n": 1, "seed": record["choices"][i]["seed"]} | ({"best_of": None} if "best_of" in params else {})
    return params | one | _input(record, i // params["n"])


def requests(record: dict[str, Any]) -> list[tuple[dict[str, Any], list[int]]]:
    """(request body, the record's choice indexes it answers, in order): one request when the
    request's own seed gives every logged seed, else one per choice."""
    params = _base(record)
    n, seed = params["n"], params["seed"]
    if seed is not None and seeds(record) == [(seed + i % n) % SEEDS for i in range(len(record["choices"]))]:
        return [(params | _input(record, None), list(range(len(record["choices"]))))]
    return [(choice_body(record, i), [i]) for i in range(len(record["choices"]))]


def _send(client: Client, path: str, body: dict[str, Any], expected: int,
          whole: Callable[[dict[str, Any]], str], piece: Callable[[dict[str, Any]], str | None]) -> list[str]:
    """The text of each choice of one request, by its index, read whole or from the stream."""
    texts: dict[int, str] = {}
    if body.get("stream"):
        for event in client.events(path, body):
            for choice in event.get("choices") or []:
                texts[choice["index"]] = texts.get(choice["index"], "") + (piece(choice) or "")
    else:
        for choice in client.post_json(path, body).get("choices") or []:
            texts[choice["index"]] = whole(choice)
    if sorted(texts) != list(range(expected)):
        raise ClientError(f"the server answered choices {sorted(texts)}, not 0 to {expected - 1}")
    return [texts[i] for i in range(expected)]


def _replay_http(client: Client, record: dict[str, Any], whole: Callable[[dict[str, Any]], str],
                 piece: Callable[[dict[str, Any]], str | None]) -> list[str]:
    out = [""] * len(record["choices"])
    for body, indexes in requests(record):
        for i, text in zip(indexes, _send(client, record["endpoint"], body, len(indexes), whole, piece)):
            out[i] = text
    return out


def http_completion(client: Client, record: dict[str, Any]) -> list[str]:
    """Each choice's completion from the server, without the prompt an `echo` puts before it."""
    texts = _replay_http(client, record, lambda c: c["text"], lambda c: c.get("text"))
    if not record["params"].get("echo"):
        return texts
    prompts, n = _prompts(record), record["params"]["n"]
    return [t[len(prompts[i // n]):] if t.startswith(prompts[i // n]) else t for i, t in enumerate(texts)]


def http_chat(client: Client, record: dict[str, Any]) -> list[str]:
    """Each choice's reply from the server."""
    return _replay_http(client, record, lambda c: (c.get("message") or {}).get("content") or "",
                        lambda c: (c.get("delta") or {}).get("content"))


# In-process, each choice's SamplingParams come from openai_convert, the very code the server
# uses (cli may import api), rather than a copy of its mapping of OpenAI's names to the engine's.
def _request(record: dict[str, Any], i: int, kind: type) -> Any:
    """Choice i's request, decoded and checked as the server decodes its body."""
    import msgspec

    try:
        return msgspec.convert(choice_body(record, i), kind)
    except msgspec.ValidationError as exc:
        raise _refuse(record, f"its params are not a valid {record['endpoint']} request: {exc}") from None


def local_completion(model: Any, record: dict[str, Any]) -> list[str]:
    """Each choice run by the local model with the server's own mapping of the request."""
    from service.api.openai_convert import (
        completion_plan,
        completion_prompts,
        job_params,
        logit_bias,
    )
    from service.api.schemas_openai import CompletionRequest

    out = []
    for i in range(len(record["choices"])):
        data = _request(record, i, CompletionRequest)
        [(_, ids)] = completion_prompts(model, data.prompt)  # an empty prompt starts at end-of-text
        engine = model.engine
        params = job_params(data, completion_plan(data), logit_bias(data, engine.vocab_size),
                            engine.context_length, len(ids), 0)
        out.append(model.generate_ids(ids, params)["text"])
    return out


def local_chat(model: Any, record: dict[str, Any]) -> list[str]:
    """Each reply run by the local model on the transcript the server makes of the messages."""
    from service.api.openai_convert import (
        chat_plan,
        chat_transcript,
        job_params,
        logit_bias,
    )
    from service.api.schemas_openai import ChatRequest

    out = []
    for i in range(len(record["choices"])):
        data = _request(record, i, ChatRequest)
        ids = model.tokenize(chat_transcript(data.messages))
        engine = model.engine
        params = job_params(data, chat_plan(data), logit_bias(data, engine.vocab_size),
                            engine.context_length, len(ids), 0)
        out.append(model.generate_ids(ids, params)["text"].lstrip())
    return out
