"""Running a logged generation again in this process, through the engine, without HTTP."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from service.engine.sampling import SamplingParams
from service.runtime.loading import (
    ENGINE_NAME,
    load_engines,
    load_manifest,
    model_sha256,
)


class LocalModel:
    """One instance of a model file, loaded as the server loads it (tokenizer.json, manifest)."""

    engine_name = ENGINE_NAME

    def __init__(self, model_path: str | Path, threads: int = 1) -> None:
        self.path = Path(model_path)
        manifest = load_manifest(self.path)
        self.sha256 = model_sha256(self.path, manifest)
        self._libdir = Path(tempfile.mkdtemp(prefix="minivault-lib-"))
        self._engine = load_engines(self.path, 1, threads, self._libdir)[0]

    def generate(self, prompt: str, params: SamplingParams) -> dict[str, Any]:
        """The text and finish reason of one generation, as a worker would produce them."""
        engine = self._engine
        ids = engine.tokenizer.encode(prompt)
        engine.check_fits(len(ids), params.max_new_tokens)
        gen = engine.generate(ids, params)
        for _ in gen:
            pass
        return {"text": gen.text, "finish_reason": gen.finish_reason, "seed": gen.sampler.seed}

    def close(self) -> None:
        self._engine.close()
        shutil.rmtree(self._libdir, ignore_errors=True)
