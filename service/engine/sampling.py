"""Next-token sampling from logits: greedy, temperature, top-k, top-p, repetition, presence and
frequency penalties, logit bias, seed; and the log-probabilities of the model's own logits.

Every accepted parameter value is numerically safe: logits are kept finite and shifted so the
best one is 0 before dividing by the temperature, so no value (however small) gives NaN.

Only the few ids a penalty or bias names are adjusted, and only the top-k candidates (found on the
model's float32 logits) go through temperature, softmax, top-p and the draw, in float64. The values
are the same as working on the whole vocabulary in float64 (but for exp, libm's on every machine up
to NATIVE_MAX_K candidates: see _drawn), so a seed draws the same tokens as before; the one rule
made explicit is ties: among equal adjusted logits the lower id ranks first (for the k-th place,
for the order the draw walks, and for greedy, which was np.argmax's rule).
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from typing import Sequence

import msgspec
import numpy as np

try:  # penalties and top-k in C: an optional build (pyproject.toml); without it, the same tokens, slower
    from service.engine import _sampler as _native
except ImportError:
    _native = None

REPEAT_LAST_N = 64  # how many recent tokens the repetition penalty looks at (llama.cpp's default)
STRIDE = 16  # the sample _reaching takes its floor from (measured: 16 is fastest for k up to ~100)
_BIG = 1e300  # logits are clipped to +-_BIG: any finite shift of them stays finite
# The penalties run in C or in Python floats, which never warn; the logits numpy then divides by the
# temperature lie within 2 * _BIG of 0, so a temperature from this up cannot overflow, and no
# errstate (as costly as a small numpy call right after a model step) is needed
QUIET_TEMPERATURE = 1e-6
NATIVE_MAX_K = 4096  # larger k (top_k 0: the whole vocabulary) sorts with numpy: one call either way
LOGPROB_FLOOR = -9999.0  # what a probability that underflows to 0 is reported as (OpenAI does the same)


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """How to pick each next token, and when to stop."""

    max_new_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence in the generated tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: int | None = None  # record each sampled token's log-probability and this many alternatives
    prompt_logprobs: int | None = None  # score the prompt too (position by position), with this many


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    """A token's log-probability under the model, and the `top` most likely tokens at its position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p for every token from raw logits, in float64, finite for any input."""
    x = np.clip(np.nan_to_num(np.asarray(logits, dtype=np.float64), nan=-_BIG), -_BIG, _BIG)
    x = x - x.max()
    with np.errstate(under="ignore"):
        return x - np.log(np.exp(x).sum())


def token_logprob(logits: np.ndarray, token: int, top_n: int) -> TokenLogprob:
    """The log-probability of `token` and the `top_n` best alternatives, from the model's logits."""
    lp = log_softmax(logits)
    top: tuple[tuple[int, float], ...] = ()
    if top_n > 0:
        n = min(top_n, lp.size)
        ids = np.argpartition(-lp, n - 1)[:n]
        ids = ids[np.argsort(-lp[ids], kind="stable")]
        top = tuple((int(i), _floor(lp[i])) for i in ids)
    return TokenLogprob(int(token), _floor(lp[token]), top)


def _floor(value: float) -> float:
    return max(float(value), LOGPROB_FLOOR)


class Sampler:
    """Picks tokens for one generation; owns its random stream so a seed reproduces the text.

    With `params.logprobs` set, each call also appends the chosen token's TokenLogprob to
    `self.logprobs` (computed from the logits as the model gave them, before any penalty).
    """

    def __init__(self, params: SamplingParams, prompt_len: int = 0) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))  # default_rng(seed)'s stream, ~30% cheaper
        self.prompt_len = prompt_len  # presence/frequency penalties count only tokens after the prompt
        self.logprobs: list[TokenLogprob] = []
        self._bias = tuple((int(t), float(b)) for t, b in params.logit_bias)  # the shape C reads

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """Choose the next token id from the model's logits, given the tokens so far."""
        if self.params.temperature >= QUIET_TEMPERATURE:
            token = self._choose(logits, history)
        else:  # dividing by it may overflow to -inf on purpose (exp then gives 0: never NaN)
            with np.errstate(over="ignore", under="ignore"):
                token = self._choose(logits, history)
        if self.params.logprobs is not None:
            self.logprobs.append(token_logprob(logits, token, self.params.logprobs))
        return token

    def adjusted(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """The logits after penalties and bias: float64, finite, clipped to +-_BIG."""
        full = _finite(logits)  # a copy
        ids, vals = self._penalised(np.asarray(logits), history)
        full[ids] = vals
        return full

    def _penalised(self, raw: np.ndarray, history: Sequence[int]) -> tuple[list[int], list[float]]:
        """The ids a penalty or bias touches (sorted, unique) and their adjusted logits.

        In C (_sampler.c) where it was built, else in Python floats, one id at a time: either way
        not the dozen numpy calls, each of which costs several microseconds right after a model
        step. C's, Python's and numpy's float64 operations are IEEE's, and they come in the same
        order as on the whole vocabulary: the same values.
        """
        p = self.params
        if type(history) is list and _in_c(raw):
            return _native.penalised(raw, history, self.prompt_len, p.repetition_penalty, p.presence_penalty,
                                     p.frequency_penalty, self._bias)  # the same, in C
        n = len(raw)
        seen: set[int] = set()
        if p.repetition_penalty != 1.0 and history:
            seen = {t for t in history[-REPEAT_LAST_N:] if 0 <= t < n}
        counts: Counter[int] = Counter()
        if (p.presence_penalty or p.frequency_penalty) and len(history) > self.prompt_len:
            counts = Counter(t for t in history[self.prompt_len:] if 0 <= t < n)
        ids = sorted(seen | counts.keys() | {t for t, _ in self._bias if 0 <= t < n})
        if not ids:
            return ids, []
        vals = dict(zip(ids, map(_clip, raw[ids].tolist())))
        rp = p.repetition_penalty
        for t in seen:
            v = vals[t]
            vals[t] = v / rp if v > 0 else v * rp
        for t, c in counts.items():
            vals[t] -= p.presence_penalty + p.frequency_penalty * c
        for t, b in self._bias:  # in order: a repeated id adds twice
            if 0 <= t < n:
                vals[t] += b
        return ids, [_clip(vals[t]) for t in ids]

    def _top(self, logits: np.ndarray, history: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best tokens by adjusted logit (ties: the lower id first), best first, and those logits.

        Works on a few candidates only: the untouched logits are the model's, so the k best are
        among the ids touched by a penalty or bias and the untouched ids whose raw logit reaches
        the k-th largest untouched one (all of them, so ties are settled by id below). Logits
        with too few finite values take the whole-vocabulary path instead.
        """
        raw = np.asarray(logits)
        touched, vals = self._penalised(raw, history)
        n = raw.size
        if k <= NATIVE_MAX_K and _in_c(raw):
            ids, best = _native.top_k(raw, k, touched, vals)  # one pass in C: the same k, in the same order
            return np.array(ids, dtype=np.int64), np.array(best)
        reaching = _reaching(raw, k, touched) if k + len(touched) < n else None
        if reaching is None:  # a short vocabulary, NaN or infinities: all of it, as it was
            cand, cvals = np.arange(n), _finite(raw)
            cvals[touched] = vals
            order = np.argsort(-cvals, kind="stable")[:k]  # a stable sort puts the lower id first
        else:
            ids, raw_vals = reaching
            cand = np.concatenate((ids, np.array(touched, dtype=np.int64)))
            cvals = np.array(raw_vals.tolist() + vals)  # float32 to float64 is exact
            np.fmin(cvals, _BIG, out=cvals)  # +inf may reach the cut; NaN and -inf cannot
            order = np.lexsort((cand, -cvals))[:k]  # by logit, best first; ties by id
        return cand[order], cvals[order]

    def _choose(self, logits: np.ndarray, history: Sequence[int]) -> int:
        p = self.params
        if p.temperature == 0.0:
            return int(self._top(logits, history, 1)[0][0])  # the argmax of the adjusted logits
        k = p.top_k if 0 < p.top_k < len(logits) else len(logits)
        raw = np.asarray(logits)
        u = self._rng.random()  # the draw's one uniform (Generator.choice takes one too)
        if k <= NATIVE_MAX_K and _in_c(raw):
            touched, vals = self._penalised(raw, history)
            return _native.sample(raw, k, touched, vals, p.temperature, p.top_p, u)  # all of it in C
        ids, vals = self._top(raw, history, k)
        return int(ids[_drawn(vals, p.temperature, p.top_p, u)])


def _drawn(vals: np.ndarray, temperature: float, top_p: float, u: float) -> int:
    """The position drawn with the uniform u among candidates with these adjusted logits, best first:
    temperature, softmax, top-p, then rng.choice's cumulative sums and search without its checks of
    p (built here, always valid). Up to NATIVE_MAX_K candidates exp is libm's (math.exp, and C's exp
    in _sampler.c, which does the same operations in the same order): numpy's own exp depends on the
    CPU (on AVX-512 it differs from libm's in the last bit), so a seed would draw differently on
    other machines and in C. Above it (top_k 0: the whole vocabulary), which C never draws from,
    numpy's: math.exp over 50,257 values would add 3.5 ms a token."""
    vals -= vals[0]  # the best is 0, the rest <= 0 and finite
    vals /= temperature  # a tiny temperature sends the others to -inf: exp gives 0, never NaN
    if vals.size <= NATIVE_MAX_K:  # probs[0] == 1: the sum is >= 1
        probs = np.array(list(map(math.exp, vals.tolist())))
    else:
        probs = np.exp(vals)
    probs /= probs.sum()
    if top_p < 1.0:
        keep = min(int(np.searchsorted(np.cumsum(probs), top_p) + 1), probs.size)
        probs = probs[:keep] / probs[:keep].sum()
    cdf = probs.cumsum()
    cdf /= cdf[-1]
    return int(cdf.searchsorted(u, side="right"))


def _reaching(raw: np.ndarray, k: int, exclude: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The sorted ids not in `exclude` whose logit reaches the k-th largest of theirs, and those
    logits; None if that logit is not finite (or cannot be found this way: NaN, infinities).

    Partitioning all 50,257 logits took 0.3 ms a token, most of the sampler's time. The
    (k + excluded)-th largest of every STRIDE-th logit is a floor for the k-th largest of the
    others (at least k of them reach it), so only the few ids at or above that floor are
    partitioned: the same ids, about 5x faster. A NaN never reaches a floor; one among the
    sampled logits only raises the floor, and then too few may reach it (None).
    """
    kk = k + len(exclude)
    if kk == 1:  # greedy with nothing touched: the best logit itself
        cut = raw.max()  # NaN if any logit is NaN
        ids = np.flatnonzero(raw >= cut)
        return (ids, raw[ids]) if np.isfinite(cut) else None
    sample = raw[::STRIDE]
    mask = raw >= np.partition(sample, sample.size - kk)[sample.size - kk] if sample.size > kk else raw == raw
    mask[exclude] = False
    ids = np.flatnonzero(mask)
    if ids.size < k:
        return None
    vals = raw[ids]
    cut = np.partition(vals, vals.size - k)[vals.size - k]
    if not np.isfinite(cut):
        return None
    keep = vals >= cut
    return ids[keep], vals[keep]


def _in_c(raw: np.ndarray) -> bool:
    """Whether _sampler.c was built and can read these logits (contiguous float32, as engines give them)."""
    return _native is not None and raw.dtype == np.float32 and raw.flags.c_contiguous


def _clip(v: float) -> float:
    """_finite for one Python float: NaN as -_BIG, everything clipped to +-_BIG."""
    return v if -_BIG <= v <= _BIG else (_BIG if v > _BIG else -_BIG)


def _finite(logits: np.ndarray) -> np.ndarray:
    """A float64 copy with NaN as -_BIG and everything (infinities too) clipped to +-_BIG."""
    x = np.array(logits, dtype=np.float64)
    np.fmax(x, -_BIG, out=x)  # fmax takes the number over a NaN: NaN becomes -_BIG
    return np.fmin(x, _BIG, out=x)
