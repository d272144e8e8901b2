"""Several models, loaded on demand: every installed model (each a runtime/model_slot.ModelSlot), and the rules
for loading (one at a time, waited for up to load_timeout_s), unloading (idle past keep_alive_s)
and making room (least recently used idle model first, within max_loaded_models and the memory budget).

Never imports litestar. A model that is generating, or that a request is being admitted to, is
never unloaded: `Models.serving` pins it until its job is admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import AsyncIterator, Callable

from service.config import Settings, SettingsError
from service.errors import (
    InvalidRequest,
    ModelCapacity,
    NotReady,
    QueueFull,
    ShuttingDown,
    UnknownModel,
)
from service.runtime import catalog
from service.runtime.jobs import Job
from service.runtime.loading import LibrarySlots, load_model, resident_mb
from service.runtime.model_slot import ModelSlot
from service.runtime.scheduler import Scheduler

log = logging.getLogger("minivault")


class Models:
    """Every installed model, by id, and the loading rules."""

    def __init__(self, settings: Settings, on_finish: Callable[[Job], None],
                 on_change: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self._on_finish = on_finish
        self._on_change = on_change or (lambda model, event: None)  # (model, loaded|unloaded_<why>|error)
        self._libs = LibrarySlots()  # ctransformers' library copies, in a directory made on first use
        self._load_lock = asyncio.Lock()
        self.slots: dict[str, ModelSlot] = {}
        self.default: str | None = None
        self.draining = False
        self.rescan()
        if not self.slots:
            raise SettingsError(f"no model in {settings.models_dir}; {catalog.how_to_get_one()}")

    # --- the models dir ----------------------------------------------------------------------
    def rescan(self) -> list[str]:
        """Read the models dir again: new models appear, removed unloaded ones go; the new ids."""
        found = catalog.scan(self.settings)
        options = catalog.read_options(self.settings)
        catalog.warn_unused(options, found, self.settings)
        added = [mid for mid in found if mid not in self.slots]
        for mid, path in found.items():
            slot = self.slots.get(mid)
            if slot is None or (slot.state in ("unloaded", "error") and slot.path != path):
                self.slots[mid] = ModelSlot(mid, path, options.get(mid, catalog.ModelOptions()), self.settings)
        for mid in [m for m, slot in self.slots.items() if m not in found and slot.state in ("unloaded", "error")]:
            del self.slots[mid]
        self.default = catalog.default_model(self.settings, found)
        if added:
            log.info("models found: %s", ", ".join(added))
        return added

    def resolve(self, requested: str | None, field: str = "model") -> ModelSlot:
        """The slot a request names (None: the default); rescans once for a name it does not know."""
        if requested is None:
            if self.default is None:
                raise InvalidRequest(f"{field}: this server has several models and no default "
                                     f"(MINIVAULT_MODEL); choose one of: {', '.join(self.slots)}", field=field)
            requested = self.default
        if requested not in self.slots:
            with contextlib.suppress(SettingsError):
                self.rescan()
        if requested not in self.slots:
            raise UnknownModel(f"model `{requested}` does not exist; available models: {', '.join(self.slots)}",
                               field=field)
        return self.slots[requested]

    def preload_ids(self) -> list[str]:
        """The models MINIVAULT_PRELOAD names."""
        value = self.settings.preload.strip()
        if value.lower() == "none":
            return []
        if value.lower() == "all":
            return list(self.slots)
        if not value:
            return [self.default] if self.default else []
        ids = Settings.split(value)
        unknown = [mid for mid in ids if mid not in self.slots]
        if unknown:
            raise SettingsError(f"MINIVAULT_PRELOAD={value!r}: no model {', '.join(unknown)} in "
                                f"{self.settings.models_dir} (installed: {', '.join(self.slots)})")
        return ids

    # --- serving ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serving(self, requested: str | None, field: str = "model") -> AsyncIterator[Scheduler]:
        """The model's scheduler, loading it first if needed; the model stays loaded inside the block."""
        slot = self.resolve(requested, field)
        if self.draining:
            raise ShuttingDown("the server is shutting down and takes no new requests", retry_after=5)
        if slot.state != "loaded":
            await self._wait_loaded(slot)
        slot.pins += 1
        slot.last_used = time.monotonic()
        try:
            yield slot.scheduler  # type: ignore[misc]
        finally:
            slot.pins -= 1
            slot.last_used = time.monotonic()

    async def _wait_loaded(self, slot: ModelSlot) -> None:
        """Start the model's load (or join it) and wait, counted against its queue, up to load_timeout_s."""
        s = self.settings
        if slot.state == "error":
            if slot.failed_stat == slot.stat_or_none():
                raise NotReady(f"model {slot.id} failed to load: {slot.detail}", retry_after=s.retry_after_s)
            slot.state, slot.detail = "unloaded", None  # the file changed since: try again
        if slot.waiting >= slot.workers + s.max_queue:
            raise QueueFull(f"model {slot.id} is loading and {slot.waiting} requests already wait for it "
                            f"(at most {slot.workers + s.max_queue}); retry later", retry_after=s.retry_after_s)
        if slot.task is None or slot.task.done():
            slot.task = asyncio.get_running_loop().create_task(self._load(slot))
        slot.waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(slot.task), timeout=s.load_timeout_s)
        except asyncio.TimeoutError:
            raise NotReady(f"model {slot.id} is still loading after {s.load_timeout_s:g} s "
                           "(MINIVAULT_LOAD_TIMEOUT_S); retry later", retry_after=s.retry_after_s) from None
        finally:
            slot.waiting -= 1
        if slot.state != "loaded":
            raise slot.task.result() or NotReady(f"model {slot.id} is not loaded", retry_after=s.retry_after_s)

    async def _load(self, slot: ModelSlot) -> Exception | None:
        """Load one model (one load at a time, so its memory can be measured); the refusal, if any."""
        async with self._load_lock:
            if slot.state == "loaded":
                return None
            try:
                await self._make_room(slot)
            except ModelCapacity as exc:
                return exc
            slot.state, slot.detail = "loading", None
            before, started = resident_mb(), time.monotonic()
            try:
                if slot.choice.problem:
                    raise ValueError(slot.choice.problem)
                loaded = await asyncio.to_thread(load_model, slot.id, slot.path, slot.workers, slot.threads,
                                                 self._libs, self.settings, self._on_finish, slot.choice)
            except Exception as exc:
                slot.state, slot.detail = "error", f"could not load {slot.path}: {exc}"
                slot.failed_stat = slot.stat_or_none()
                print(f"minivault: error: model {slot.id}: {slot.detail}", file=sys.stderr, flush=True)
                self._on_change(slot.id, "error")
                return NotReady(f"model {slot.id} failed to load: {slot.detail}",
                                retry_after=self.settings.retry_after_s)
            after = resident_mb()
            slot.loaded, slot.state = loaded, "loaded"
            slot.load_seconds = time.monotonic() - started
            if before is not None and after is not None and after > before:
                slot.memory_mb = after - before
            slot.last_used = time.monotonic()
            log.info("model %s loaded in %.2f s: %d worker(s), %d thread(s) each, %s MiB", slot.id,
                     slot.load_seconds, slot.workers, slot.threads,
                     f"{slot.memory_mb:.0f}" if slot.memory_mb is not None else "?")
            self._on_change(slot.id, "loaded")
            return None

    async def _make_room(self, slot: ModelSlot) -> None:
        """Unload least recently used idle models until this one fits; ModelCapacity if it cannot."""
        s = self.settings
        while True:
            loaded = [m for m in self.slots.values() if m.state == "loaded" and m is not slot]
            used = sum(m.memory_mb or m.estimate_mb() for m in loaded)
            need = slot.estimate_mb()
            over_count = s.max_loaded_models and len(loaded) + 1 > s.max_loaded_models
            over_memory = s.model_memory_mb and used + need > s.model_memory_mb
            if not over_count and not over_memory:
                return
            idle = sorted((m for m in loaded if m.idle), key=lambda m: m.last_used)
            if not idle:
                if over_count:
                    why = (f"{len(loaded)} models are loaded (MINIVAULT_MAX_LOADED_MODELS={s.max_loaded_models}) "
                           "and all of them are in use")
                else:
                    why = (f"it needs about {need:.0f} MiB and the models in use hold {used:.0f} of "
                           f"MINIVAULT_MODEL_MEMORY_MB={s.model_memory_mb}")
                if not loaded and over_memory:
                    why = f"it needs about {need:.0f} MiB, more than MINIVAULT_MODEL_MEMORY_MB={s.model_memory_mb}"
                raise ModelCapacity(f"model {slot.id} cannot be loaded now: {why}; retry later",
                                    retry_after=s.retry_after_s)
            await self.unload(idle[0], "evicted")

    async def unload(self, slot: ModelSlot, why: str) -> None:
        """Free an idle model's instances (its state says unloaded at once)."""
        loaded, slot.loaded = slot.loaded, None
        slot.state = "unloaded"
        if loaded is not None:
            log.info("model %s unloaded (%s)", slot.id, why)
            await asyncio.to_thread(loaded.close, self._libs)
            self._on_change(slot.id, f"unloaded_{why}")

    async def reap_idle(self) -> None:
        """Unload models idle for longer than keep_alive_s (run periodically while it is set)."""
        keep = self.settings.keep_alive_s
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if slot.idle and now - slot.last_used >= keep:
                await self.unload(slot, "keep_alive")

    # --- the whole set -----------------------------------------------------------------------
    def loaded(self) -> list[ModelSlot]:
        return [m for m in self.slots.values() if m.scheduler is not None]

    def begin_drain(self) -> None:
        self.draining = True
        for slot in self.loaded():
            slot.scheduler.draining = True  # type: ignore[union-attr]

    async def finish_jobs(self, timeout: float) -> None:
        await asyncio.gather(*(m.scheduler.finish_jobs(timeout) for m in self.loaded()))  # type: ignore[union-attr]

    async def close(self, timeout: float) -> None:
        """Drain every loaded model (bounded by `timeout`), then free them."""
        self.begin_drain()
        tasks = [m.task for m in self.slots.values() if m.task is not None and not m.task.done()]
        if tasks:
            await asyncio.wait(tasks)
        await self.finish_jobs(timeout)
        for slot in self.loaded():
            await self.unload(slot, "shutdown")
        self._libs.remove()
