"""Conversion time, output size and accuracy of each quant type on a GPT-2-small-shaped checkpoint.

Writes a random Hugging Face GPT-2 checkpoint (12 layers, 768 wide, 50257 tokens, 1024
context; safetensors + vocab.json/merges.txt) to a temp dir, converts it to every type,
runs each file in ctransformers and compares with the numpy reference forward pass on the
original weights (with ggml's float16 GELU/exp tables):
  weight err  RMS difference of the stored matrices from the originals / their RMS
  max err   largest logit difference / largest reference logit, over all prompt positions
  rms err   RMS logit difference / RMS reference logit
  top-1     prompt positions whose argmax token matches the reference's
  greedy    leading tokens of a 32-token greedy continuation identical to the f32 file's
            (distinct: how many different tokens the f32 continuation has)

Random weights: matrices N(0, 0.05), token embeddings N(0, 0.1). At GPT-2's own init scale
(0.02) the token embedding swamps the residual stream and a random model just repeats its
last token; at 0.05 the layers matter. A random network's logits are Gaussian-spread with
many near-ties, so its greedy path is far more fragile than a trained model's: expect the
quantised continuations to part from f32 within a few tokens here.

    .venv/bin/python tests/benchmarks/bench_convert.py [--prompt 32] [--greedy 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.formats.convert import convert_checkpoint  # noqa: E402
from service.formats.ggml.format import read_gpt2, read_tensor  # noqa: E402
from tests.support.gpt2_reference import (  # noqa: E402
    byte_level_vocab,
    forward,
    ggml_greedy,
    ggml_logits,
    random_merges,
    random_state,
    relative_error,
    rms_error,
    write_checkpoint,
)  # fmt: skip

QUANTS = ["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]
N_VOCAB, N_CTX, N_EMBD, N_HEAD, N_LAYER = 50257, 1024, 768, 12, 12


def weight_error(model: Path, state: dict[str, np.ndarray]) -> float:
    """RMS error of the file's matrices (wte and the four per layer) against the checkpoint's, relative to their RMS."""
    info = read_gpt2(model)
    err = total = 0.0
    for name, t in info.tensors.items():
        if name == "model/wte":
            original = state["transformer.wte.weight"]
        elif m := re.fullmatch(r"model/h(\d+)/(\w+)/(\w+)/w", name):
            original = state[f"transformer.h.{m[1]}.{m[2]}.{m[3]}.weight"].T  # Conv1D is stored (in, out)
        else:
            continue
        diff = read_tensor(model, t) - original
        err += float(np.square(diff, dtype=np.float64).sum())
        total += float(np.square(original, dtype=np.float64).sum())
    return (err / total) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens compared position by position")
    parser.add_argument("--greedy", type=int, default=32, help="greedy continuation length")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        merges = random_merges(N_VOCAB - 257)
        vocab = byte_level_vocab(merges)
        state = random_state(n_vocab=N_VOCAB, n_ctx=N_CTX, n_embd=N_EMBD, n_layer=N_LAYER, scale=0.05,
                             wte_scale=0.1, prefix="transformer.")  # fmt: skip
        src = write_checkpoint(root / "src", state, vocab, merges, n_head=N_HEAD, n_ctx=N_CTX)
        src_size = (src / "model.safetensors").stat().st_size
        print(f"checkpoint: {sum(v.size for v in state.values()):,} parameters, model.safetensors "
              f"{src_size / 1e6:.0f} MB, written in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip

        prompt = [int(t) for t in np.random.default_rng(1).integers(0, N_VOCAB - 1, args.prompt)]
        t0 = time.perf_counter()
        reference = forward(state, prompt, n_head=N_HEAD, ggml_tables=True)
        print(f"numpy reference over {len(prompt)} positions: {time.perf_counter() - t0:.1f} s", flush=True)

        rows, f32_greedy = [], None
        for quant in QUANTS:
            out = root / "models" / f"bench-{quant}"
            t0 = time.perf_counter()
            manifest = convert_checkpoint(src, out, quant)
            seconds = time.perf_counter() - t0
            model = out / "model.bin"
            weight_err = weight_error(model, state)
            logits = ggml_logits(model, prompt, threads=args.threads)
            greedy = ggml_greedy(model, prompt, args.greedy, threads=args.threads)
            f32_greedy = greedy if f32_greedy is None else f32_greedy
            same = next((i for i, (a, b) in enumerate(zip(greedy, f32_greedy)) if a != b), len(greedy))
            top1 = int((logits.argmax(1) == reference.argmax(1)).sum())
            rows.append((quant, seconds, manifest.size, manifest.size * 8 / manifest.parameters, weight_err,
                         relative_error(logits, reference), rms_error(logits, reference), top1, same))  # fmt: skip
            print(f"{quant}: converted in {seconds:.1f} s", flush=True)
        print(f"f32 greedy continuation: {len(set(f32_greedy))} distinct tokens of {len(f32_greedy)}")

    print()
    print(f"| type | convert (s) | model.bin (MB) | bits/weight | weight err | max err | rms err "
          f"| top-1 (/{args.prompt}) | greedy (/{args.greedy}) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for quant, seconds, size, bits, w_err, max_err, rms, top1, same in rows:
        print(f"| {quant} | {seconds:.1f} | {size / 1e6:.0f} | {bits:.2f} | {w_err:.2e} | {max_err:.2e} | {rms:.2e} "
              f"| {top1} | {same} |")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MB (checkpoint, reference and one converted model in memory)")


if __name__ == "__main__":
    main()
