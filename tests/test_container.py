"""The container: build the image from the Dockerfile, run compose.yaml end to end, stop it mid-stream.

Needs a Docker-compatible engine (DOCKER_HOST or the default socket) with the `docker`
CLI and Compose (`docker-compose` or `docker compose`); skipped with the reason otherwise.
The stack runs the real compose.yaml under a unique project name, with its models and
logs dirs pointed at temporary folders through the file's own MINIVAULT_*_HOST_DIR
variables, and a tiny model already in place so the init step skips the download.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from service.formats.ggml.tiny import make_tiny_gpt2
from tests.support.long_model import write_long_model
from tests.support.server import ROOT, free_port, new_records, read_log

pytestmark = pytest.mark.container

BUILD_TIMEOUT_S = 1800  # a cold build downloads the dependencies from PyPI
HEALTHY_TIMEOUT_S = 60
STREAM_SECONDS = 6  # a stream long enough to be still running when the stop arrives


def run(cmd: list[str], timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; on failure show both streams."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def engine_problem() -> str | None:
    """Why no container engine can be used here, or None."""
    if shutil.which("docker") is None:
        return "no `docker` CLI on PATH"
    try:
        proc = run(["docker", "version", "--format", "{{json .Server}}"], timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker version` timed out"
    if proc.returncode != 0 or proc.stdout.strip() in ("", "null"):
        where = os.environ.get("DOCKER_HOST", "the default socket")
        lines = proc.stderr.strip().splitlines()
        return f"no container engine reachable at {where}: {lines[-1] if lines else f'exit {proc.returncode}'}"
    if compose_command() is None:
        return "no Compose (`docker-compose` or `docker compose`)"
    return None


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if run(["docker", "compose", "version"], timeout=30, check=False).returncode == 0:
        return ["docker", "compose"]
    return None


def is_podman() -> bool:
    """Podman serving the Docker API runs health checks only when asked to."""
    return "podman" in run(["docker", "version"], timeout=30).stdout.lower() and shutil.which("podman") is not None


def say(request: pytest.FixtureRequest, message: str) -> None:
    """A line on the terminal even when output is captured (the measured figures)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(message)
        return
    with capture.global_and_fixture_disabled():
        print(message, flush=True)


class Stack:
    """One compose project of the repo's compose.yaml, with its own dirs and host port."""

    def __init__(self, image: str, root: Path) -> None:
        self.project = f"mvtest{uuid.uuid4().hex[:10]}"
        self.models = root / "models"
        self.logs = root / "logs"
        self.models.mkdir()
        self.logs.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env_file = root / "empty.env"  # a developer's .env must not change the test
        env_file.write_text("")
        self.compose = [*compose_command(), "--project-name", self.project, "--file", str(ROOT / "compose.yaml"),
                        "--env-file", str(env_file)]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MINIVAULT_")} | {
            "MINIVAULT_IMAGE": image,
            "MINIVAULT_MODELS_HOST_DIR": str(self.models),
            "MINIVAULT_LOGS_HOST_DIR": str(self.logs),
            "MINIVAULT_HOST_PORT": str(self.port),
            "MINIVAULT_THREADS": "1",  # steadier speed on a shared 2-core machine
        }

    def __call__(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.compose, *args], timeout=timeout, check=check, env=self.env, cwd=ROOT)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*self.compose, *args], env=self.env, cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def container(self, service: str) -> str:
        ids = self("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"expected one {service} container, got {ids}"
        return ids[0]

    @property
    def log_file(self) -> Path:
        return self.logs / "log.jsonl"


def build_image(request: pytest.FixtureRequest, name: str, *build_args: str) -> str:
    """Build the repo's Dockerfile under a fresh tag of `name` (skip without an engine); say its time and size."""
    problem = engine_problem()
    if problem:
        pytest.skip(f"container tests need a container engine: {problem}")
    tag = f"{name}:{uuid.uuid4().hex[:10]}"
    args = [x for arg in build_args for x in ("--build-arg", arg)]
    started = time.monotonic()
    run(["docker", "build", *args, "--tag", tag, str(ROOT)], timeout=BUILD_TIMEOUT_S)
    size = int(run(["docker", "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())
    with_args = f" ({', '.join(build_args)})" if build_args else ""
    say(request, f"\ncontainer: built {tag}{with_args} in {time.monotonic() - started:.1f} s; image size {size / 1e6:.0f} MB")
    return tag


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> Iterator[str]:
    """The image built from the repo's Dockerfile (removed afterwards; its layer cache stays)."""
    tag = build_image(request, "minivault-test")
    yield tag
    # --no-prune keeps the untagged parent layers: the next build reuses them
    run(["docker", "rmi", "--no-prune", tag], check=False)


@pytest.fixture(scope="module")
def stack(image: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """compose.yaml up and healthy, with a model that generates long text already in the models dir."""
    stack = Stack(image, tmp_path_factory.mktemp("stack"))
    # never emits end-of-text, so a generation runs as long as asked
    model = stack.models / "long" / "model.bin"
    model.parent.mkdir()
    write_long_model(model)
    try:
        started = time.monotonic()
        stack("up", "--detach", "--no-build")  # returns once init has exited and api has started
        up = time.monotonic() - started
        api = stack.container("api")
        wait_healthy(api, HEALTHY_TIMEOUT_S)
        say(request, f"container: `compose up` to healthy in {time.monotonic() - started:.1f} s "
                     f"(`up` itself {up:.1f} s, including the init step)")
        yield stack
    finally:
        logs = stack("logs", "--no-color", check=False, timeout=60)
        if request.session.testsfailed:
            print(logs.stdout[-6000:], logs.stderr[-2000:])
        stack("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=120)


def wait_healthy(container: str, timeout: float) -> None:
    """Until the image's HEALTHCHECK passes (run on demand under podman, else as scheduled)."""
    deadline = time.monotonic() + timeout
    podman = is_podman()
    last = ""
    while time.monotonic() < deadline:
        if podman:
            proc = run(["podman", "healthcheck", "run", container], check=False, timeout=30)
            if proc.returncode == 0:
                return
            last = proc.stdout + proc.stderr
        else:
            last = run(["docker", "inspect", "--format", "{{.State.Health.Status}}", container]).stdout.strip()
            if last == "healthy":
                return
        time.sleep(0.2)
    raise AssertionError(f"{container} not healthy after {timeout} s: {last}")


def test_image_has_no_compiler_and_the_documented_settings(image: str) -> None:
    probe = "for c in gcc cc c++ g++ clang make cmake; do command -v $c; done; ls /root/.cache/pip 2>&1; true"
    out = run(["docker", "run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c", probe]).stdout
    assert "/" not in out.replace("/root/.cache/pip", ""), f"build tools in the runtime image: {out}"
    assert "No such file" in out, f"a pip cache in the runtime image: {out}"
    config = json.loads(run(["docker", "image", "inspect", image]).stdout)[0]["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["MINIVAULT_HOST"] == "0.0.0.0"
    assert env["MINIVAULT_MODELS_DIR"] == "/models"
    assert env["MINIVAULT_LOG_FILE"] == "/logs/log.jsonl"
    assert "8000/tcp" in config["ExposedPorts"]
    health = config.get("Healthcheck")
    if health is None and is_podman():  # podman's Docker API leaves it out of the image's config
        health = json.loads(run(["podman", "image", "inspect", "--format", "{{json .HealthCheck}}", image]).stdout)
    assert health["Test"] == ["CMD", "python", "/app/docker/healthcheck.py"]


def test_init_step_skips_the_download_when_a_model_is_there(stack: Stack) -> None:
    init = stack.container("init")
    state = json.loads(run(["docker", "inspect", init]).stdout)[0]["State"]
    assert state["ExitCode"] == 0
    logs = run(["docker", "logs", init])
    assert "/models/long/model.bin is present; nothing to download" in logs.stdout + logs.stderr


def test_server_runs_as_non_root(stack: Stack) -> None:
    status = run(["docker", "exec", stack.container("api"), "cat", "/proc/1/status"]).stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert "0" not in uids, status
    cmdline = run(["docker", "exec", stack.container("api"), "cat", "/proc/1/cmdline"]).stdout
    assert "minivault" in cmdline and "serve" in cmdline, f"PID 1 is not the server: {cmdline!r}"


def test_generate_and_stream_from_the_host_are_logged(stack: Stack) -> None:
    before = len(read_log(stack.log_file))
    body = {"prompt": "hello", "max_new_tokens": 8, "temperature": 0, "seed": 1}
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["model"] == "long"
        done = client.post("/generate", json=body)
        assert done.status_code == 200, done.text
        result = done.json()
        assert result["usage"]["completion_tokens"] == 8 and result["finish_reason"] == "length"
        with client.stream("POST", "/generate/stream", json=body) as streamed:
            assert streamed.status_code == 200
            text = "".join(streamed.iter_text())
            stream_id = streamed.headers["x-request-id"]
    assert text == result["response"]  # same seed, greedy: the same text either way
    records = new_records(stack.log_file, before, 2, timeout=10)
    assert [(r["id"], r["endpoint"], r["status"]) for r in records] == [
        (result["id"], "/generate", "ok"), (stream_id, "/generate/stream", "ok")]
    assert records[1]["response"] == text


def test_stop_lets_a_running_stream_finish_and_keeps_the_log(stack: Stack) -> None:
    """docker compose stop sends SIGTERM: no new requests, the running stream completes, the log is whole."""
    with httpx.Client(base_url=stack.url, timeout=120) as client:
        # size the stream to the speed measured now, so it outlasts the stop but not the drain period
        before = len(read_log(stack.log_file)) + 1
        timing = client.post("/generate", json={"prompt": "speed", "max_new_tokens": 32, "temperature": 0})
        tokens_per_s = timing.json()["timings"]["tokens_per_second"]
        n = max(32, min(900, int(tokens_per_s * STREAM_SECONDS)))
        assert len(new_records(stack.log_file, 0, before, timeout=10)) == before

        chunks: list[str] = []
        first = threading.Event()
        failure: list[BaseException] = []

        def consume() -> None:
            try:
                body = {"prompt": "hello", "max_new_tokens": n, "seed": 7}
                with client.stream("POST", "/generate/stream", json=body) as response:
                    assert response.status_code == 200, response.read()
                    for piece in response.iter_text():
                        chunks.append(piece)
                        first.set()
            except BaseException as exc:  # reported by the test thread
                failure.append(exc)
            finally:
                first.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first.wait(60), "no first chunk"
        stopping = stack.popen("stop")

        # the server takes no new requests once SIGTERM arrived, while the stream is still running
        refused_while_streaming = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and reader.is_alive():
            try:
                if httpx.get(stack.url + "/health", timeout=2).status_code != 200:
                    refused_while_streaming = reader.is_alive()
                    break
            except httpx.HTTPError:
                refused_while_streaming = reader.is_alive()
                break
            time.sleep(0.05)
        reader.join(120)
    out, err = stopping.communicate(timeout=120)
    assert stopping.returncode == 0, out + err
    assert not failure, failure
    assert refused_while_streaming, "the stream ended before the stop reached the server; nothing was drained"

    text = "".join(chunks)
    records = read_log(stack.log_file)  # every line parses: no torn record
    assert len(records) == before + 1, records[before:]
    last = records[-1]
    assert (last["endpoint"], last["status"], last["finish_reason"]) == ("/generate/stream", "ok", "length")
    assert last["usage"]["completion_tokens"] == n
    assert last["response"] == text

    api = stack.container("api")
    state = json.loads(run(["docker", "inspect", api]).stdout)[0]["State"]
    assert not state["Running"] and state["ExitCode"] == 0, state
    logs = run(["docker", "logs", api])
    assert "Application shutdown complete" in logs.stdout + logs.stderr


def test_image_runs_as_a_numeric_non_root_user_on_a_read_only_root(image: str, tmp_path: Path) -> None:
    """What Kubernetes' restricted securityContext gives it: the image's own user, read-only /, no capabilities."""
    config = json.loads(run(["docker", "image", "inspect", image]).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    models = tmp_path / "models"
    (models / "tiny").mkdir(parents=True)
    make_tiny_gpt2(models / "tiny" / "model.bin", n_embd=64, n_layer=2)
    port = free_port()
    name = f"mvro{uuid.uuid4().hex[:10]}"
    run(["docker", "run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp",
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "-e", "MINIVAULT_REPLICA=pod-a",
         # podman drops a tmpfs' mode under --read-only: the log goes to the writable /tmp instead
         "-e", "MINIVAULT_LOG_FILE=/tmp/logs/log.jsonl",
         "-v", f"{models}:/models:ro", "-p", f"127.0.0.1:{port}:8000", image])
    try:
        wait_healthy(name, HEALTHY_TIMEOUT_S)
        r = httpx.post(f"http://127.0.0.1:{port}/generate", json={"prompt": "hi", "max_new_tokens": 4}, timeout=60)
        assert r.status_code == 200, r.text
        status = run(["docker", "exec", name, "cat", "/proc/1/status"]).stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {"10001"}, status
        deadline = time.monotonic() + 10  # the log is written by a thread
        while (log := run(["docker", "exec", name, "cat", "/tmp/logs/log.jsonl"], check=False)).returncode != 0:
            assert time.monotonic() < deadline, log.stderr
            time.sleep(0.2)
        record = json.loads(log.stdout.splitlines()[-1])
        assert record["id"] == r.json()["id"] and record["replica"] == "pod-a"
    finally:
        run(["docker", "rm", "--force", name], check=False)


def test_init_keeps_the_hub_cache_on_a_named_volume(stack: Stack) -> None:
    """HF_HOME is a named volume, writable by the user the entrypoint runs the download as."""
    mounts = json.loads(run(["docker", "inspect", stack.container("init")]).stdout)[0]["Mounts"]
    cache = [m for m in mounts if m["Destination"] == "/cache/huggingface"]
    assert len(cache) == 1 and cache[0]["Type"] == "volume", mounts
    assert cache[0]["Name"].endswith("hf-cache")
    probe = 'touch "$HF_HOME/probe" && echo "$HF_HOME $(id -u)"'
    out = stack("run", "--rm", "--no-deps", "init", "sh", "-c", probe).stdout.split()
    assert out[0] == "/cache/huggingface" and out[1] != "0", out
