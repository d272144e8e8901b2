"""The engine on real models written by the project's GGML writer, on both engines (tests/engine/conftest.py):
the same tokens, pieces, stops, seeds, limits, cancellation and timeouts from ctransformers and llama.cpp."""

from __future__ import annotations

import threading
import time

import pytest

from service.engine.ctransformers_backend import Engine
from service.engine.sampling import SamplingParams
from service.errors import ContextOverflow

GREEDY = dict(temperature=0.0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def hello(scripted):
    # "日" is three bytes split over two tokens; "本" is one token of three bytes
    return scripted("hello", [b"H", b"i", b" ", b"\xe6\x97", b"\xa5", b"\xe6\x9c\xac", b"!", b"<|endoftext|>"],
                    extra=[b"\xe6\x97", b"\xa5", b"\xe6\x9c\xac"])


def run(engine, prompt_ids, **params):
    gen = engine.generate(prompt_ids, SamplingParams(**params))
    pieces = list(gen)
    return pieces, gen


def test_scripted_model_streams_each_token_and_stops_at_end_of_text(open_backend, hello):
    engine = open_backend(hello.path)
    pieces, gen = run(engine, hello.prompt_ids, max_new_tokens=50, **GREEDY)
    assert pieces == ["H", "i", " ", "日", "本", "!"]  # the split character comes out whole, once
    assert gen.finish_reason == "stop"
    assert len(gen.tokens) == 7
    assert gen.text == "Hi 日本!"


def test_max_new_tokens_ends_with_length(open_backend, hello):
    engine = open_backend(hello.path)
    pieces, gen = run(engine, hello.prompt_ids, max_new_tokens=4, **GREEDY)
    assert "".join(pieces) == "Hi "  # the 4th token is half a character: never emitted broken
    assert gen.finish_reason == "length"
    assert len(gen.tokens) == 4


@pytest.mark.parametrize(
    "stop, text",
    [(["i 日"], "H"), (["本"], "Hi 日"), (["!"], "Hi 日本"), (["zz", " 日本"], "Hi"), (["nothing"], "Hi 日本!")],
)
def test_stop_strings_end_generation_and_are_not_returned(open_backend, hello, stop, text):
    engine = open_backend(hello.path)
    pieces, gen = run(engine, hello.prompt_ids, max_new_tokens=50, stop=tuple(stop), **GREEDY)
    assert "".join(pieces) == text
    assert gen.finish_reason == "stop"


def test_held_back_text_that_is_not_a_stop_is_released(open_backend, hello):
    engine = open_backend(hello.path)
    pieces, gen = run(engine, hello.prompt_ids, max_new_tokens=50, stop=("i 日X",), **GREEDY)
    assert "".join(pieces) == "Hi 日本!"
    assert "i 日" not in pieces[:2]  # "i", " ", "日" were held while they could still start the stop string


def test_held_back_text_is_released_when_end_of_text_comes(open_backend, hello):
    engine = open_backend(hello.path)
    pieces, gen = run(engine, hello.prompt_ids, max_new_tokens=50, stop=("!X",), **GREEDY)
    assert "".join(pieces) == "Hi 日本!" and pieces[-1] == "!"  # held while it could start "!X"
    assert gen.finish_reason == "stop" and len(gen.tokens) == 7


def test_same_seed_same_text_and_different_seed_differs(open_backend, tiny_model):
    engine = open_backend(tiny_model)
    prompt = engine.tokenizer.encode("Hello world")
    texts = [run(engine, prompt, max_new_tokens=40, seed=s)[1].tokens for s in (7, 7, 8)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_context_overflow_names_both_numbers(open_backend, tiny_model):
    engine = open_backend(tiny_model)
    prompt = engine.tokenizer.encode("x" * 1000)
    assert len(prompt) == 1000
    with pytest.raises(ContextOverflow) as exc:
        engine.generate(prompt, SamplingParams(max_new_tokens=100))
    assert "1000" in exc.value.message and "100" in exc.value.message and "1024" in exc.value.message
    assert exc.value.field == "max_new_tokens"
    engine.generate(prompt, SamplingParams(max_new_tokens=24))  # exactly full: fine


def test_cancel_stops_within_a_token(open_backend, long_model):
    engine = open_backend(long_model)
    cancel = threading.Event()
    gen = engine.generate(engine.tokenizer.encode("Hi"), SamplingParams(max_new_tokens=1000), cancel=cancel)
    pieces = 0
    tokens_at_cancel = None
    for _ in gen:
        pieces += 1
        if pieces == 5:
            # count tokens, not pieces: a token ending inside a UTF-8 character yields no piece
            tokens_at_cancel = len(gen.tokens)
            cancel.set()
    assert gen.finish_reason == "cancelled"
    assert tokens_at_cancel is not None
    assert len(gen.tokens) == tokens_at_cancel  # no token is sampled after the cancel is seen


def test_deadline_ends_with_timeout(open_backend, long_model):
    engine = open_backend(long_model)
    gen = engine.generate(engine.tokenizer.encode("Hi"), SamplingParams(max_new_tokens=1000),
                          deadline=time.monotonic() + 0.2)
    list(gen)
    assert gen.finish_reason == "timeout"
    assert 0 < len(gen.tokens) < 1000


def test_two_instances_generate_concurrently_without_corrupting_each_other(long_model, tmp_path):
    # both instances in one process: each has its own copy of ctransformers' library state
    engines = [Engine(long_model, threads=1, instance=i, libdir=tmp_path) for i in range(2)]
    prompt = engines[0].tokenizer.encode("Hello")
    params = SamplingParams(max_new_tokens=150, **GREEDY)
    reference = run(engines[0], prompt, **{f: getattr(params, f) for f in ("max_new_tokens",)}, **GREEDY)[1].tokens
    results: dict[int, list[int]] = {}

    def work(i: int) -> None:
        results[i] = run(engines[i], prompt, max_new_tokens=150, **GREEDY)[1].tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == reference and results[1] == reference


def test_truncated_file_is_a_clear_error(tiny_model, tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated"):
        Engine(bad, threads=1)
