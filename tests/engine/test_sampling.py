"""Token sampling on known logits."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine import sampling
from service.engine.sampling import STRIDE, Sampler, SamplingParams, _reaching

LOGITS = np.array([1.0, 3.0, 2.0, -1.0, 2.9], dtype=np.float32)
NO_C = "the C sampler (_sampler.c) was not built (no C compiler or Python headers at install)"


@pytest.fixture(autouse=True, params=["c", "numpy"])
def top_k_in(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both paths: penalties and top-k in C (if built), and in Python and numpy."""
    if request.param == "c" and sampling._native is None:
        pytest.skip(NO_C)
    if request.param == "numpy":
        monkeypatch.setattr(sampling, "_native", None)
    return request.param


def draws(n: int = 300, **params) -> list[int]:
    sampler = Sampler(SamplingParams(**params))
    return [sampler(LOGITS, []) for _ in range(n)]


def test_temperature_zero_is_argmax():
    assert set(draws(20, temperature=0.0)) == {1}


def test_top_k_one_is_greedy_and_top_k_limits_the_choices():
    assert set(draws(top_k=1, temperature=5.0)) == {1}
    assert set(draws(top_k=2, temperature=5.0, top_p=1.0)) == {1, 4}


def test_top_p_keeps_the_smallest_set_with_that_mass():
    assert set(draws(top_k=0, top_p=0.01, temperature=1.0)) == {1}
    assert set(draws(top_k=0, top_p=1.0, temperature=5.0)) == {0, 1, 2, 3, 4}


def test_repetition_penalty_turns_away_from_seen_tokens():
    sampler = Sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0))
    assert sampler(LOGITS, [1]) == 4  # 3.0 / 2 < 2.9
    negative = np.array([-1.0, -1.2], dtype=np.float32)
    assert sampler(negative, [0]) == 1  # a negative logit is multiplied: -2.0 < -1.2


def test_seed_repeats_and_differs():
    assert draws(seed=5, temperature=1.5) == draws(seed=5, temperature=1.5)
    assert draws(seed=5, temperature=1.5) != draws(seed=6, temperature=1.5)
    assert isinstance(Sampler(SamplingParams()).seed, int)  # an unseeded run records the seed it used


def test_sampling_follows_the_distribution():
    picks = draws(4000, top_k=0, top_p=1.0, temperature=1.0, seed=1)
    probs = np.exp(LOGITS - LOGITS.max())
    probs /= probs.sum()
    freq = np.bincount(picks, minlength=5) / len(picks)
    assert np.abs(freq - probs).max() < 0.03


# --- numerical safety: every accepted value of every field, at its extremes ------------------------
import warnings  # noqa: E402

from service.engine.sampling import QUIET_TEMPERATURE, log_softmax, token_logprob  # noqa: E402

WIDE = np.array([88.0, -88.0, 0.0, 1e-30, 3.4e38, -3.4e38, 50.0], dtype=np.float32)
EXTREMES = [
    {"temperature": 5e-324}, {"temperature": 1e-300}, {"temperature": 1e-30}, {"temperature": 5.0},
    {"temperature": QUIET_TEMPERATURE, "repetition_penalty": 5e-324, "logit_bias": ((4, -1e300),)},
    {"top_p": 5e-324}, {"top_p": 1e-300}, {"top_p": 1.0}, {"top_k": 1}, {"top_k": 1_000_000}, {"top_k": 0},
    {"repetition_penalty": 5e-324}, {"repetition_penalty": 1e-300}, {"repetition_penalty": 10.0},
    {"presence_penalty": -2.0}, {"presence_penalty": 2.0}, {"frequency_penalty": -2.0}, {"frequency_penalty": 2.0},
    {"logit_bias": ((0, 100.0), (1, -100.0), (5, 100.0))}, {"logit_bias": ((6, -100.0),)},
    {"seed": 0}, {"seed": 2**63 - 1}, {"logprobs": 0}, {"logprobs": 5},
    {"temperature": 1e-300, "top_p": 1e-300, "repetition_penalty": 1e-300, "frequency_penalty": 2.0},
]


@pytest.mark.parametrize("params", EXTREMES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
@pytest.mark.parametrize("logits", [LOGITS, WIDE], ids=["plain", "wide"])
def test_every_extreme_value_samples_a_valid_token_without_nan(params, logits):
    sampler = Sampler(SamplingParams(**params), prompt_len=1)
    history = [1, 4, 4, 0, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow/invalid warnings would be errors too
        for _ in range(50):
            token = sampler(logits, history)
            assert 0 <= token < logits.size
        adjusted = sampler.adjusted(logits, history)
        assert np.isfinite(adjusted).all()
        for entry in sampler.logprobs:
            assert np.isfinite(entry.logprob) and all(np.isfinite(lp) for _, lp in entry.top)


def test_a_tiny_temperature_is_greedy_on_the_adjusted_logits():
    assert set(draws(50, temperature=1e-300, top_k=0, top_p=1.0)) == {1}


def test_presence_and_frequency_penalties_are_openais_additive_ones_on_generated_tokens():
    sampler = Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.0, presence_penalty=0.5,
                                     frequency_penalty=0.25), prompt_len=1)
    adjusted = sampler.adjusted(LOGITS, [1, 4, 4, 2])  # token 1 is the prompt's: not penalised
    expected = LOGITS.astype(np.float64) - np.array([0, 0, 0.5 + 0.25, 0, 0.5 + 2 * 0.25])
    assert np.allclose(adjusted, expected)
    assert sampler(LOGITS, [1, 4, 4, 2]) == 1


def test_logit_bias_adds_to_the_logit():
    assert set(draws(20, temperature=0.0, logit_bias=((3, 100.0),))) == {3}
    assert set(draws(20, temperature=0.0, logit_bias=((1, -100.0),))) == {4}


def test_logprobs_are_the_log_softmax_of_the_models_own_logits():
    sampler = Sampler(SamplingParams(temperature=1.0, logprobs=3, presence_penalty=2.0, seed=3))
    token = sampler(LOGITS, [1, 1])
    expected = LOGITS.astype(np.float64) - np.log(np.exp(LOGITS.astype(np.float64)).sum())
    (entry,) = sampler.logprobs
    assert entry.token == token and entry.logprob == pytest.approx(expected[token], abs=1e-12)
    assert [t for t, _ in entry.top] == [1, 4, 2]
    assert [lp for _, lp in entry.top] == pytest.approx(expected[[1, 4, 2]].tolist(), abs=1e-12)
    assert np.exp(log_softmax(WIDE)).sum() == pytest.approx(1.0)
    assert token_logprob(WIDE, 5, 0).logprob == -9999.0  # underflows: OpenAI's floor, not -inf


# --- the top-k-only sampler against the whole-vocabulary one it replaced ----------------------------
from collections import Counter  # noqa: E402

from service.engine.sampling import REPEAT_LAST_N  # noqa: E402

_BIG = 1e300


class ReferenceSampler:
    """The sampler as it was before it worked on the top-k only: every step on the whole
    vocabulary in float64. Kept as the reference the new one must draw identically to."""

    def __init__(self, params: SamplingParams, prompt_len: int = 0) -> None:
        self.params, self.prompt_len = params, prompt_len
        self._rng = np.random.default_rng(params.seed)

    def adjusted(self, logits: np.ndarray, history: list[int]) -> np.ndarray:
        """Penalties and bias applied to a float64 copy of all the logits."""
        p = self.params
        logits = np.clip(np.nan_to_num(np.array(logits, dtype=np.float64), nan=-_BIG), -_BIG, _BIG)
        n = logits.size
        if p.repetition_penalty != 1.0 and history:
            seen = np.fromiter(set(history[-REPEAT_LAST_N:]), dtype=np.int64)
            seen = seen[(seen >= 0) & (seen < n)]
            vals = logits[seen]
            with np.errstate(over="ignore", under="ignore"):
                logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and len(history) > self.prompt_len:
            counts = Counter(t for t in history[self.prompt_len:] if 0 <= t < n)
            ids = np.fromiter(counts, dtype=np.int64)
            freq = np.fromiter(counts.values(), dtype=np.float64)
            logits[ids] -= p.presence_penalty + p.frequency_penalty * freq
        for token, bias in p.logit_bias:
            if 0 <= token < n:
                logits[token] += bias
        return np.clip(np.nan_to_num(logits, nan=-_BIG), -_BIG, _BIG)

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        """The next token, exactly as the whole-vocabulary sampler chose it."""
        p = self.params
        logits = self.adjusted(logits, history)
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        logits -= logits.max()
        with np.errstate(over="ignore", under="ignore"):
            logits /= p.temperature
        if 0 < p.top_k < logits.size:
            ids = np.argpartition(-logits, p.top_k - 1)[: p.top_k]
        else:
            ids = np.arange(logits.size)
        order = np.argsort(-logits[ids], kind="stable")
        ids, vals = ids[order], logits[ids][order]
        with np.errstate(under="ignore"):
            probs = np.exp(vals - vals[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = min(int(np.searchsorted(np.cumsum(probs), p.top_p) + 1), ids.size)
            ids, probs = ids[:keep], probs[:keep] / probs[:keep].sum()
        return int(ids[self._rng.choice(ids.size, p=probs)])


PARAM_SETS = [
    {},  # the defaults: temperature 0.8, top-k 40, top-p 0.95, repetition penalty 1.1
    {"temperature": 0.0},
    {"temperature": 0.0, "repetition_penalty": 3.0, "presence_penalty": 1.5},
    {"temperature": 1.0, "top_k": 1},
    {"temperature": 1.3, "top_k": 5, "top_p": 1.0},
    {"temperature": 0.7, "top_k": 200, "top_p": 0.5, "repetition_penalty": 1.5},
    {"temperature": 1.0, "top_k": 0, "top_p": 0.9},
    {"temperature": 2.0, "top_k": 50_000, "top_p": 1.0},
    {"temperature": 0.9, "presence_penalty": 2.0, "frequency_penalty": 0.5, "repetition_penalty": 1.0},
    {"temperature": 1.0, "presence_penalty": -2.0, "frequency_penalty": -1.0},
    {"temperature": 0.8, "logit_bias": ((7, 100.0), (9, -100.0), (7, 3.0), (2999, 5.0))},
    {"temperature": 0.8, "top_k": 3, "logit_bias": tuple((i, 20.0) for i in range(10, 40))},
    {"temperature": 1e-30},
]


def _steps(vocab: int, seed: int, steps: int) -> list[tuple[np.ndarray, list[int]]]:
    """Random float32 logits shaped like a model's, and a history that repeats tokens."""
    rng = np.random.default_rng(1000 + seed)
    history = [int(t) for t in rng.integers(0, vocab, size=12)]  # the prompt
    out = []
    for _ in range(steps):
        logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
        logits[history[-5:]] += 4  # make the penalised tokens contenders
        out.append((logits, list(history)))
        history.append(int(rng.choice(history)) if rng.random() < 0.5 else int(rng.integers(0, vocab)))
    return out


@pytest.mark.parametrize("params", PARAM_SETS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items())[:60] or "defaults")
def test_draws_are_identical_to_the_whole_vocabulary_sampler(params):
    for seed in range(40):
        sp = SamplingParams(**params, seed=seed)
        new, old = Sampler(sp, prompt_len=12), ReferenceSampler(sp, prompt_len=12)
        for logits, history in _steps(3000, seed, 8):
            assert new(logits, history) == old(logits, history), (seed, history)
            assert np.array_equal(new.adjusted(logits, history), old.adjusted(logits, history))


@pytest.mark.parametrize("params", [{}, {"top_k": 0, "temperature": 1.0}], ids=["defaults", "whole-vocabulary"])
def test_draws_are_identical_on_a_gpt2_sized_vocabulary(params):
    for seed in range(10):  # top_k 0 draws among all 50,257 (numpy's exp: above NATIVE_MAX_K)
        sp = SamplingParams(**params, seed=seed, presence_penalty=0.3, frequency_penalty=0.2)
        new, old = Sampler(sp, prompt_len=12), ReferenceSampler(sp, prompt_len=12)
        for logits, history in _steps(50_257, seed, 10):
            assert new(logits, history) == old(logits, history)


@pytest.mark.parametrize("params", [{"temperature": 0.0}, {"top_k": 2}, {"top_k": 0, "temperature": 1.0},
                                    {"top_k": 499}, {"top_k": 40, "presence_penalty": 2.0}])
def test_nan_and_infinite_logits_are_handled_as_before(params):
    mostly_nan = np.full(500, np.nan, dtype=np.float32)
    mostly_nan[[3, 70, 71]] = [np.inf, 2.0, -np.inf]
    some_inf = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    some_inf[[3, 70, 71]] = [-np.inf, -np.inf, np.inf]
    some_minus_inf = some_inf.copy()
    some_minus_inf[71] = -np.inf
    sp = SamplingParams(**params, seed=1)
    for logits in (mostly_nan, some_inf, some_minus_inf):
        new, old = Sampler(sp), ReferenceSampler(sp)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for history in ([], [3], [3, 70], [71, 71, 5]):
                for _ in range(5):
                    assert new(logits, history) == old(logits, history)
    assert Sampler(SamplingParams(temperature=0.0))(np.full(9, np.nan, dtype=np.float32), []) == 0


def test_ties_go_to_the_lower_id():
    # Ten equal best logits and top_k 3: the three lowest ids, whatever the partition picks.
    logits = np.zeros(5000, dtype=np.float32)
    logits[[4100, 17, 2500, 9, 300, 4999, 1200, 60, 3333, 800]] = 5.0
    assert set(draws_on(logits, 400, top_k=3, top_p=1.0, temperature=1.0)) == {9, 17, 60}
    assert set(draws_on(logits, 5, temperature=0.0)) == {9}
    # A penalty that brings a token level with the others ties it by id too.
    assert set(draws_on(logits, 400, [4, 4], top_k=3, top_p=1.0, logit_bias=((4, 5.0),))) == {4, 9, 17}


def draws_on(logits: np.ndarray, n: int, history: list[int] | None = None, **params) -> list[int]:
    """n draws from one sampler on the same logits and history."""
    sampler = Sampler(SamplingParams(repetition_penalty=1.0, **params))
    return [sampler(logits, history or []) for _ in range(n)]


def _skewed(n: int) -> dict[str, np.ndarray]:
    """Logits laid out against the sample _reaching takes its floor from (every STRIDE-th one)."""
    rng = np.random.default_rng(n)
    normal = (rng.standard_normal(n) * 3).astype(np.float32)
    off_sample = normal.copy()
    off_sample[np.arange(n) % STRIDE != 0] += 20  # the best all lie between the sampled positions
    on_sample = normal.copy()
    on_sample[::STRIDE] += 20  # the best are exactly the sampled positions
    few_finite = np.full(n, -np.inf, dtype=np.float32)
    few_finite[[1, 2, 3, 5, 8]] = [1.0, 2.0, 3.0, 5.0, 8.0]  # fewer finite logits than k
    sampled_minus_inf = normal.copy()
    sampled_minus_inf[::STRIDE] = -np.inf
    ties = np.zeros(n, dtype=np.float32)
    ties[rng.choice(n, size=n // 3, replace=False)] = 1.0
    return {"normal": normal, "off_sample": off_sample, "on_sample": on_sample, "few_finite": few_finite,
            "sampled_minus_inf": sampled_minus_inf, "ties": ties, "flat": np.zeros(n, dtype=np.float32)}


@pytest.mark.parametrize("n", [50_257, 3000, 700, 41 * STRIDE])
@pytest.mark.parametrize("k", [1, 2, 41, 104, 400])
@pytest.mark.parametrize("excluded", [0, 1, 72])
def test_the_candidates_are_exactly_the_logits_reaching_the_kth_largest(n, k, excluded):
    for name, raw in _skewed(n).items():
        if k + excluded >= n:
            continue
        # the ids a penalty touches: among the best (the skewed layouts' tops) and anywhere
        exclude = sorted(set(np.argsort(-raw, kind="stable")[: excluded // 2].tolist())
                         | set(range(3, 3 + 7 * (excluded - excluded // 2), 7)))
        others = np.setdiff1d(np.arange(n), exclude)
        cut = np.partition(raw[others], others.size - k)[others.size - k]  # the whole-vocabulary way
        expected = others[raw[others] >= cut] if np.isfinite(cut) else None
        got = _reaching(raw, k, exclude)
        assert (got is None) == (expected is None), name
        if got is not None:
            assert np.array_equal(got[0], expected) and np.array_equal(got[1], raw[expected]), name

