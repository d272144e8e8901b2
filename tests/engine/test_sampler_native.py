"""The sampler's penalties, top-k and draw in C (engine/_sampler.c) against Python and numpy; its argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine import sampling
from service.engine.sampling import Sampler, SamplingParams

pytestmark = pytest.mark.skipif(
    sampling._native is None, reason="the C sampler (_sampler.c) was not built (no C compiler or Python headers at install)")


def _cases(count: int):
    """Logits (NaN, infinities, ties, flat runs), a history and k, drawn at random."""
    rng = np.random.default_rng(7)
    for trial in range(count):
        n = int(rng.choice([5, 60, 700, 3000, 50_257]))
        raw = (rng.standard_normal(n) * 3).astype(np.float32)
        if trial % 5 == 0:
            raw[rng.integers(0, n, 10)] = np.nan
        if trial % 7 == 0:
            raw[rng.integers(0, n, 10)] = np.inf
        if trial % 11 == 0:
            raw[rng.integers(0, n, n // 2)] = -np.inf
        if trial % 13 == 0:
            raw = np.round(raw).astype(np.float32)  # many ties
        history = [int(t) for t in rng.integers(0, n, int(rng.choice([0, 5, 80])))]
        params = SamplingParams(repetition_penalty=float(rng.choice([1.0, 1.1, 3.0])),
                                presence_penalty=float(rng.choice([0.0, 0.5])),
                                logit_bias=((0, 1e30), (n - 1, -5.0)) if trial % 3 == 0 else ())
        yield raw, history, params, min(int(rng.choice([1, 2, 40, 200])), n)


def test_the_c_top_k_is_the_numpy_one(monkeypatch):
    for raw, history, params, k in _cases(1500):
        sampler = Sampler(params)
        c_ids, c_vals = sampler._top(raw, history, k)
        with monkeypatch.context() as m:
            m.setattr(sampling, "_native", None)
            with np.errstate(over="ignore", under="ignore"):
                np_ids, np_vals = sampler._top(raw, history, k)
        assert np.array_equal(c_ids, np_ids) and np.array_equal(c_vals, np_vals), (raw.size, k, history)


def test_the_c_top_k_refuses_what_it_cannot_rank():
    top_k = sampling._native.top_k
    logits = np.zeros(10, dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        top_k(np.zeros(10), 3, [], [])
    with pytest.raises(ValueError, match="k is 11: 1 to 10"):
        top_k(logits, 11, [], [])
    with pytest.raises(ValueError, match="sorted, unique and inside"):
        top_k(logits, 3, [4, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="sorted, unique and inside"):
        top_k(logits, 3, [10], [1.0])
    with pytest.raises(TypeError, match="same length"):
        top_k(logits, 3, [1], [])
    assert top_k(logits, 3, [5], [0.5]) == ([5, 0, 1], [0.5, 0.0, 0.0])


def test_the_c_penalties_are_pythons(monkeypatch):
    rng = np.random.default_rng(11)
    for trial in range(1500):
        n = int(rng.choice([5, 700, 50_257]))
        raw = (rng.standard_normal(n) * 3).astype(np.float32)
        raw[rng.integers(0, n, 3)] = [np.nan, np.inf, -np.inf]
        history = [int(t) for t in rng.integers(-3, n + 3, int(rng.choice([0, 1, 70, 300])))]  # some outside
        bias = tuple((int(t), float(b)) for t, b in zip(rng.integers(-2, n + 2, 4), rng.choice([1e30, -5.0, 0.1], 4)))
        params = SamplingParams(repetition_penalty=float(rng.choice([1.0, 1.1, 1e-300, 3.0])),
                                presence_penalty=float(rng.choice([0.0, -2.0, 0.5])),
                                frequency_penalty=float(rng.choice([0.0, 0.5, 2.0])),
                                logit_bias=bias + bias[:1] if trial % 2 else ())  # a repeated id adds twice
        sampler = Sampler(params, prompt_len=int(rng.integers(0, 80)))
        c = sampler._penalised(raw, history)
        with monkeypatch.context() as m:
            m.setattr(sampling, "_native", None)
            py = sampler._penalised(raw, history)
        assert c == py, (n, history[-5:], params)


def test_the_c_penalties_refuse_what_they_cannot_read():
    penalised = sampling._native.penalised
    logits = np.zeros(10, dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        penalised(np.zeros(10), [], 0, 1.1, 0.0, 0.0, ())
    with pytest.raises(TypeError, match="history must be a list"):
        penalised(logits, (1, 2), 0, 1.1, 0.0, 0.0, ())
    with pytest.raises(TypeError, match="pairs"):
        penalised(logits, [], 0, 1.1, 0.0, 0.0, ((1, 2.0, 3),))
    assert penalised(logits, [3, 3, 99], 0, 2.0, 0.0, 1.0, ((3, 0.5), (-1, 9.0))) == ([3], [-2.0 + 0.5])


def test_the_c_draw_is_pythons():
    """sample() in C against _top then _drawn in Python: the same token for the same uniform, over
    temperatures down to one that overflows, top-p from a sliver to all, and k from 1 to 4096."""
    rng = np.random.default_rng(13)
    for trial, (raw, history, params, k) in enumerate(_cases(1500)):
        if trial % 4 == 0:
            k = min(int(rng.choice([8, 9, 127, 128, 129, 300, 4096])), raw.size)  # numpy's sum's blocks
        temperature = float(rng.choice([1e-30, 1e-7, 0.3, 0.8, 1.0, 2.5]))
        top_p = float(rng.choice([1e-9, 0.5, 0.95, 0.999999, 1.0]))
        u = float(rng.choice([0.0, rng.random(), np.nextafter(1.0, 0.0)]))
        sampler = Sampler(params)
        touched, vals = sampler._penalised(raw, history)
        c = sampling._native.sample(raw, k, touched, vals, temperature, top_p, u)
        ids, top = sampler._top(raw, history, k)
        with np.errstate(over="ignore", under="ignore"):
            py = int(ids[sampling._drawn(top, temperature, top_p, u)])
        assert c == py, (raw.size, k, temperature, top_p, u)


def test_the_c_draw_follows_the_uniform():
    sample = sampling._native.sample
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))  # the probabilities, best first
    assert [sample(logits, 3, [], [], 1.0, 1.0, u) for u in (0.0, 0.49, 0.51, 0.79, 0.81, 0.999)] == [0, 0, 1, 1, 2, 2]
    assert {sample(logits, 3, [], [], 1.0, 0.6, u) for u in (0.0, 0.5, 0.7, 0.999)} == {0, 1}  # top-p 0.6: two
    assert sample(logits, 3, [0], [-10.0], 1.0, 1.0, 0.0) == 1  # a penalised id ranks by its adjusted logit
    assert sample(logits, 1, [], [], 1.0, 1.0, 0.999) == 0


def test_the_c_draw_refuses_what_it_cannot_draw():
    sample = sampling._native.sample
    logits = np.zeros(10, dtype=np.float32)
    with pytest.raises(TypeError, match="7 arguments, not 4"):
        sample(logits, 3, [], [])
    with pytest.raises(TypeError, match=r"top_k\(logits, k, ids, values\) takes 4 arguments, not 2"):
        sampling._native.top_k(logits, 3)
    with pytest.raises(TypeError, match="7 arguments, not 1"):
        sampling._native.penalised(logits)
    with pytest.raises(ValueError, match="temperature must be above 0"):
        sample(logits, 3, [], [], 0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"u in \[0, 1\)"):
        sample(logits, 3, [], [], 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="k is 11: 1 to 10"):
        sample(logits, 11, [], [], 1.0, 1.0, 0.5)
    for k in (0, -1, 2**62):  # checked before the heap of k is allocated
        with pytest.raises(ValueError, match=f"k is {k}: 1 to 10"):
            sample(logits, k, [], [], 1.0, 1.0, 0.5)
        with pytest.raises(ValueError, match=f"k is {k}: 1 to 10"):
            sampling._native.top_k(logits, k, [], [])
    with pytest.raises(TypeError, match="float32"):
        sample(np.zeros(10), 3, [], [], 1.0, 1.0, 0.5)
