"""Running a logged generation again in this process, through the engine, without HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

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
        self._engine = load_engines(self.path, 1, threads)[0]

    @property
    def engine(self) -> Any:
        """The loaded engine (its context length, vocabulary size, end-of-text id)."""
        return self._engine

    def tokenize(self, text: str) -> list[int]:
        """Token ids for `text`, as the scheduler tokenizes a prompt."""
        return self._engine.tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text for token ids, as the scheduler decodes them."""
        return self._engine.tokenizer.decode(ids)

    def generate(self, prompt: str, params: SamplingParams) -> dict[str, Any]:
        """The text and finish reason of one generation, as a worker would produce them."""
        return self.generate_ids(self.tokenize(prompt), params)

    def generate_ids(self, ids: list[int], params: SamplingParams) -> dict[str, Any]:
        """Like generate, from token ids (a /v1 empty prompt is end-of-text, not no tokens)."""
        engine = self._engine
        engine.check_fits(len(ids), params.max_new_tokens)
        gen = engine.generate(ids, params)
        for _ in gen:
            pass
        return {"text": gen.text, "finish_reason": gen.finish_reason, "seed": gen.sampler.seed}

    def close(self) -> None:
        self._engine.close()
