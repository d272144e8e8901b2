"""Settings: one frozen msgspec Struct, loaded once from MINIVAULT_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import msgspec

PREFIX = "MINIVAULT_"
# MINIVAULT_* variables read outside Settings (by the CLI): not settings, but not unknown either
OTHER_VARIABLES = ("URL", "DEBUG")
ENGINES = ("auto", "ctransformers", "llamacpp")


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
    threads: int = 0  # 0: the machine's cores but one, divided among the workers
    max_queue: int = 16
    max_concurrent_requests: int = 256  # in flight at once (health and metrics aside); past it 503 at once
    timeout_s: float = 120.0
    log_prompts: bool = True
    drain_s: float = 30.0
    shutdown_delay_s: float = 0.0  # on SIGTERM, seconds /health says draining before the port closes
    retry_after_s: int = 1
    log_db: str = ""  # the SQLite mirror of the log: "" is log.db beside log_file, "off" disables it
    log_fsync: str = "off"  # off, record (fsync every write), or N: fsync at most every N ms
    log_buffer: int = 10_000  # records kept while the log cannot be written; more are dropped
    # exposing the service (see the README's "Exposing MiniVault")
    api_keys: str = ""  # comma-separated; with api_keys_file, keys are required (off when both are empty)
    api_keys_file: str = ""  # one key per line, `#` comments
    metrics_public: bool = False  # whether GET /metrics needs no key when keys are on
    metrics: bool = True  # false: no /metrics and nothing measured (for benchmarks)
    allowed_hosts: str = ""  # comma-separated Host values accepted besides loopback and the listen address
    cors_origins: str = ""  # comma-separated origins allowed cross-origin requests; empty: CORS off
    cache_prompt: bool = True  # prefix reuse (llama-server's cache_prompt); false turns it off for every request
    cache_exact: bool = True  # reuse only what is bit-exact (engine/prefix.py); false: to the token, replies included
    replica: str = ""  # names this process in each log record when several replicas serve one model
    # several models (README: Several models): loaded on first use, unloaded when idle or short of room
    preload: str = ""  # models loaded at start: "" the default model, "none", "all", or comma-separated ids
    keep_alive_s: float = 0.0  # unload a model idle this long; 0 keeps loaded models until room is needed
    load_timeout_s: float = 120.0  # how long a request waits for its model to load
    max_loaded_models: int = 0  # at most this many loaded at once (0: no limit but memory)
    model_memory_mb: int = 0  # loaded models' memory budget in MiB (0: no budget)
    # engines (README: Engines): which library runs a model, and llama.cpp's batch of sequences
    engine: str = "auto"  # auto (a GGUF file on llama.cpp when installed, else GGML on ctransformers), ctransformers, llamacpp
    parallel: int = 4  # llama.cpp: sequences one model decodes together (its slots)

    def __post_init__(self) -> None:
        checks = [
            ("port", 1 <= self.port <= 65535, "must be between 1 and 65535"),
            ("workers", 1 <= self.workers <= 64, "must be between 1 and 64"),
            ("threads", 0 <= self.threads <= 256, "must be between 0 (auto) and 256"),
            ("max_queue", 0 <= self.max_queue <= 10_000, "must be between 0 and 10000"),
            ("max_concurrent_requests", 1 <= self.max_concurrent_requests <= 100_000, "must be between 1 and 100000"),
            ("timeout_s", 0 < self.timeout_s <= 86_400, "must be > 0 and <= 86400 seconds"),
            ("drain_s", 0 <= self.drain_s <= 3_600, "must be between 0 and 3600 seconds"),
            ("shutdown_delay_s", 0 <= self.shutdown_delay_s <= 300, "must be between 0 and 300 seconds"),
            ("retry_after_s", 1 <= self.retry_after_s <= 3_600, "must be between 1 and 3600 seconds"),
            ("log_fsync", _fsync_ok(self.log_fsync), "must be off, record, or a number of ms from 1 to 60000"),
            ("log_buffer", 1 <= self.log_buffer <= 1_000_000, "must be between 1 and 1000000 records"),
            ("keep_alive_s", 0 <= self.keep_alive_s <= 604_800, "must be between 0 (never) and 604800 seconds"),
            ("load_timeout_s", 0 < self.load_timeout_s <= 3_600, "must be > 0 and <= 3600 seconds"),
            ("max_loaded_models", 0 <= self.max_loaded_models <= 1_000, "must be between 0 (no limit) and 1000"),
            ("model_memory_mb", 0 <= self.model_memory_mb <= 10_000_000, "must be between 0 (no budget) and 10000000"),
            ("engine", self.engine in ENGINES, f"must be one of {', '.join(ENGINES)}"),
            ("parallel", 1 <= self.parallel <= 64, "must be between 1 and 64"),
            ("replica", len(self.replica) <= 253 and self.replica.isprintable(), "must be printable, at most 253 characters"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise SettingsError(f"{PREFIX}{name.upper()}={getattr(self, name)!r} is invalid: {rule}")

    @staticmethod
    def split(value: str) -> list[str]:
        """A comma-separated setting as a list, without blanks."""
        return [item.strip() for item in value.split(",") if item.strip()]

    @property
    def log_db_path(self) -> Path | None:
        """Where the SQLite log lives, or None when MINIVAULT_LOG_DB=off."""
        if self.log_db.lower() == "off":
            return None
        return Path(self.log_db) if self.log_db else Path(self.log_file).with_name("log.db")

    @property
    def threads_per_worker(self) -> int:
        """Threads each model instance uses: the setting, or all cores but one shared among workers."""
        return self.threads_for(self.workers, self.threads)

    @staticmethod
    def threads_for(workers: int, threads: int) -> int:
        """`threads` when set, else the cores but one shared among `workers` instances."""
        if threads:
            return threads
        # one core left for the event loop and anything else: ggml's threads spin-wait for each
        # other, so one that loses its core stalls them all (README, Performance: threads)
        return max(1, (available_cores() - 1) // workers)

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


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per MINIVAULT_* variable that is not a setting, naming the closest known one."""
    import difflib

    environ = os.environ if environ is None else environ
    known = [name.upper() for name in Settings.__struct_fields__] + list(OTHER_VARIABLES)
    warnings = []
    for name in sorted(environ):
        if name.startswith(PREFIX) and name.removeprefix(PREFIX) not in known:
            # compared without the shared prefix, which would make every name look close
            close = difflib.get_close_matches(name.removeprefix(PREFIX), known, n=1, cutoff=0.6)
            hint = f"did you mean {PREFIX}{close[0]}?" if close else "see the README's settings table"
            warnings.append(f"{name} is not a MiniVault setting and is ignored; {hint}")
    return warnings


def _explain(exc: msgspec.ValidationError, raw: Mapping[str, Any]) -> str:
    """Turn msgspec's `... - at `$.port`` into a message naming the variable and its value."""
    text = str(exc)
    if " - at `$." in text:
        rule, _, where = text.rpartition(" - at `$.")
        field = where.rstrip("`").split(".")[0].split("[")[0]
        rule = rule.replace("`int`", "an integer").replace("`float`", "a number").replace("`bool`", "true or false")
        return f"{PREFIX}{field.upper()}={raw.get(field)!r} is invalid: {rule.lower()}"
    return text


def _fsync_ok(value: str) -> bool:
    """off, record, or whole milliseconds between 1 and 60000."""
    return value in ("off", "record") or (value.isdigit() and 1 <= int(value) <= 60_000)


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# How to get a model without the Hub (the download and the no-model messages end with this).
NO_HUB_ROUTES = (
    "without the Hub: `minivault import PATH` installs a model file you copied over (a GPT-2 .gguf, "
    "a GGML .bin or a Hugging Face GPT-2 checkpoint folder), or `minivault demo-model` creates a "
    "random-weight demo model with GPT-2's real vocabulary (random text, but the whole service works)"
)
