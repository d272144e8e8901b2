"""What the models dir holds: model ids and files, the default model, and per-model options.

Never imports litestar or an engine. A model id is its folder's name (models/<id>/model.bin) or a
bare file's stem (models/<id>.bin); `MINIVAULT_MODEL` may name an id or a file outside the dir.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import msgspec

from service.config import ENGINES, NO_HUB_ROUTES, PREFIX, Settings, SettingsError

CONFIG_NAME = "models.toml"  # per-model options, in the models dir (README: Several models)


class ModelOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model's overrides of the server-wide settings."""

    workers: int | None = None
    threads: int | None = None
    engine: str | None = None
    parallel: int | None = None

    def __post_init__(self) -> None:
        if self.engine is not None and self.engine not in ENGINES:
            raise ValueError(f"engine = {self.engine!r}: must be one of {', '.join(ENGINES)}")
        if self.parallel is not None and not 1 <= self.parallel <= 64:
            raise ValueError(f"parallel = {self.parallel}: must be between 1 and 64")
        if self.workers is not None and not 1 <= self.workers <= 64:
            raise ValueError(f"workers = {self.workers}: must be between 1 and 64")
        if self.threads is not None and not 0 <= self.threads <= 256:
            raise ValueError(f"threads = {self.threads}: must be between 0 (auto) and 256")


MODEL_FILES = ("model.bin", "model.gguf")  # in a model's folder: GGML (ctransformers), GGUF (llama.cpp)


def model_id(path: Path) -> str:
    """models/<name>/model.bin (or model.gguf) -> <name>; a bare file -> its stem."""
    return path.parent.name if path.name in MODEL_FILES else path.stem


def sibling(path: Path, suffix: str) -> Path | None:
    """The same model's file in the other format (.bin or .gguf), if there is one."""
    other = path.with_suffix(suffix)
    return other if other != path and other.is_file() else None


def scan(settings: Settings) -> dict[str, Path]:
    """Every servable model file, by id: the models dir's, plus MINIVAULT_MODEL when it is a file."""
    models_dir = Path(settings.models_dir)
    found: dict[str, Path] = {}
    # .bin sorts before .gguf: a model with both files is listed under its GGML file
    files = sorted(p for p in [*models_dir.glob("*/model.bin"), *models_dir.glob("*/model.gguf"),
                               *models_dir.glob("*.bin"), *models_dir.glob("*.gguf")]
                   if p.is_file() and not p.name.startswith(".") and not p.parent.name.startswith("."))
    for path in files:
        found.setdefault(model_id(path), path)  # a folder wins over a bare file of the same name
    if settings.model and settings.model not in found:
        path = Path(settings.model)
        if not path.is_file():
            raise SettingsError(f"{PREFIX}MODEL={settings.model}: no such file and no model of that id in "
                                f"{models_dir}; {how_to_get_one()}")
        found = {mid: p for mid, p in found.items() if p.resolve() != path.resolve()}
        found[model_id(path)] = path
    return found


def default_model(settings: Settings, found: dict[str, Path]) -> str | None:
    """The id requests without `model` get: MINIVAULT_MODEL, else the only one (None with several)."""
    if settings.model:
        return settings.model if settings.model in found else model_id(Path(settings.model))
    return next(iter(found)) if len(found) == 1 else None


def how_to_get_one() -> str:
    """The no-model message's routes to a model."""
    return ("get one with `minivault download` (distilgpt2, quantised to q4_0), "
            f"or set {PREFIX}MODEL to the path of a GPT-2 GGML file; {NO_HUB_ROUTES}")


def read_options(settings: Settings) -> dict[str, ModelOptions]:
    """models.toml's `[<model id>]` tables (workers, threads, engine, parallel); SettingsError names a bad entry."""
    path = Path(settings.models_dir) / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: not a valid TOML file: {exc}") from None
    options = {}
    for name, table in raw.items():
        try:
            options[name] = msgspec.convert(table, ModelOptions)
        except (msgspec.ValidationError, ValueError) as exc:
            raise SettingsError(f"{path}: [{name}]: {exc}") from None
    return options


def warn_unused(options: dict[str, ModelOptions], found: dict[str, Path], settings: Settings) -> None:
    """One warning per models.toml table that names no installed model (a typo, usually)."""
    for name in options:
        if name not in found:
            print(f"minivault: warning: {Path(settings.models_dir) / CONFIG_NAME}: [{name}] names no installed "
                  f"model (installed: {', '.join(found) or 'none'})", file=sys.stderr, flush=True)
