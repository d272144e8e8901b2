"""`minivault download` end to end on a distilgpt2-shaped repo served by the local Hub server.

Builds a random checkpoint with distilgpt2's shapes (6 layers, 768 wide, 50257 tokens, 1024
context; model.safetensors in f32 like the real repo) and GPT-2's real vocab.json + merges.txt,
serves it from tests/hubserver.py on 127.0.0.1 and times, through the real huggingface_hub code path:
  first     resolve + fetch + convert + install (the fetch runs at the Python test server's
            loopback speed, about 100 MB/s on 2 cores)
  again     a second run that finds the model installed (size + sha256 check, one Hub request)
  offline   HF_HUB_OFFLINE=1 into an empty models dir: from the cache, converted again
and reports the file sizes. A real download adds the transfer of model.safetensors (353 MB).

    .venv/bin/python tests/benchmarks/bench_download.py [--quant q4_0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.hub.download import download  # noqa: E402
from tests.fixtures.gpt2_vocab import gpt2_merges, gpt2_vocab  # noqa: E402
from tests.support.hubserver import HubServer, gpt2_tensors  # noqa: E402


def distilgpt2_shaped(tmp: Path) -> dict[str, bytes]:
    """A random checkpoint with distilgpt2's shapes and GPT-2's tokenizer, as repo files."""
    n_vocab, n_ctx, e, n_layer = 50257, 1024, 768, 6
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    tensors = gpt2_tensors(n_vocab, n_ctx, e, n_layer, w)
    save_file(tensors, str(tmp / "model.safetensors"))
    config = {"model_type": "gpt2", "vocab_size": n_vocab, "n_positions": n_ctx, "n_ctx": n_ctx, "n_embd": e,
              "n_head": 12, "n_layer": n_layer, "activation_function": "gelu_new"}
    return {"config.json": json.dumps(config).encode(), "model.safetensors": (tmp / "model.safetensors").read_bytes(),
            "vocab.json": json.dumps(gpt2_vocab(), ensure_ascii=False).encode(),
            "merges.txt": "\n".join(["#version: 0.2", *(f"{a} {b}" for a, b in gpt2_merges())]).encode()}


def timed(label: str, fn) -> Path:
    """Run `fn`, print how long it took, return its result."""
    start = time.perf_counter()
    path = fn()
    print(f"{label:8} {time.perf_counter() - start:7.2f} s", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="q4_0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, HubServer() as hub:
        tmp = Path(tmp_name)
        os.environ |= {"HF_HOME": str(tmp / "hf-home"), "HF_ENDPOINT": hub.url}
        files = distilgpt2_shaped(tmp)
        hub.add_repo("distilgpt2", files)
        sys.stderr = open(os.devnull, "w")  # the progress lines
        model = timed("first", lambda: download(models_dir=tmp / "models", quant=args.quant))
        timed("again", lambda: download(models_dir=tmp / "models", quant=args.quant))
        os.environ["HF_HUB_OFFLINE"] = "1"
        timed("offline", lambda: download(models_dir=tmp / "models-2", quant=args.quant))
        print(f"model.safetensors {len(files['model.safetensors']) / 1e6:.0f} MB -> "
              f"model.bin ({args.quant}) {model.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
