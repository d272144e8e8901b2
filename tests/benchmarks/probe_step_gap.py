"""Where the llama.cpp engine's time between two decode calls goes, one stream, in-process.

Run by hand (not in CI): .venv/bin/python tests/benchmarks/probe_step_gap.py [--threads 2] [--numpy]
GPT-2-small-shaped q4_0 model written by the project's writer and copied into a GGUF; 256 tokens
after an 8-token prompt at the default sampling, 5 runs (the first warms up). The step thread's
calls are timed by wrapping them: llama_decode, StepRun._stepped (the run's work as a step ends),
the sampler inside it and LlamaContext.queue (queuing the next step). Prints, per token, the
medians in microseconds of each stretch from the end of one decode to the start of the next:
everything in it delays the next step (llama-server's own loop does this work in C++).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, gpt2_small  # noqa: E402

sys.path.insert(0, str(ROOT))
from service.engine import llamacpp_backend, sampling, step_run  # noqa: E402
from service.engine.sampling import Sampler, SamplingParams  # noqa: E402
from service.formats.ggml_to_gguf import ggml_to_gguf  # noqa: E402
from service.runtime.loading import gguf_tokenizer_for  # noqa: E402

# the marks each token passes, in order, and the stretch between each and the next
MARKS = ["decode end", "stepped", "sampler", "sampler end", "queue", "queue end", "stepped end", "decode"]
STRETCHES = ["decode -> run (logits copied, step bookkeeping)", "run -> sampler", "sampler",
             "sampler -> queue (the token's text, its piece handed on)", "queue (the next step)",
             "queue -> run end", "run end -> next decode (step loop, batch)"]


class _Lib:
    """llama-cpp-python's bindings with llama_decode timed."""

    def __init__(self, inner: object, marks: list[tuple[str, float]]) -> None:
        self._inner, self._marks = inner, marks

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def llama_decode(self, ctx: object, batch: object) -> int:
        self._marks.append(("decode", time.perf_counter()))
        rc = self._inner.llama_decode(ctx, batch)
        self._marks.append(("decode end", time.perf_counter()))
        return rc


def _timed(cls: type, name: str, mark: str, marks: list[tuple[str, float]]) -> None:
    """Wrap cls.name so that each call adds (mark, start) and (mark + " end", end) to marks."""
    inner = getattr(cls, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        marks.append((mark, time.perf_counter()))
        try:
            return inner(*args, **kwargs)
        finally:
            marks.append((mark + " end", time.perf_counter()))

    setattr(cls, name, wrapper)


def stretches(marks: list[tuple[str, float]]) -> dict[str, list[float]]:
    """Each token's stretches (seconds), from every complete decode-end-to-decode sequence of marks."""
    out: dict[str, list[float]] = {s: [] for s in STRETCHES}
    seen: dict[str, float] | None = None
    for mark, t in marks:
        if mark == "decode end":
            seen = {mark: t}
        elif seen is not None and mark in MARKS:
            seen[mark] = t
            if mark == "decode":
                if all(m in seen for m in MARKS):
                    for i, name in enumerate(STRETCHES):
                        out[name].append(seen[MARKS[i + 1]] - seen[MARKS[i]])
                seen = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--numpy", action="store_true", help="find the top k with numpy, not the C module")
    args = ap.parse_args()
    if args.numpy:
        sampling._native = None
    print(f"top k: {'C' if sampling._native else 'numpy'}; {args.threads} threads")
    marks: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="minivault-gap-") as tmp:
        model = gpt2_small(Path(tmp) / "model.bin", "q4_0")
        gguf = ggml_to_gguf(model, Path(tmp) / "model.gguf")
        ctx = llamacpp_backend.LlamaContext(gguf, parallel=1, threads=args.threads,
                                            tokenizer=gguf_tokenizer_for(model, gguf))
        ctx._lc = _Lib(ctx._lc, marks)
        _timed(step_run.StepRun, "_stepped", "stepped", marks)
        _timed(Sampler, "__call__", "sampler", marks)
        _timed(llamacpp_backend.LlamaContext, "queue", "queue", marks)
        try:
            params = SamplingParams(max_new_tokens=256, seed=1)
            for run in range(args.runs):
                marks.clear()
                t0 = time.perf_counter()
                tokens = sum(1 for _ in ctx.slots[0].generate(list(range(97, 105)), params, cache_prompt=False))
                wall = time.perf_counter() - t0
                if run == 0:
                    continue  # warm-up
                per = stretches(marks)
                decodes = [b - a for (ma, a), (mb, b) in zip(marks, marks[1:]) if ma == "decode" and mb == "decode end"]
                gap = sum(statistics.median(v) for v in per.values())
                print(f"run {run}: {tokens} pieces in {wall:.2f} s; decode {statistics.median(decodes) * 1e6:.0f} us, "
                      f"gap {gap * 1e6:.0f} us: " + ", ".join(f"{k} {statistics.median(v) * 1e6:.0f}" for k, v in per.items()))
        finally:
            ctx.close()


if __name__ == "__main__":
    main()
