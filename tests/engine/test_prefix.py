"""Prefix reuse and prompt timings on real models written by the project's writer, on both engines
(tests/engine/conftest.py): each reuses its prompt in whole batches of its own size."""

from __future__ import annotations

import threading

import pytest

from service.engine.prefix import reusable
from service.engine.sampling import SamplingParams

GREEDY = dict(temperature=0.0, repetition_penalty=1.0)
SEEDED = dict(temperature=1.0, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=1234)


@pytest.fixture
def engine(long_backend):
    return long_backend


def generate(engine, prompt_ids, cache_prompt=True, **params):
    gen = engine.generate(prompt_ids, SamplingParams(**params), cache_prompt=cache_prompt)
    text = "".join(gen)
    return gen, text


def test_reusable_is_the_shared_prefix_in_whole_batches_and_keeps_the_last_prompt_token():
    assert reusable([1, 2, 3, 4], [1, 2, 9, 4], batch=1) == 2
    assert reusable([1, 2, 3], [1, 2, 3], batch=1) == 2  # the last token is evaluated again for its logits
    assert reusable([1, 2, 3], [1, 2, 3, 4, 5], batch=1) == 3
    assert reusable([], [1, 2], batch=1) == 0 and reusable([5], [1, 2], batch=1) == 0
    seq = list(range(64))
    assert reusable(seq, seq + [7], batch=32) == 64
    assert reusable(seq, seq, batch=32) == 32  # 63 shared tokens make one whole batch
    assert reusable(seq, seq[:40] + [99] * 30, batch=32) == 32


def test_instance_holds_the_whole_prompt_batches_of_its_last_sequence(engine):
    prompt = engine.tokenizer.encode("The cat sat on the mat " * 7)
    batch = engine.prompt_batch
    assert len(prompt) % batch and len(prompt) > batch
    generate(engine, prompt, max_new_tokens=10, **GREEDY)
    assert engine.sequence == prompt[: len(prompt) - len(prompt) % batch]


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_reuse_gives_the_same_tokens_as_a_full_evaluation(engine, params):
    first = engine.tokenizer.encode("Once upon a time there was a " * 6)  # > one prompt batch
    gen_a, _ = generate(engine, first, max_new_tokens=20, **params)
    follow = first + gen_a.tokens + engine.tokenizer.encode(" and then")  # a conversation's next turn
    cached, cached_text = generate(engine, follow, max_new_tokens=60, **params)
    assert cached.cached_tokens == len(first) - len(first) % engine.prompt_batch > 0
    assert cached.prompt_evaluated == len(follow) - cached.cached_tokens
    full, full_text = generate(engine, follow, cache_prompt=False, max_new_tokens=60, **params)
    assert full.cached_tokens == 0 and full.prompt_evaluated == len(follow)
    assert cached.tokens == full.tokens and cached_text == full_text
    # the same prompt again: nothing is evaluated, the kept logits pick the first token
    again, _ = generate(engine, follow, max_new_tokens=60, **params)
    assert again.cached_tokens == len(follow) and again.prompt_evaluated == 0
    assert again.tokens == full.tokens


def test_same_prompt_after_another_is_evaluated_again(engine):
    a = engine.tokenizer.encode("First prompt here. " * 4)
    b = engine.tokenizer.encode("Second one, other text. " * 4)
    ref, _ = generate(engine, a, cache_prompt=False, max_new_tokens=20, **SEEDED)
    generate(engine, b, max_new_tokens=5, **SEEDED)
    back, _ = generate(engine, a, max_new_tokens=20, **SEEDED)
    assert back.cached_tokens == 0 and back.prompt_evaluated == len(a)  # b overwrote a's state
    same, _ = generate(engine, a, max_new_tokens=20, **SEEDED)
    assert same.cached_tokens == len(a) and same.prompt_evaluated == 0
    assert ref.tokens == back.tokens == same.tokens


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_diverging_prompt_reuses_only_the_shared_batches(engine, params):
    batch = engine.prompt_batch
    a = engine.tokenizer.encode("Alpha beta gamma delta " * 20)
    b = a[: 2 * batch + 11] + engine.tokenizer.encode(" zeta eta theta")
    generate(engine, a, max_new_tokens=5, **params)
    gen_b, _ = generate(engine, b, max_new_tokens=40, **params)
    assert gen_b.cached_tokens == 2 * batch
    full, _ = generate(engine, b, cache_prompt=False, max_new_tokens=40, **params)
    assert gen_b.tokens == full.tokens


def test_timings_split_prompt_from_decode(engine):
    prompt = engine.tokenizer.encode("x" * 300)
    gen, _ = generate(engine, prompt, cache_prompt=False, max_new_tokens=40, **GREEDY)
    t = gen.timings()
    assert t["prompt_ms"] > 0 and t["decode_ms"] > 0
    assert t["prompt_tokens_per_second"] == pytest.approx(len(prompt) / t["prompt_ms"] * 1000, rel=1e-3)
    assert t["decode_tokens_per_second"] == pytest.approx(40 / t["decode_ms"] * 1000, rel=1e-3)
    assert gen.prompt_done_at <= gen.first_token_at <= gen.last_token_at


def test_cancel_during_the_prompt_stops_within_one_batch(engine):
    prompt = engine.tokenizer.encode("y" * 1000)[:1000]
    cancel = threading.Event()
    gen = engine.generate(prompt, SamplingParams(max_new_tokens=5), cancel=cancel, cache_prompt=False)
    seen: dict[str, int] = {}

    def watch() -> None:
        while gen.prompt_evaluated < 2 * engine.prompt_batch:
            pass
        cancel.set()
        seen["at_cancel"] = gen.prompt_evaluated

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert list(gen) == []
    watcher.join()
    assert gen.finish_reason == "cancelled" and gen.tokens == []
    assert gen.prompt_evaluated - seen["at_cancel"] <= engine.prompt_batch  # at most the batch in flight
    assert gen.prompt_evaluated < len(prompt)
    if type(engine).__name__ == "LlamaSlot":  # llama.cpp frees a cancelled sequence's cells at once
        assert gen.engine.sequence == [] and gen.engine.kv_len == 0
    else:  # ctransformers' instance keeps what was evaluated, reusable by the next request
        assert gen.engine.sequence == prompt[: gen.prompt_evaluated]
