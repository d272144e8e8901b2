"""Token sampling on known logits."""

from __future__ import annotations

import numpy as np

from service.engine.sampling import Sampler, SamplingParams

LOGITS = np.array([1.0, 3.0, 2.0, -1.0, 2.9], dtype=np.float32)


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

import pytest  # noqa: E402

from service.engine.sampling import log_softmax, token_logprob  # noqa: E402

WIDE = np.array([88.0, -88.0, 0.0, 1e-30, 3.4e38, -3.4e38, 50.0], dtype=np.float32)
EXTREMES = [
    {"temperature": 5e-324}, {"temperature": 1e-300}, {"temperature": 1e-30}, {"temperature": 5.0},
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
