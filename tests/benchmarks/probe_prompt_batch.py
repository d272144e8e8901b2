"""Find the largest prompt batch ctransformers' wheel evaluates without aborting, and its speed.

ggml aborts the whole process ("not enough space in the context's memory pool") when one eval
call needs more scratch than the library's fixed buffer, so each try runs in a subprocess.
The need grows with the batch and with the positions already filled (attention is batch x
context), so each batch size is first tried at the end of a full context, the worst case, then
timed over a prompt of --tokens tokens.

    .venv/bin/python tests/benchmarks/probe_prompt_batch.py [--sizes 8,16,32,48,64,96,128] [--quant q4_0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, gpt2_small  # noqa: E402

CHILD = """
import json, sys, time
from service.engine.ctransformers_backend import Engine
model, batch, threads, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
eng = Engine(model, threads=threads)
ids = [(i * 7919) % 50000 for i in range(eng.context_length)]
eng.eval(ids[:batch], eng.context_length - batch)  # the worst case first: a batch ending the context
t = time.perf_counter()
for start in range(0, n, batch):
    eng.eval(ids[start:min(n, start + batch)], start)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def probe(model: Path, batch: int, threads: int, tokens: int) -> dict:
    """One batch at the end of the context, then `tokens` in batches, in a child: time, or how it died."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(batch), str(threads), str(tokens)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"batch": batch, "ok": False, "rc": proc.returncode, "error": last[:160]}
    return {"batch": batch, "ok": True, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8,16,32,48,64,96,128")
    ap.add_argument("--quant", default="q4_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256, help="prompt tokens timed per batch size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = gpt2_small(Path(tmp) / "model.bin", args.quant)
        for batch in (int(s) for s in args.sizes.split(",")):
            r = probe(model, batch, args.threads, args.tokens)
            if r["ok"]:
                r["prompt_tokens_per_second"] = round(args.tokens / r["seconds"], 1)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
