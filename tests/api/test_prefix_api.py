"""Prefix reuse and split timings through the native HTTP API (Litestar's test client, real models)."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import TestClient

from service.api.app import create_app
from tests.api.test_api import wait_ready
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
