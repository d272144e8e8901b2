"""Settings: one frozen msgspec Struct, loaded once from MINIVAULT_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import msgspec

PREFIX = "MINIVAULT_"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the service can be configured with (see the README's settings table)."""

    model: str | None = None
    models_dir: str = "./models"
    log_file: str = "./logs/log.jsonl"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 0  # 0: the machine's cores divided among the workers
    max_queue: int = 16
    timeout_s: float = 120.0
    log_prompts: bool = True
    drain_s: float = 30.0
    retry_after_s: int = 1
    replica: str = ""  # names this process in each log record when several replicas serve one model

    def __post_init__(self) -> None:
        checks = [
            ("port", 1 <= self.port <= 65535, "must be between 1 and 65535"),
            ("workers", 1 <= self.workers <= 64, "must be between 1 and 64"),
            ("threads", 0 <= self.threads <= 256, "must be between 0 (auto) and 256"),
            ("max_queue", 0 <= self.max_queue <= 10_000, "must be between 0 and 10000"),
            ("timeout_s", 0 < self.timeout_s <= 86_400, "must be > 0 and <= 86400 seconds"),
            ("drain_s", 0 <= self.drain_s <= 3_600, "must be between 0 and 3600 seconds"),
            ("retry_after_s", 1 <= self.retry_after_s <= 3_600, "must be between 1 and 3600 seconds"),
            ("replica", len(self.replica) <= 253 and self.replica.isprintable(), "must be printable, at most 253 characters"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise SettingsError(f"{PREFIX}{name.upper()}={getattr(self, name)!r} is invalid: {rule}")

    @property
    def threads_per_worker(self) -> int:
        """Threads each model instance uses: the setting, or the cores shared among workers."""
        if self.threads:
            return self.threads
        return max(1, available_cores() // self.workers)

    @classmethod
    def from_env(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> "Settings":
        """Read MINIVAULT_* variables (then apply `overrides`, keyed by field name)."""
        environ = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            value = environ.get(PREFIX + name.upper())
            if value is not None and value != "":
                raw[name] = value
        for name, value in (overrides or {}).items():
            if name not in cls.__struct_fields__:
                raise SettingsError(f"unknown setting {name!r}")
            if value is not None:
                raw[name] = value
        try:
            return msgspec.convert(raw, cls, strict=False)
        except SettingsError:
            raise
        except msgspec.ValidationError as exc:
            raise SettingsError(_explain(exc, raw)) from None


def _explain(exc: msgspec.ValidationError, raw: Mapping[str, Any]) -> str:
    """Turn msgspec's `... - at `$.port`` into a message naming the variable and its value."""
    text = str(exc)
    if " - at `$." in text:
        rule, _, where = text.rpartition(" - at `$.")
        field = where.rstrip("`").split(".")[0].split("[")[0]
        rule = rule.replace("`int`", "an integer").replace("`float`", "a number").replace("`bool`", "true or false")
        return f"{PREFIX}{field.upper()}={raw.get(field)!r} is invalid: {rule.lower()}"
    return text


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def find_model(settings: Settings) -> Path:
    """The GGML model file to serve: MINIVAULT_MODEL, else the one model in the models dir.

    Raises SettingsError with a message that says how to get a model.
    """
    how = (
        "get one with `minivault download` (distilgpt2, quantised to q4_0), "
        f"or set {PREFIX}MODEL to the path of a GPT-2 GGML file"
    )
    if settings.model:
        path = Path(settings.model)
        if not path.is_file():
            raise SettingsError(f"{PREFIX}MODEL={settings.model}: no such file; {how}")
        return path
    models_dir = Path(settings.models_dir)
    found = sorted(
        p for p in [*models_dir.glob("*.bin"), *models_dir.glob("*/model.bin")]
        if p.is_file() and not p.name.startswith(".")
    )
    if not found:
        raise SettingsError(f"no model in {PREFIX}MODELS_DIR={models_dir}; {how}")
    if len(found) > 1:
        names = ", ".join(str(p) for p in found)
        raise SettingsError(f"several models in {models_dir} ({names}); choose one with {PREFIX}MODEL")
    return found[0]
