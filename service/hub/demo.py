"""The demo model: random weights with GPT-2's real vocabulary, for trying MiniVault without the Hub.

Its text is random, but it tokenizes like GPT-2 and exercises the whole service (API, streaming,
tokenizer, log). The vocabulary ships in the package (formats/data/gpt2-vocab.gguf, GPT-2's tokens
and merges as llama.cpp publishes them, no weights).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Callable

from service.fileio import install, write_atomic
from service.formats.convert import MODEL_FILE, TOKENIZER_FILE, _ggml_vocab
from service.formats.ggml.format import HParams, gpt2_tensor_shapes, write_gpt2
from service.formats.ggml.tiny import random_tensors
from service.formats.gguf import read_gguf
from service.formats.gguf_convert import gguf_tokenizer
from service.formats.manifest import HParams as ManifestHParams
from service.formats.manifest import Manifest, Source, utc_now, verify, write_manifest
from service.hub.store import human_size, work_folder
from service.tokenizer.bpe import json_bytes

DEMO_NAME = "demo-random-gpt2"
VOCAB_FILE = Path(__file__).resolve().parents[1] / "formats" / "data" / "gpt2-vocab.gguf"


def install_demo(models_dir: str | os.PathLike[str], *, force: bool = False, seed: int = 0,
                 say: Callable[[str], None] = print) -> Path:
    """Write models/demo-random-gpt2 (q8_0, 4 layers, 256 wide); return its model file's path."""
    final = Path(models_dir) / DEMO_NAME
    if final.exists() and not force:
        raise ValueError(f"{final} already exists; pass --force to write it again")
    vocab_file = read_gguf(VOCAB_FILE)
    tokens = vocab_file.metadata["tokenizer.ggml.tokens"]
    tokenizer = gguf_tokenizer(vocab_file, len(tokens)).to_json()  # type: ignore[arg-type]
    hp = HParams(len(tokens), 1024, 256, 4, 4, "q8_0")  # type: ignore[arg-type]
    work = work_folder(Path(models_dir), DEMO_NAME)
    try:
        sha256 = write_gpt2(work / MODEL_FILE, hp, _ggml_vocab(tokenizer, hp.n_vocab), random_tensors(hp, seed, 0.2))
        write_atomic(work / TOKENIZER_FILE, json_bytes(tokenizer))
        manifest = Manifest(
            name=DEMO_NAME, file=MODEL_FILE, source=Source(repo=None, revision=f"random-seed-{seed}", kind="local"),
            quant=hp.ftype, hparams=ManifestHParams.of(hp),
            parameters=sum(math.prod(shape) for shape in gpt2_tensor_shapes(hp).values()),
            size=(work / MODEL_FILE).stat().st_size, sha256=sha256, created=utc_now(), tokenizer=TOKENIZER_FILE,
        )  # fmt: skip
        write_manifest(work, manifest)
        verify(work / MODEL_FILE, manifest, full=True)
        install(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model = final / MODEL_FILE
    say(f"Installed {model} ({human_size(manifest.size)}): RANDOM WEIGHTS with GPT-2's real vocabulary; "
        "it writes random text, but the whole service works with it")
    return model
