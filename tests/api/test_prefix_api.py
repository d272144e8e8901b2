"""Prefix reuse and split timings through the native HTTP API (Litestar's test client, real models)."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import TestClient

from service.api.app import create_app
from tests.api.test_api import wait_ready
from tests.support.engines import ENGINES, require_llamacpp
from tests.support.server import read_log

PROMPT_A = "In a hole in the ground there lived a hobbit. " * 3
PROMPT_B = "It was the best of times, it was the worst of times. " * 3


def start(settings):
    client = TestClient(create_app(settings))
    client.__enter__()
    wait_ready(client)
    return client


def gen(client, prompt, **extra):
    r = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 16, "temperature": 0.0} | extra)
    assert r.status_code == 200, r.text
    return r.json()


def whole_batches(client, prompt: str) -> int:
    n = len(client.post("/tokenize", json={"text": prompt}).json()["tokens"])
    return (n - 1) // 32 * 32


def test_repeated_prompt_is_served_from_cache_with_the_same_text(long_model, settings_for):
    settings = settings_for(long_model)
    client = start(settings)
    try:
        first = gen(client, PROMPT_A)
        second = gen(client, PROMPT_A)
        off = gen(client, PROMPT_A, cache_prompt=False)
        batches = whole_batches(client, PROMPT_A)
    finally:
        client.__exit__(None, None, None)
    assert first["usage"]["cached_tokens"] == 0
    assert second["usage"]["cached_tokens"] == second["usage"]["prompt_tokens"] > batches > 0  # all of it
    assert off["usage"]["cached_tokens"] == 0
    assert first["response"] == second["response"] == off["response"]
    t = off["timings"]
    assert t["prompt_tokens_per_second"] == pytest.approx(off["usage"]["prompt_tokens"] / t["prompt_ms"] * 1000,
                                                          rel=1e-2)
    assert t["tokens_per_second"] == pytest.approx(16 / t["decode_ms"] * 1000, rel=1e-2)
    assert t["prompt_ms"] + t["decode_ms"] <= t["total_ms"]
    assert second["timings"]["prompt_tokens_per_second"] in (0.0, None)  # nothing was evaluated
    records = {r["id"]: r for r in read_log(Path(settings.log_file))}
    rec = records[second["id"]]
    assert rec["usage"] == second["usage"] and rec["timings"] == second["timings"]
    assert records[off["id"]]["usage"]["cached_tokens"] == 0


def test_setting_turns_reuse_off_for_every_request(long_model, settings_for):
    client = start(settings_for(long_model, cache_prompt=False))
    try:
        gen(client, PROMPT_A)
        again = gen(client, PROMPT_A, cache_prompt=True)
    finally:
        client.__exit__(None, None, None)
    assert again["usage"]["cached_tokens"] == 0


def test_cache_prompt_must_be_a_boolean(long_model, settings_for):
    client = start(settings_for(long_model))
    try:
        r = client.post("/generate", json={"prompt": "x", "cache_prompt": "yes"})
    finally:
        client.__exit__(None, None, None)
    assert r.status_code == 422 and "cache_prompt" in r.text


def test_scheduler_sends_each_prompt_to_the_instance_holding_its_prefix(long_model, settings_for):
    client = start(settings_for(long_model, workers=2))
    try:
        gen(client, PROMPT_A)  # instance 0
        gen(client, PROMPT_B)  # instance 1: the empty one, not A's
        # each follow-up finds its own prefix, whichever instance was used last
        b2 = gen(client, PROMPT_B + " Again.")
        a2 = gen(client, PROMPT_A + " Again.")
        a3 = gen(client, PROMPT_A + " Once more.")
        batches_a, batches_b = whole_batches(client, PROMPT_A), whole_batches(client, PROMPT_B)
    finally:
        client.__exit__(None, None, None)
    assert b2["usage"]["cached_tokens"] == batches_b > 0
    assert a2["usage"]["cached_tokens"] == batches_a > 0
    assert a3["usage"]["cached_tokens"] == batches_a


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "to-the-token"])
def test_a_diverging_prompt_reuses_whole_batches_or_to_the_token(long_model, settings_for, exact):
    """MINIVAULT_CACHE_EXACT: whole prompt batches (the default: results bit for bit those without
    reuse), or to the token as llama-server does; native usage and /v1 usage say how many."""
    client = start(settings_for(long_model, cache_exact=exact))
    other = PROMPT_A[:100] + "and then the dragon woke"
    try:
        ids = [client.post("/tokenize", json={"text": t}).json()["tokens"] for t in (PROMPT_A, other)]
        gen(client, PROMPT_A)
        native = gen(client, other)
        gen(client, PROMPT_A)
        r = client.post("/v1/completions", json={"prompt": other, "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
    finally:
        client.__exit__(None, None, None)
    shared = common_prefix(*ids)
    assert shared % 32 and shared > 32  # so the two ways differ
    want = shared - shared % 32 if exact else shared
    assert native["usage"]["cached_tokens"] == want
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == want


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_reuses_what_stays_exact_and_usage_says_how_much(long_model, settings_for, engine):
    """Exact reuse by default: whole 32-token batches on ctransformers; on llama.cpp to a multiple
    of 4, leaving 64 tokens or more to evaluate (engine/prefix.py). The text is the uncached one."""
    if engine == "llamacpp":
        require_llamacpp()
    client = start(settings_for(long_model, engine=engine, parallel=1))
    story = " ".join(f"Line {i} of the story." for i in range(40))
    turns = (story[:500] + " And then the dragon woke up, hungry and cross." * 6,  # a long new part
             story[:-20] + " The end.")  # a short one
    try:
        results = []
        for other in turns:
            ids = [client.post("/tokenize", json={"text": t}).json()["tokens"] for t in (story, other)]
            gen(client, story)
            native = gen(client, other)
            fresh = gen(client, other, cache_prompt=False)
            gen(client, story)
            r = client.post("/v1/completions", json={"prompt": other, "max_tokens": 4, "temperature": 0})
            assert r.status_code == 200, r.text
            results.append((ids, native, fresh, r.json()))
    finally:
        client.__exit__(None, None, None)
    for (story_ids, other_ids), native, fresh, v1 in results:
        shared = min(common_prefix(story_ids, other_ids), len(other_ids) - 1)
        want = shared // 32 * 32 if engine == "ctransformers" else min(shared, len(other_ids) - 64) // 4 * 4
        assert want > 64
        assert native["usage"]["cached_tokens"] == want
        assert v1["usage"]["prompt_tokens_details"]["cached_tokens"] == want
        assert native["response"] == fresh["response"] and fresh["usage"]["cached_tokens"] == 0
