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
