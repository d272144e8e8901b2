"""Peak memory (RSS) of a serving process, to size container and Kubernetes memory requests/limits.

For each model shape and quantisation: a live server (1 worker, 1 thread) loads the model and
runs one generation at full context use (the KV cache filled), then its peak RSS (VmHWM) and
current RSS are read from /proc. Random weights: memory depends on the shape, not the values.

    .venv/bin/python tests/benchmarks/bench_memory.py [--shapes distilgpt2,gpt2] [--quants q4_0,q5_1,q8_0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EOT, make_tiny_gpt2, start_server  # noqa: E402

SHAPES = {"distilgpt2": 6, "gpt2": 12}  # layers; both 768 wide, 50257 tokens, 1024 context


def model_of(path: Path, layers: int, quant: str) -> Path:
    vocab = [bytes([b]) for b in range(256)] + [f"<t{i}>".encode() for i in range(50257 - 257)] + [EOT]
    make_tiny_gpt2(path, vocab=vocab, n_embd=768, n_head=12, n_layer=layers, n_ctx=1024, ftype=quant, no_eos=True)
    return path


def kib(status: str, field: str) -> int:
    return int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="distilgpt2,gpt2")
    ap.add_argument("--quants", default="q4_0,q5_1,q8_0")
    args = ap.parse_args()
    print("| shape | quant | model file MB | peak RSS MiB | RSS after MiB |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            for quant in args.quants.split(","):
                model = model_of(Path(tmp) / f"{shape}-{quant}.bin", SHAPES[shape], quant)
                server = start_server(model, Path(tmp) / "log.jsonl", workers=1, threads=1)
                try:
                    # ~1000 prompt tokens + 16 new ones: the whole context's KV cache in use
                    body = {"prompt": "a" * 1000, "max_new_tokens": 16, "temperature": 0}
                    r = httpx.post(server.url + "/generate", json=body, timeout=600)
                    assert r.status_code == 200, r.text
                    status = Path(f"/proc/{server.proc.pid}/status").read_text()
                finally:
                    server.stop()
                print(f"| {shape} | {quant} | {model.stat().st_size / 1e6:.0f} | {kib(status, 'VmHWM') / 1024:.0f} "
                      f"| {kib(status, 'VmRSS') / 1024:.0f} |", flush=True)
                model.unlink()


if __name__ == "__main__":
    main()
