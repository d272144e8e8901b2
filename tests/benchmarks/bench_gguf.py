"""GGUF import: time and size per GGUF type, then load time and memory of each imported model.

GGUF files of GPT-2-small width (768, real 50,257-token vocabulary, 1024 context; --layers
blocks) are written once with the `gguf` package (k-quants with ggml's quantiser), then
imported in interleaved rounds (every type once per round, so machine noise hits all alike;
medians). Each imported model is then loaded by ctransformers in a fresh process, which reports
its load time and how much its resident memory grew (medians over --loads processes).

    .venv/bin/python tests/benchmarks/bench_gguf.py [--layers 2] [--rounds 3] [--loads 3] [--types f16,q8_0,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from service.formats.ggml.format import is_matrix  # noqa: E402
from service.hub.importer import import_model  # noqa: E402
from tests.support.gguf_models import gpt2_hparams, weights, write_gguf  # noqa: E402

MIX = "q4_k_m"  # q4_k, with the MLP's down projection in q6_k, as llama.cpp's Q4_K_M mix does
_LOAD = """
import json, resource, sys, time
from ctransformers import AutoModelForCausalLM
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
before = rss(); t = time.perf_counter()
llm = AutoModelForCausalLM.from_pretrained(sys.argv[1], model_type="gpt2", threads=1)
llm.eval([15496, 11, 995])  # one forward pass: the weights are touched and the buffers allocated
print(json.dumps({"load_s": time.perf_counter() - t, "rss": rss() - before}))
"""


def type_of(kind: str):
    if kind == MIX:
        return lambda n: "q6_k" if n.endswith("mlp/c_proj/w") else ("q4_k" if is_matrix(n) else "f32")
    return lambda n: kind if is_matrix(n) else "f32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--types", default=f"f16,q8_0,q5_1,q4_0,q6_k,q5_k,q4_k,q3_k,q2_k,{MIX}")
    args = ap.parse_args()
    kinds = args.types.split(",")
    hp = gpt2_hparams(n_embd=768, n_layer=args.layers, n_head=12, n_ctx=1024)
    state = weights(hp)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {}
        for kind in kinds:
            files[kind] = write_gguf(root / f"gpt2.{kind}.gguf", hp, state, type_of(kind))
            print(f"wrote {files[kind].name}", file=sys.stderr)
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in kinds:
                shutil.rmtree(root / "models", ignore_errors=True)
                t = time.perf_counter()
                model = import_model(files[kind], models_dir=root / "models", name=kind, keep_gguf=False, say=lambda m: None)
                times[kind].append(time.perf_counter() - t)
                shutil.move(model.parent, root / f"keep-{kind}") if r == args.rounds - 1 else None
            print(f"round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in kinds), file=sys.stderr)
        loads: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.loads):
            for kind in kinds:
                out = subprocess.run([sys.executable, "-c", _LOAD, str(root / f"keep-{kind}" / "model.bin")],
                                     capture_output=True, text=True, check=True)
                loads[kind].append(json.loads(out.stdout.splitlines()[-1]))
        print(f"GGUF import, GPT-2-small width (768, 50257 tokens, 1024 ctx), {args.layers} layers; "
              f"medians of {args.rounds} imports / {args.loads} loads")
        print("| GGUF type | .gguf | model.bin | import | requantised | load | memory (RSS) |")
        print("|---|---:|---:|---:|---|---:|---:|")
        for kind in kinds:
            manifest = json.loads((root / f"keep-{kind}" / "manifest.json").read_text())
            changed = manifest["requantised"] or []
            note = (f"{len(changed)} to {manifest['quant']}, error ≤ {max(c['rms_error'] for c in changed):.1%}"
                    if changed else "none")
            mb = 1 << 20
            print(f"| {kind} | {files[kind].stat().st_size / mb:.1f} MB | {manifest['size'] / mb:.1f} MB "
                  f"| {statistics.median(times[kind]):.2f} s | {note} "
                  f"| {statistics.median(x['load_s'] for x in loads[kind]) * 1000:.0f} ms "
                  f"| {statistics.median(x['rss'] for x in loads[kind]) / mb:.0f} MB |")


if __name__ == "__main__":
    main()
