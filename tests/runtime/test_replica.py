"""MINIVAULT_REPLICA: each log record names the replica that served it, so merged logs stay apart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from litestar.testing import TestClient

from service.api.app import create_app
from service.config import Settings, SettingsError


def serve_two(settings: Settings) -> list[dict]:
    """One /generate and one stream through the app; the log's records."""
    with TestClient(create_app(settings)) as c:
        for _ in range(500):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.02)
        assert c.post("/generate", json={"prompt": "hi", "max_new_tokens": 3}).status_code == 200
        with c.stream("POST", "/generate/stream", json={"prompt": "hi", "max_new_tokens": 3}) as r:
            assert r.status_code == 200
            r.read()
    lines = Path(settings.log_file).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_every_record_names_the_replica(tiny_model, settings_for):
    records = serve_two(settings_for(tiny_model, replica="api-7f9c"))
    assert [(r["endpoint"], r["replica"]) for r in records] == [
        ("/generate", "api-7f9c"), ("/generate/stream", "api-7f9c")]


def test_without_a_replica_records_are_unchanged(tiny_model, settings_for):
    records = serve_two(settings_for(tiny_model))
    assert len(records) == 2 and all("replica" not in r for r in records)


def test_replica_comes_from_the_environment_and_is_checked():
    assert Settings.from_env(environ={"MINIVAULT_REPLICA": "minivault-5d8f-x2"}).replica == "minivault-5d8f-x2"
    assert Settings.from_env(environ={}).replica == ""
    with pytest.raises(SettingsError, match="MINIVAULT_REPLICA=.* must be printable, at most 253 characters"):
        Settings.from_env(environ={"MINIVAULT_REPLICA": "a\nb"})
