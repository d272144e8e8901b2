"""What a Hub repo holds, and so how MiniVault installs it, from its file list alone.

A GPT-2 checkpoint (config.json with model_type gpt2 + model.safetensors, or its shards)
is fetched and converted; a repo with GGML gpt2 `.bin` candidates has them fetched and
verified; anything else is refused with one line naming what was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.formats.ggml.format import FTYPES
from service.hub.client import HubError

DEFAULT_QUANT = "q4_0"

CHECKPOINT_FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt",
                    "generation_config.json"]
ACCEPTED = ("a GPT-2 checkpoint (config.json with model_type gpt2 + model.safetensors), "
            "a GPT-2 .gguf file or a GGML gpt2 .bin file")
# *.bin files that are PyTorch pickles or training state, never GGML.
_NOT_GGML = ("pytorch_model", "training_args", "optimizer", "scheduler", "rng_state", "adapter_model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf",
                    ".ggml", ".pkl")
_SHARD_INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


class Refused(HubError):
    """The repo holds nothing MiniVault can run."""


@dataclass(frozen=True)
class Plan:
    """How to install a repo."""

    kind: str  # "checkpoint" | "gguf" | "ggml"
    files: list[str]  # checkpoint: files to fetch; gguf: the one file; ggml: candidate .bin files, best first
    tokenizer: list[str]  # ggml: tokenizer files to fetch alongside


def plan(repo_id: str, files: set[str], model_type: str | None, quant: str | None) -> Plan:
    """Decide how to install the repo, given its files and its config.json's model_type; or refuse it.

    `quant` None means not chosen: a checkpoint then converts at DEFAULT_QUANT.
    """
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if ggufs and model_type in (None, "gpt2"):
        checkpoint = model_type == "gpt2" and bool({"model.safetensors", _SHARD_INDEX} & files)
        if not checkpoint or (quant and (quant.lower() not in FTYPES or _matching(ggufs, quant))):
            return Plan("gguf", [_pick_gguf(repo_id, ggufs, quant)], [])
    if quant is not None and quant.lower() not in FTYPES:
        raise Refused(f"unknown quant {quant!r}; choose one of {', '.join(FTYPES)} "
                      "(or the quant a GGUF repo's file names carry, e.g. Q4_K_M)")
    quant = (quant or DEFAULT_QUANT).lower()
    if model_type == "gpt2" and "model.safetensors" in files:
        return Plan("checkpoint", [f for f in CHECKPOINT_FILES if f in files], [])
    if model_type == "gpt2" and _SHARD_INDEX in files:
        shards = sorted(f for f in files if _SHARD.fullmatch(f))
        return Plan("checkpoint", [f for f in CHECKPOINT_FILES if f in files] + [_SHARD_INDEX, *shards], [])
    candidates = ggml_candidates(files, quant)
    if candidates:
        tokenizer = ["tokenizer.json"] if "tokenizer.json" in files else (
            ["vocab.json", "merges.txt"] if {"vocab.json", "merges.txt"} <= files else [])
        return Plan("ggml", candidates, tokenizer)
    raise Refused(_refusal(repo_id, files, model_type))


def _matching(ggufs: list[str], quant: str) -> list[str]:
    """GGUF files whose name carries `quant` as a whole word (q4_k matches neither Q4_K_M nor Q4_K_S)."""
    word = re.compile(rf"(?<![a-z0-9]){re.escape(quant.lower())}(?![a-z0-9_])")
    return [f for f in ggufs if word.search(f.rsplit("/", 1)[-1].lower())]


def _pick_gguf(repo_id: str, ggufs: list[str], quant: str | None) -> str:
    """The one GGUF file to fetch; several and no (matching) choice -> Refused listing them."""
    chosen = _matching(ggufs, quant) if quant else ggufs
    if len(chosen) == 1:
        return chosen[0]
    listed = ", ".join(ggufs)
    if not chosen:
        raise Refused(f"{repo_id} has no GGUF file for --quant {quant}; its GGUF files: {listed}")
    raise Refused(f"{repo_id} has {len(chosen)} GGUF files{' for --quant ' + quant if quant else ''}: "
                  f"{', '.join(chosen)}; choose one with --quant (e.g. --quant {gguf_tag(chosen[0]) or 'Q4_K_M'})")


def gguf_tag(filename: str) -> str | None:
    """The quant a GGUF file name carries, e.g. gpt2.Q4_K_M.gguf -> Q4_K_M."""
    match = re.search(r"(?i)(?<![a-z0-9])(i?q\d_[a-z0-9_]+|bf16|f16|f32)(?=\.gguf$|[-.])", filename.rsplit("/", 1)[-1])
    return match[1] if match else None


def ggml_candidates(files: set[str], quant: str) -> list[str]:
    """*.bin files that may be GGML: matching the quant first, then named ggml, then top-level."""
    bins = [f for f in files if f.endswith(".bin") and not f.rsplit("/", 1)[-1].startswith(_NOT_GGML)]
    return sorted(bins, key=lambda f: (quant not in f.lower(), "ggml" not in f.lower(), "/" in f, f))


def _refusal(repo_id: str, files: set[str], model_type: str | None) -> str:
    """One line: what the repo holds, and what MiniVault accepts."""
    found = []
    if "config.json" in files:
        found.append(f"config.json (model_type {model_type!r})" if model_type else "config.json (no model_type)")
    weights = sorted(f for f in files if f.endswith(_WEIGHT_SUFFIXES))
    found += weights[:6] + ([f"{len(weights) - 6} more weight files"] if len(weights) > 6 else [])
    if not weights:
        found.append("no weight files" + (f" ({', '.join(sorted(files)[:5])})" if files else ""))
    if model_type not in (None, "gpt2"):
        hint = f"model_type {model_type!r} is not GPT-2"
    elif any(f.endswith(".safetensors") for f in weights) and not {"model.safetensors", _SHARD_INDEX} & files:
        hint = f"the weights must be model.safetensors (or shards listed in {_SHARD_INDEX})"
    elif any(f.rsplit("/", 1)[-1].startswith("pytorch_model") for f in weights):
        hint = "pytorch_model.bin is a pickle and is never loaded; convert it to model.safetensors first"
    elif {"model.safetensors", _SHARD_INDEX} & files:
        hint = "model.safetensors needs a config.json with model_type gpt2 beside it"
    else:
        hint = "nothing here is a model MiniVault can run"
    return f"{repo_id} can't be used: found {', '.join(found)}; {hint}. MiniVault accepts {ACCEPTED}"
