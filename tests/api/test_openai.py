"""The /v1 API through the official `openai` SDK and raw HTTP, against a live server."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from service.engine.ctransformers_backend import Engine
from service.engine.sampling import log_softmax
from service.runtime.loading import load_tokenizer
from tests.support.server import new_records, read_log, wait_idle

M = "gpt2-vocab"


@pytest.fixture(scope="module")
def server(tmp_path_factory, gpt2_vocab_model):
    from tests.support.server import LiveServer

    s = LiveServer(gpt2_vocab_model, tmp_path_factory.mktemp("v1") / "log.jsonl", MINIVAULT_WORKERS="2")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_completion_plain_has_openais_shape_and_one_log_record(server, client):
    before = len(read_log(server.log_file))
    r = client.completions.create(model=M, prompt="Hello world", max_tokens=5, user="alice", seed=3)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "gpt2-vocab"
    (choice,) = r.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length") and choice.logprobs is None
    assert r.usage.prompt_tokens == 2 and r.usage.total_tokens == 2 + r.usage.completion_tokens
    (record,) = new_records(server.log_file, before)
    assert record["id"] == r.id and record["endpoint"] == "/v1/completions" and record["user"] == "alice"
    assert record["params"]["max_tokens"] == 5 and record["params"]["seed"] == 3
    assert record["usage"] == {"prompt_tokens": 2, "completion_tokens": r.usage.completion_tokens,
                               "total_tokens": r.usage.total_tokens, "cached_tokens": 0}
    assert record["choices"][0]["text"] == choice.text


def test_completion_id_is_the_request_id(server):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert r.headers["x-request-id"] == r.json()["id"]


def test_seeds_repeat_and_token_ids_equal_the_text(server, client):
    ids = httpx.post(server.url + "/tokenize", json={"text": "Once upon a time"}).json()["tokens"]
    kw = {"max_tokens": 12, "seed": 11, "temperature": 1.0}
    a = client.completions.create(model=M, prompt="Once upon a time", **kw).choices[0].text
    b = client.completions.create(model=M, prompt="Once upon a time", **kw).choices[0].text
    c = client.completions.create(model=M, prompt=ids, **kw).choices[0].text
    d = client.completions.create(model=M, prompt=[ids], **kw).choices[0].text
    assert a == b == c == d
    long_ids = httpx.post(server.url + "/tokenize", json={"text": " word" * 40}).json()["tokens"]
    assert len(long_ids) == 40  # a flat list of token ids is one prompt, not 40
    long = client.completions.create(model=M, prompt=long_ids, max_tokens=2, echo=True)
    assert long.choices[0].text.startswith(" word" * 40) and long.usage.prompt_tokens == 40
    with pytest.raises(openai.BadRequestError, match="at most 16 prompts"):
        client.completions.create(model=M, prompt=["x"] * 17, max_tokens=1)


def test_n_and_several_prompts_give_one_choice_each_and_one_record(server, client):
    before = len(read_log(server.log_file))
    r = client.completions.create(model=M, prompt=["One", "Two"], n=2, max_tokens=4, seed=1, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    (record,) = new_records(server.log_file, before)
    assert r.usage.prompt_tokens == 2  # each prompt counted once, not once per choice
    assert r.usage.completion_tokens == sum(c["completion_tokens"] for c in record["choices"])
    assert [c["text"] for c in record["choices"]] == [c.text for c in r.choices]
    assert record["prompt"] == ["One", "Two"] and len(record["choices"]) == 4
    assert [c["seed"] for c in record["choices"]] == [1, 2, 1, 2]  # choice k of a prompt uses seed + k


def test_stop_string_ends_the_choice(client):
    full = client.completions.create(model=M, prompt="The", max_tokens=30, seed=5, temperature=1.0).choices[0].text
    stop = full[3:5]
    assert stop.strip(), full
    cut = client.completions.create(model=M, prompt="The", max_tokens=30, seed=5, temperature=1.0, stop=stop).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_streamed_completion_with_usage(client):
    chunks = list(client.completions.create(model=M, prompt="Hello", max_tokens=6, stream=True, seed=2,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    whole = client.completions.create(model=M, prompt="Hello", max_tokens=6, seed=2).choices[0]
    assert text == whole.text
    assert chunks[-2].choices[0].finish_reason == whole.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


LONG = "It was a bright cold day in April, and the clocks were striking thirteen. " * 4  # > 32 tokens


def test_usage_reports_the_prompt_tokens_served_from_the_prefix_cache(client):
    def cached(usage) -> int:
        assert 0 <= usage.prompt_tokens_details.cached_tokens <= usage.prompt_tokens
        return usage.prompt_tokens_details.cached_tokens

    kw = {"model": M, "max_tokens": 3, "temperature": 0.0}
    first = client.completions.create(prompt="First: " + LONG, **kw).usage
    assert first.prompt_tokens > 32 and cached(first) == 0
    again = client.completions.create(prompt="First: " + LONG, **kw).usage
    assert cached(again) == again.prompt_tokens  # the very same prompt: none of it evaluated
    off = client.completions.create(prompt="First: " + LONG, extra_body={"cache_prompt": False}, **kw).usage
    assert cached(off) == 0
    streamed = list(client.completions.create(prompt="First: " + LONG, stream=True,
                                              stream_options={"include_usage": True}, **kw))
    assert cached(streamed[-1].usage) == streamed[-1].usage.prompt_tokens

    msgs = [{"role": "user", "content": "Second: " + LONG}]
    chat = [client.chat.completions.create(messages=msgs, **kw).usage for _ in range(2)]
    assert cached(chat[0]) == 0 and cached(chat[1]) > 0
    chunks = list(client.chat.completions.create(messages=msgs, stream=True, stream_options={"include_usage": True},
                                                 extra_body={"cache_prompt": False}, **kw))
    assert chunks[-1].choices == [] and cached(chunks[-1].usage) == 0
    chunks = list(client.chat.completions.create(messages=msgs, stream=True, stream_options={"include_usage": True},
                                                 **kw))
    assert cached(chunks[-1].usage) > 0


def _engine_logprobs(model: Path, ids: list[int]) -> list[np.ndarray]:
    """log-softmax after each prefix, from the engine's logits directly (one position at a time)."""
    engine = Engine(model, threads=1, tokenizer=load_tokenizer(model))
    try:
        out = []
        for pos, t in enumerate(ids):
            engine.eval([t], pos)
            out.append(log_softmax(engine.logits()))
        return out
    finally:
        engine.close()


def test_echo_with_max_tokens_0_scores_the_prompt_exactly(server, client, gpt2_vocab_model):
    prompt = "The quick brown fox jumps"
    ids = httpx.post(server.url + "/tokenize", json={"text": prompt}).json()["tokens"]
    r = client.completions.create(model=M, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    (choice,) = r.choices
    lp = choice.logprobs
    assert choice.text == prompt and r.usage.completion_tokens == 0
    assert "".join(lp.tokens) == prompt and lp.text_offset[0] == 0
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    expected = _engine_logprobs(gpt2_vocab_model, ids)
    for pos in range(1, len(ids)):
        assert lp.token_logprobs[pos] == pytest.approx(expected[pos - 1][ids[pos]], abs=1e-4)
        best = max(lp.top_logprobs[pos].values())
        assert best == pytest.approx(expected[pos - 1].max(), abs=1e-4)


def test_completion_logprobs_are_exact(server, client, gpt2_vocab_model):
    r = client.completions.create(model=M, prompt="Hello there", max_tokens=4, logprobs=2, temperature=0.0)
    lp = r.choices[0].logprobs
    ids = httpx.post(server.url + "/tokenize", json={"text": "Hello there"}).json()["tokens"]
    gen = httpx.post(server.url + "/tokenize", json={"text": r.choices[0].text}).json()["tokens"]
    expected = _engine_logprobs(gpt2_vocab_model, ids + gen)
    for i, token in enumerate(gen[: len(lp.token_logprobs)]):
        assert lp.token_logprobs[i] == pytest.approx(expected[len(ids) - 1 + i][token], abs=1e-4)
        assert len(lp.top_logprobs[i]) <= 2
    assert lp.text_offset == sorted(lp.text_offset)


def test_chat_plain_and_streamed(server, client):
    before = len(read_log(server.log_file))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    r = client.chat.completions.create(model=M, messages=msgs, max_tokens=8, seed=4)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=M, messages=msgs, max_tokens=8, seed=4, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    records = new_records(server.log_file, before, count=2)
    assert records[0]["prompt"] == "System: Be brief.\nUser: Hi\nAssistant:"
    assert records[0]["endpoint"] == "/v1/chat/completions" and records[0]["params"]["max_tokens"] == 8


def test_models_list_and_retrieve(client, server):
    (m,) = client.models.list().data
    assert m.id == "gpt2-vocab" and m.object == "model" and m.owned_by == "minivault"
    extra = m.model_dump()
    assert extra["context_length"] == 1024 and extra["vocab_size"] == 50257 and extra["size_bytes"] > 0
    assert client.models.retrieve("gpt2-vocab").id == "gpt2-vocab"
    with pytest.raises(openai.NotFoundError, match="available models: gpt2-vocab"):
        client.models.retrieve("gpt-4")


@pytest.mark.parametrize("kwargs, field, words", [
    ({"temperature": 2.5}, "temperature", "<= 2.0"),
    ({"n": 9}, "n", "<= 8"),
    ({"logprobs": 6}, "logprobs", "<= 5"),
    ({"presence_penalty": -3}, "presence_penalty", ">= -2.0"),
    ({"stop": ["a"] * 5}, "stop", "length <= 4"),
    ({"stop": ""}, "stop", "length >= 1"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias.99999999", "not a token id"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "<= 100"),
    ({"suffix": "x"}, "suffix", "not supported"),
    ({"best_of": 3}, "best_of", "best_of equal to n"),
    ({"max_tokens": 1024}, "max_tokens", "over the model's context of 1024"),
])
def test_bad_requests_are_sdk_bad_request_errors_naming_the_field(client, kwargs, field, words):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=M, prompt="Hello world", **({"max_tokens": 2} | kwargs))
    body = info.value.body
    assert body["param"] == field or body["param"].startswith(field), body
    assert words in body["message"] and field.split(".")[0] in body["message"] + str(body["param"])
    assert body["type"] == "invalid_request_error"


def test_chat_messages_are_validated(client):
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=M, messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=M, messages=[])
    with pytest.raises(openai.NotFoundError, match="available models"):
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x"}])


def test_native_errors_keep_their_shape(server):
    r = httpx.post(server.url + "/generate", json={"prompt": "x", "temperature": 9})
    assert r.status_code == 422 and r.json()["error"]["field"] == "temperature"


def test_sse_framing_byte_for_byte(server):
    body = json.dumps({"prompt": "Hello", "max_tokens": 3, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"content-type: text/event-stream" in head.lower() and b"transfer-encoding: chunked" in head.lower()
    data = _dechunk(payload)
    assert data.endswith(b"\n\ndata: [DONE]\n\n")
    events = data.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    for e in events[:-2]:
        assert e.startswith(b"data: {") and b"\n" not in e and b"\r" not in e
        assert json.loads(e[6:])["object"] == "text_completion"
    assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] is not None


def _dechunk(payload: bytes) -> bytes:
    out = b""
    while True:
        size, _, rest = payload.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, payload = out + rest[:n], rest[n + 2:]


def test_native_stream_sse_and_plain_text_unchanged(server):
    body = {"prompt": "Hello", "max_new_tokens": 5, "seed": 9}
    plain = httpx.post(server.url + "/generate/stream", json=body)
    assert plain.headers["content-type"] == "text/plain; charset=utf-8"
    r = httpx.post(server.url + "/generate/stream", json=body, headers={"Accept": "text/event-stream"})
    events = r.text.split("\n\n")
    assert events[-1] == "" and events[-2].startswith("event: done\ndata: ")
    text = "".join(json.loads(e.removeprefix("data: "))["text"] for e in events[:-2])
    assert text == plain.text
    done = json.loads(events[-2].split("data: ", 1)[1])
    assert done["finish_reason"] in ("stop", "length") and done["usage"]["completion_tokens"] <= 5
    assert set(done["timings"]) == {"queue_ms", "first_token_ms", "total_ms", "tokens_per_second", "prompt_ms",
                                    "prompt_tokens_per_second", "decode_ms"}


def test_mid_stream_disconnect_frees_the_worker(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS="1")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    stream = client.completions.create(model="long", prompt="x", max_tokens=900, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_idle(server.url, timeout=10)
    server.stop()
    (record,) = read_log(server.log_file)
    assert record["status"] == "cancelled" and record["choices"][0]["completion_tokens"] < 900


def test_queue_full_is_a_rate_limit_error_with_retry_after(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS="1", MINIVAULT_MAX_QUEUE="1")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:  # 3 jobs for 2 places: admitted all or none
        client.completions.create(model="long", prompt="x", max_tokens=5, n=3)
    assert info.value.response.headers["retry-after"] == "1"
    assert "fewer choices" in info.value.body["message"]
    time.sleep(0.1)
    assert httpx.get(server.url + "/health").json()["busy"] == 0
    assert client.completions.create(model="long", prompt="x", max_tokens=2, n=2).usage.completion_tokens == 4


def test_chat_logprobs_and_logit_bias(server, client):
    forced = httpx.post(server.url + "/detokenize", json={"tokens": [1000]}).json()["text"]
    r = client.completions.create(model=M, prompt="Hello", max_tokens=3, logit_bias={"1000": 100}, logprobs=0)
    assert r.choices[0].logprobs.tokens == [forced] * 3 and r.choices[0].text == forced * 3
    c = client.chat.completions.create(model=M, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                       logprobs=True, top_logprobs=2, seed=1)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token for t in content)


EXTREME_BODIES = [
    {"temperature": 1e-300}, {"temperature": 2.0}, {"top_p": 1e-300}, {"top_p": 1.0}, {"top_k": 1},
    {"top_k": 1_000_000}, {"repetition_penalty": 1e-300}, {"repetition_penalty": 10.0},
    {"presence_penalty": -2.0}, {"presence_penalty": 2.0}, {"frequency_penalty": -2.0}, {"frequency_penalty": 2.0},
    {"logit_bias": {"0": -100, "1": 100}}, {"seed": 0}, {"seed": 2**63 - 1}, {"logprobs": 5, "echo": True},
    {"temperature": 1e-300, "top_p": 1e-300, "repetition_penalty": 1e-300, "frequency_penalty": 2.0, "logprobs": 5},
]


@pytest.mark.parametrize("extra", EXTREME_BODIES, ids=lambda b: ",".join(b))
def test_extreme_sampling_values_are_answered_over_http(server, extra):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4} | extra, timeout=30)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    if lp:
        assert all(x is None or -9999.0 <= x <= 0 for x in lp["token_logprobs"])
    native = {k: v for k, v in extra.items() if k in ("temperature", "top_p", "top_k", "repetition_penalty", "seed")}
    if native:
        r = httpx.post(server.url + "/generate", json={"prompt": "Hello", "max_new_tokens": 4} | native, timeout=30)
        assert r.status_code == 200, r.text
