"""Whether the llama.cpp engine's prompt chunks change the bits of a prompt's logits.

Run by hand (not in CI): .venv/bin/python tests/benchmarks/probe_prompt_chunk.py [--quant q4_0] [--threads 2]
A GPT-2-small-shaped model written by the project's writer and copied into a GGUF; prompts of
several lengths evaluated in different chunkings (aligned, offset, unaligned, larger), each in a
fresh sequence; prints, per chunking and prompt length, whether the last position's logits are
bit for bit those of chunks of 128 and, if not, the largest difference. What it showed, once read
against ggml's kernels (README: "Which prompt cuts give the same bits"): every chunking whose calls
all have 64 tokens or more prints "same"; a call under 64 (the last one, or a first one of 37)
is what differs. On q4_K and q2_K the calls must also start at multiples of 4 (--quant q4_k).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, gpt2_small  # noqa: E402

sys.path.insert(0, str(ROOT))
from service.engine import llamacpp_backend  # noqa: E402
from service.formats.ggml_to_gguf import ggml_to_gguf  # noqa: E402
from service.runtime.loading import gguf_tokenizer_for  # noqa: E402


def every(n: int, first: int | None = None) -> Callable[[int], list[int]]:
    """Chunk sizes: `first` (if given), then n at a time."""
    def sizes(total: int) -> list[int]:
        out, left = [], total
        if first is not None:
            out.append(min(first, left))
            left -= out[-1]
        while left > 0:
            out.append(min(n, left))
            left -= out[-1]
        return out
    return sizes


CHUNKINGS: dict[str, Callable[[int], list[int]]] = {
    "128": every(128), "256": every(256), "128 then 256": every(256, 128), "64 then 256": every(256, 64),
    "1 then 128": every(128, 1), "100": every(100), "200": every(200), "37 then 219": every(219, 37),
    "384": every(384), "512": every(512),
}


def logits_for(ctx: llamacpp_backend.LlamaContext, prompt: list[int], sizes: list[int]) -> np.ndarray:
    """The last position's logits after evaluating `prompt` in chunks of `sizes`, from position 0."""
    slot = ctx.slots[0]
    ctx.forget(slot)
    n = 0
    for size in sizes:
        slot.eval(prompt[n : n + size], n)
        n += size
    return slot.logits().copy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="q4_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="129,255,256,300,513,700,1000")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    lengths = [int(x) for x in args.lengths.split(",")]
    with tempfile.TemporaryDirectory(prefix="minivault-chunk-") as tmp:
        model = gpt2_small(Path(tmp) / "model.bin", args.quant)
        gguf = ggml_to_gguf(model, Path(tmp) / "model.gguf")
        ctx = llamacpp_backend.LlamaContext(gguf, parallel=1, threads=args.threads,
                                            tokenizer=gguf_tokenizer_for(model, gguf), prompt_chunk=512)
        try:
            print(f"{args.quant}, {args.threads} threads; last position's logits against chunks of 128")
            for length in lengths:
                prompt = [int(t) for t in rng.integers(0, 50000, length)]
                base = logits_for(ctx, prompt, every(128)(length))
                row = []
                for name, chunking in CHUNKINGS.items():
                    got = logits_for(ctx, prompt, chunking(length))
                    diff = float(np.max(np.abs(got - base)))
                    row.append(f"{name}: " + ("same" if np.array_equal(got, base) else f"{diff:.2g}"))
                print(f"{length:5d} tokens | " + " | ".join(row))
        finally:
            ctx.close()


if __name__ == "__main__":
    main()
