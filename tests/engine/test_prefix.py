"""Prefix reuse and prompt timings on real models written by the project's writer, on both engines
(tests/engine/conftest.py): each reuses what its own prompt plan (engine.chunks) says is exact."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.engine.prefix import AlignedBatches, TiledChunks, shared
from service.engine.sampling import SamplingParams

GREEDY = dict(temperature=0.0, repetition_penalty=1.0)
SEEDED = dict(temperature=1.0, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=1234)


@pytest.fixture
def engine(long_backend):
    return long_backend


def generate(engine, prompt_ids, cache_prompt=True, exact=True, **params):
    gen = engine.generate(prompt_ids, SamplingParams(**params), cache_prompt=cache_prompt, exact=exact)
    text = "".join(gen)
    return gen, text


def test_shared_prefix_keeps_the_last_prompt_token():
    assert shared([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert shared([1, 2, 3], [1, 2, 3]) == 2  # the last token is evaluated again for its logits
    assert shared([1, 2, 3], [1, 2, 3, 4, 5]) == 3
    assert shared([], [1, 2]) == 0 and shared([5], [1, 2]) == 0


def test_aligned_batches_reuse_and_keep_whole_batches():
    plan = AlignedBatches(32)
    assert [plan.size(d, 70) for d in (0, 32, 64)] == [32, 32, 6]
    assert plan.reuse(63, 100) == 32 and plan.reuse(64, 100) == 64 and plan.reuse(31, 40) == 0
    assert plan.kept(70, 70) == 64 and plan.kept(32, 70) == 32


def test_tiled_chunks_make_calls_of_64_or_more_starting_at_multiples_of_4():
    limit = [512]
    plan = TiledChunks(64, 4, lambda: limit[0])

    def cuts(done, total):
        out = []
        while done < total:
            out.append(plan.size(done, total))
            done += out[-1]
        return out

    assert cuts(0, 1000) == [512, 488] and cuts(0, 540) == [476, 64] and cuts(0, 63) == [63]
    limit[0] = 128
    assert cuts(0, 300) == [128, 108, 64] and cuts(0, 129) == [64, 65] and cuts(236, 300) == [64]
    for n in range(64, 1025):
        calls = cuts(0, n)
        assert min(calls) >= 64 and all(c % 4 == 0 for c in calls[:-1]) and sum(calls) == n
    assert plan.reuse(200, 300) == 200 and plan.reuse(290, 300) == 236  # what is left: 64 or more
    assert plan.reuse(203, 400) == 200  # calls start at multiples of 4
    assert plan.reuse(40, 63) == 0 and plan.kept(40, 63) == 0  # a prompt under 64 is one call, not kept
    assert plan.kept(300, 300) == 300 and plan.kept(128, 300) == 128


def test_instance_holds_what_its_plan_keeps_of_its_last_prompt(engine):
    prompt = engine.tokenizer.encode("The cat sat on the mat " * 14)
    assert len(prompt) % 32 and len(prompt) > 64  # ctransformers keeps whole batches of 32 of it
    generate(engine, prompt, max_new_tokens=10, **GREEDY)
    kept = engine.chunks.kept(len(prompt), len(prompt))
    assert engine.sequence == prompt[:kept] and kept > 64


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_reuse_gives_the_same_tokens_as_a_full_evaluation(engine, params):
    first = engine.tokenizer.encode("Once upon a time there was a " * 12)  # > one prompt batch, > 64 tokens
    gen_a, _ = generate(engine, first, max_new_tokens=20, **params)
    follow = first + gen_a.tokens + engine.tokenizer.encode(" and then")  # a conversation's next turn
    cached, cached_text = generate(engine, follow, max_new_tokens=60, **params)
    # llama.cpp: to the token, less what makes the evaluated rest 64 tokens; ctransformers: whole batches
    assert cached.cached_tokens == engine.chunks.reuse(len(first), len(follow)) > 0
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
def test_diverging_prompt_reuses_what_the_plan_allows_of_the_shared_prefix(engine, params):
    a = engine.tokenizer.encode("Alpha beta gamma delta " * 30)
    for cut, tail in ((75, " zeta eta theta"), (75, " zeta eta theta and much more " * 12), (97, "")):
        b = a[:cut] + engine.tokenizer.encode(tail)
        generate(engine, a, max_new_tokens=5, **params)
        gen_b, _ = generate(engine, b, max_new_tokens=40, **params)
        want = engine.chunks.reuse(shared(a, b), len(b))
        assert gen_b.cached_tokens == want and want > 0
        full, _ = generate(engine, b, cache_prompt=False, max_new_tokens=40, **params)
        assert gen_b.tokens == full.tokens


def logits_after(engine, evals: list[list[int]]) -> np.ndarray:
    """The logits after evaluating each list of tokens in its own call, from position 0."""
    n = 0
    for tokens in evals:
        engine.eval(tokens, n)
        n += len(tokens)
    return np.array(engine.logits(), dtype=np.float64)


def chunks(tokens: list[int], size: int) -> list[list[int]]:
    return [tokens[i : i + size] for i in range(0, len(tokens), size)]


def planned(engine, tokens: list[int], start: int = 0) -> np.ndarray:
    """The logits after evaluating tokens[start:] at their positions in the calls engine.chunks makes."""
    while start < len(tokens):
        size = engine.chunks.size(start, len(tokens))
        engine.eval(tokens[start : start + size], start)
        start += size
    return np.array(engine.logits())


def test_reuse_as_the_plan_allows_gives_a_fresh_evaluations_logits_bit_for_bit(engine):
    a = engine.tokenizer.encode("One two three four five six seven. " * 30)[:400]
    tails = (a[:150] + engine.tokenizer.encode(" Eight nine ten." * 20),  # a long new part
             a[:300] + engine.tokenizer.encode(" Eight."))  # a short one: less is reused
    try:
        for b in tails:
            fresh = planned(engine, b)
            planned(engine, a)
            k = engine.chunks.reuse(shared(a, b), len(b))
            assert k > 100
            assert np.array_equal(planned(engine, b, start=k), fresh)
    finally:
        engine.sequence, engine.last_prompt = [], None  # its KV state is not what sequence said


def test_reuse_to_the_token_takes_the_reply_and_any_shared_prefix(engine):
    """MINIVAULT_CACHE_EXACT=false: a conversation's next turn evaluates only what is new."""
    first = engine.tokenizer.encode("Once upon a time there was a " * 6)
    gen_a, _ = generate(engine, first, exact=False, max_new_tokens=20, **GREEDY)
    assert engine.sequence == first + gen_a.tokens[:-1]  # the last token was never evaluated
    follow = first + gen_a.tokens + engine.tokenizer.encode(" and then")
    turn, _ = generate(engine, follow, exact=False, max_new_tokens=20, **GREEDY)
    assert turn.cached_tokens == len(first) + len(gen_a.tokens) - 1
    assert turn.prompt_evaluated == len(follow) - turn.cached_tokens
    assert len(turn.tokens) == 20
    other = follow[:37] + engine.tokenizer.encode(" something else entirely")
    diverged, _ = generate(engine, other, exact=False, max_new_tokens=5, **GREEDY)
    assert diverged.cached_tokens == 37  # to the token, not down to a whole batch
    again, _ = generate(engine, other, exact=False, max_new_tokens=5, **GREEDY)
    assert again.cached_tokens == len(other) and again.tokens == diverged.tokens


def test_reuse_to_the_token_stays_within_a_small_bound_of_a_full_evaluation(engine):
    """What reuse to the token gives up: the reply's tokens were evaluated one per call, which
    ggml sums in other orders than a prompt batch. The difference is small, not zero."""
    batch = engine.chunks.size(0, 10**6)  # its largest prompt call
    first = engine.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 4)
    reply = engine.tokenizer.encode(" It ran away into the woods")
    rest = engine.tokenizer.encode(" and never came back.")
    try:
        full = logits_after(engine, chunks(first + reply + rest, batch))
        turn = logits_after(engine, chunks(first, batch) + [[t] for t in reply] + chunks(rest, batch))
    finally:
        engine.sequence, engine.last_prompt = [], None  # its KV state is not what sequence said
    assert np.abs(turn - full).max() <= 0.01 * np.abs(full).max()  # measured: 0.005 and 0.044 of 66


def test_timings_split_prompt_from_decode(engine):
    prompt = engine.tokenizer.encode("x" * 300)
    gen, _ = generate(engine, prompt, cache_prompt=False, max_new_tokens=40, **GREEDY)
    t = gen.timings()
    assert t["prompt_ms"] > 0 and t["decode_ms"] > 0
    assert t["prompt_tokens_per_second"] == pytest.approx(len(prompt) / t["prompt_ms"] * 1000, rel=1e-3)
    assert t["decode_tokens_per_second"] == pytest.approx(40 / t["decode_ms"] * 1000, rel=1e-3)
    assert gen.prompt_done_at <= gen.first_token_at <= gen.last_token_at


def test_cancel_during_the_prompt_stops_within_one_call(engine):
    prompt = engine.tokenizer.encode(" ".join(str(i) for i in range(1000)))[:1000]
    first = engine.chunks.size(0, len(prompt))
    cancel = threading.Event()
    gen = engine.generate(prompt, SamplingParams(max_new_tokens=5), cancel=cancel, cache_prompt=False)
    seen: dict[str, int] = {}

    def watch() -> None:
        while gen.prompt_evaluated < first:
            pass
        cancel.set()
        seen["at_cancel"] = gen.prompt_evaluated

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert list(gen) == []
    watcher.join()
    assert gen.finish_reason == "cancelled" and gen.tokens == []
    at = seen["at_cancel"]
    assert gen.prompt_evaluated - at <= engine.chunks.size(at, len(prompt))  # at most the call in flight
    if first + engine.chunks.size(first, len(prompt)) < len(prompt):  # a third call was never made
        assert gen.prompt_evaluated < len(prompt)
    if type(engine).__name__ == "LlamaSlot":  # llama.cpp frees a cancelled sequence's cells at once
        assert gen.engine.sequence == [] and gen.engine.kv_len == 0
    else:  # ctransformers' instance keeps what was evaluated, reusable by the next request
        assert gen.engine.sequence == prompt[: gen.prompt_evaluated]
