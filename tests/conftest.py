"""Shared fixtures: tiny real GGML models made by the project's writer, settings, a live server."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterator

import pytest

from service.config import Settings
from service.formats.ggml.tiny import make_tiny_gpt2
from tests.support.long_model import write_long_model
from tests.support.server import LiveServer, Script


def pytest_configure(config: pytest.Config) -> None:
    # A shell that starts pytest in the background sets SIGINT to "ignore", and child processes
    # inherit that, so the Ctrl-C tests would see a CLI that cannot be interrupted. A handler
    # here makes exec'd children start with the default, as in a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_root: Path) -> Path:
    """A random-weight GPT-2 (2 layers, 64 wide, byte vocabulary + a few multi-byte tokens)."""
    path = models_root / "tiny" / "model.bin"
    path.parent.mkdir()
    make_tiny_gpt2(path, scale=0.5)
    return path


@pytest.fixture(scope="session")
def gpt2_vocab_model(models_root: Path) -> Path:
    """A tiny random model with GPT-2's real 50,257-token vocabulary and its tokenizer.json beside it."""
    from tests.fixtures.gpt2_vocab import gpt2_vocab_bytes, write_tokenizer_json

    vocab = gpt2_vocab_bytes()
    path = models_root / "gpt2-vocab" / "model.bin"
    path.parent.mkdir()
    make_tiny_gpt2(path, vocab=vocab, n_embd=32, n_head=2, n_layer=1)
    write_tokenizer_json(path.parent / "tokenizer.json")
    return path


@pytest.fixture(scope="session")
def long_model(models_root: Path) -> Path:
    """A random GPT-2 that never picks end-of-text, for generations that must run long."""
    path = models_root / "long" / "model.bin"
    path.parent.mkdir()
    write_long_model(path)
    return path


@pytest.fixture(scope="session")
def scripted(models_root: Path):
    """Factory for scripted models."""
    return lambda name, pieces, extra=(): Script(models_root, name, list(extra), list(pieces))


@pytest.fixture
def settings_for(tmp_path: Path):
    """Settings for a model, logging into this test's tmp dir."""

    def make(model: Path, **overrides) -> Settings:
        # Litestar's TestClient sends `Host: testserver.local`
        fields = {"model": str(model), "log_file": str(tmp_path / "logs" / "log.jsonl"), "threads": 1,
                  "allowed_hosts": "testserver.local"}
        return Settings(**(fields | overrides))

    return make


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Factory: start a live server for a model (stopped at teardown)."""
    servers: list[LiveServer] = []

    def start(model: Path, **env: str) -> LiveServer:
        server = LiveServer(model, tmp_path / "logs" / "log.jsonl", **{k: str(v) for k, v in env.items()})
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(start_server, tiny_model: Path) -> str:
    """Base URL of a live server running the tiny model."""
    return start_server(tiny_model).url

