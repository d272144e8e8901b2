"""The `minivault` CLI against real servers on 127.0.0.1 running tiny GGML models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import http as client
from service.cli.main import app
from service.formats.ggml.tiny import make_tiny_gpt2
from tests.support.server import (
    ROOT,
    LiveServer,
    free_port,
    new_records,
    read_log,
    wait_idle,
)

runner = CliRunner()  # Click 8.2+: result.stdout and result.stderr are always kept apart


def run(*args: str, **env: str):
    return runner.invoke(app, list(args), env=env or None)


def one_line(text: str) -> str:
    """The single line of `text` (asserting there is exactly one: no traceback)."""
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("minivault: ")
    return lines[0]


@pytest.fixture(scope="module")
def long_server(long_model, tmp_path_factory) -> Iterator[LiveServer]:
    """One server for the module, on a model that never ends early (lengths are predictable)."""
    log = tmp_path_factory.mktemp("cli") / "logs" / "log.jsonl"
    server = LiveServer(long_model, log, MINIVAULT_THREADS="1")
    yield server
    server.stop()


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=5).json()


def by_id(server: LiveServer, request_id: str) -> dict:
    for _ in range(250):
        found = [r for r in read_log(server.log_file) if r["id"] == request_id]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"request {request_id} is not in the log")


def cli_process(*args: str) -> subprocess.Popen:
    """`python -m service ARGS` with pipes, as a user runs it (stdout block-buffered, as with a pipe)."""
    return subprocess.Popen([sys.executable, "-m", "service", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={k: v for k, v in os.environ.items()
                                                         if k != "PYTHONUNBUFFERED"})


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- help and start-up ----------------------------------------------------------------------


def test_help_lists_the_commands_and_exit_codes():
    result = run("--help")
    assert result.exit_code == 0, result.stderr
    for command in ("generate", "stream", "serve", "download", "models", "convert", "bench"):
        assert command in result.stdout
    table = [line.split(maxsplit=1) for line in result.stdout.split("Exit codes:")[1].splitlines() if line.strip()]
    codes = {int(code): meaning for code, meaning in table}
    assert set(codes) == {client.OK, client.GENERIC, client.USAGE, client.UNREACHABLE, client.REJECTED,
                          client.BUSY, client.SERVER, client.INTERRUPTED}
    assert codes[client.UNREACHABLE] == "server unreachable" and codes[client.INTERRUPTED].startswith("interrupted")
    generate_help = run("generate", "--help").stdout
    for flag in ("--max-new-tokens", "--temperature", "--top-k", "--top-p", "--repetition-penalty", "--seed",
                 "--stop", "--url", "--json"):
        assert flag in generate_help


def test_entry_point_keeps_heavy_imports_out_of_start_up():
    code = ("import sys; sys.argv = ['minivault', '--help']\n"
            "from service.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = ['litestar', 'uvicorn', 'ctransformers', 'numpy', 'huggingface_hub', 'httpx']\n"
            "print('LOADED', [m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("LOADED []")
    module = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert module.returncode == 0 and "Usage: minivault" in module.stdout


# --- generate -------------------------------------------------------------------------------


def test_generate_prints_the_servers_response(live_server):
    params = {"prompt": "Tell me a joke about AI", "max_new_tokens": 12, "temperature": 0, "seed": 3}
    expected = httpx.post(live_server + "/generate", json=params, timeout=30).json()["response"]
    result = run("generate", params["prompt"], "--url", live_server, "--max-new-tokens", "12",
                 "--temperature", "0", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert result.stderr == ""


def test_every_generation_flag_reaches_the_server(long_server):
    result = run("generate", "Once upon a time", "--url", long_server.url, "--json", "--max-new-tokens", "5",
                 "--temperature", "0.5", "--top-k", "7", "--top-p", "0.9", "--repetition-penalty", "1.3",
                 "--seed", "42", "--stop", "zzz", "--stop", "yyy")
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert set(body) == {"id", "response", "model", "finish_reason", "usage", "timings"}
    assert body["usage"]["completion_tokens"] == 5 and body["finish_reason"] == "length"
    record = by_id(long_server, body["id"])
    assert record["params"] == {"max_new_tokens": 5, "temperature": 0.5, "top_k": 7, "top_p": 0.9,
                                "repetition_penalty": 1.3, "seed": 42, "stop": ["zzz", "yyy"]}
    assert record["response"] == body["response"]


def test_generate_reads_the_prompt_from_stdin(long_server):
    result = runner.invoke(app, ["generate", "-", "--url", long_server.url, "--max-new-tokens", "2", "--json"],
                           input="a prompt from stdin")
    assert result.exit_code == 0, result.stderr
    record = by_id(long_server, json.loads(result.stdout)["id"])
    assert record["prompt"] == "a prompt from stdin"


def test_url_comes_from_the_environment(long_server):
    result = run("generate", "Hi", "--max-new-tokens", "2", MINIVAULT_URL=long_server.url)
    assert result.exit_code == 0, result.stderr


# --- stream ---------------------------------------------------------------------------------


def test_stream_prints_the_same_text_as_generate(long_server):
    flags = ["--url", long_server.url, "--max-new-tokens", "24", "--seed", "11", "--temperature", "0.9"]
    whole = run("generate", "The weather today", *flags)
    streamed = run("stream", "The weather today", *flags)
    assert whole.exit_code == 0 and streamed.exit_code == 0, (whole.stderr, streamed.stderr)
    assert streamed.stdout == whole.stdout and len(streamed.stdout) > 1
    assert streamed.stderr == ""


def test_stream_shows_the_first_chunk_while_the_generation_still_runs(long_server):
    wait_idle(long_server.url)
    before = len(read_log(long_server.log_file))
    started = time.monotonic()
    proc = cli_process("stream", "a", "--url", long_server.url, "--max-new-tokens", "600", "--seed", "5")
    first = os.read(proc.stdout.fileno(), 65536)  # returns as soon as the CLI has written anything
    first_at = time.monotonic()
    during = health(long_server.url)
    rest, err = proc.communicate(timeout=60)
    ended_at = time.monotonic()
    assert proc.returncode == 0, err
    assert first, "no output before the end"
    assert during["busy"] == 1  # the worker was still generating when the first text had arrived
    out = (first + rest).decode()
    assert len(out.encode()) > len(first)
    (record,) = new_records(long_server.log_file, before)
    assert record["usage"]["completion_tokens"] == 600 and record["finish_reason"] == "length"
    assert out == record["response"] + "\n"
    print(f"first chunk after {first_at - started:.2f} s, exit after {ended_at - started:.2f} s")


def test_ctrl_c_closes_the_stream_and_frees_the_worker(long_server):
    wait_idle(long_server.url)
    before = len(read_log(long_server.log_file))
    proc = cli_process("stream", "a", "--url", long_server.url, "--max-new-tokens", "1000")
    assert os.read(proc.stdout.fileno(), 65536)
    assert health(long_server.url)["busy"] == 1
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert err.decode() == "minivault: interrupted\n"
    assert wait_idle(long_server.url, timeout=5)["busy"] == 0
    (record,) = new_records(long_server.log_file, before)
    assert record["status"] == "cancelled" and record["usage"]["completion_tokens"] < 1000


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["generate", "hi"], ["stream", "hi"], ["bench", "-n", "1"]])
def test_unreachable_server_is_exit_3_and_one_line(command):
    url = closed_port_url()
    result = run(*command, "--url", url)
    assert result.exit_code == 3
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "cannot reach the server" in line and url in line


def test_bad_url_is_a_usage_error():
    result = run("generate", "hi", "--url", "localhost:8000")
    assert result.exit_code == 2
    assert "must start with http://" in one_line(result.stderr)


@pytest.mark.parametrize("command", ["generate", "stream"])
def test_rejected_request_shows_the_servers_message(long_server, command):
    server_says = httpx.post(long_server.url + "/generate", json={"prompt": "hi", "top_p": 0}).json()["error"]
    result = run(command, "hi", "--url", long_server.url, "--top-p", "0")
    assert result.exit_code == 4
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "request rejected (422)" in line and server_says["message"] in line


def test_context_overflow_message(long_server):
    result = run("generate", "hello " * 50, "--url", long_server.url, "--max-new-tokens", "1000")
    assert result.exit_code == 4
    assert "context" in one_line(result.stderr)


def test_too_many_stop_strings_is_rejected(long_server):
    stops = [x for s in "abcde" for x in ("--stop", s)]
    result = run("generate", "hi", "--url", long_server.url, *stops)
    assert result.exit_code == 4
    assert "stop" in one_line(result.stderr)


def test_full_queue_is_exit_5_with_the_retry_hint(start_server, long_model):
    server = start_server(long_model, MINIVAULT_MAX_QUEUE="0", MINIVAULT_THREADS="1")
    proc = cli_process("stream", "a", "--url", server.url, "--max-new-tokens", "1000")
    try:
        assert os.read(proc.stdout.fileno(), 65536)  # the only worker is now generating
        for command in ("generate", "stream"):
            result = run(command, "hi", "--url", server.url)
            assert result.exit_code == 5, result.stderr
            line = one_line(result.stderr)
            assert "server busy (429)" in line and "queue is full" in line and "retry in 1 s" in line
            assert result.stdout == ""
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


# --- responses no MiniVault server gives on purpose: a real stub server ----------------------


class _Stub(BaseHTTPRequestHandler):
    plan: dict = {}

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status, headers, body, cut = self.plan[self.path]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if cut:  # a chunked body that stops without its last chunk
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def stub() -> Iterator[tuple[str, dict]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Stub.plan
    httpd.shutdown()
    httpd.server_close()
    _Stub.plan.clear()


def _error(message: str) -> bytes:
    return json.dumps({"error": {"type": "x", "message": message, "field": None}}).encode()


@pytest.mark.parametrize("path,command", [("/generate", "generate"), ("/generate/stream", "stream")])
@pytest.mark.parametrize("status,headers,body,code,expect", [
    (503, {"Retry-After": "7"}, _error("the model is loading"), 5,
     "server busy (503): the model is loading; retry in 7 s"),
    (500, {}, _error("generation failed: boom"), 6, "server error (500): generation failed: boom"),
    (502, {"Content-Type": "text/html"}, b"<html>\n<b>Bad gateway</b>\n</html>", 6,
     "server error (502): <html> <b>Bad gateway"),
    (404, {}, _error("no such route"), 4, "request rejected (404): no such route"),
])
def test_status_codes_map_to_exit_codes(stub, path, command, status, headers, body, code, expect):
    url, plan = stub
    plan[path] = (status, headers, body, False)
    result = run(command, "hi", "--url", url)
    assert result.exit_code == code
    assert expect in one_line(result.stderr)
    assert result.stdout == ""


def test_stream_cut_mid_response_keeps_the_text_and_says_so(stub):
    url, plan = stub
    plan["/generate/stream"] = (200, {"Content-Type": "text/plain; charset=utf-8"}, "Once upon".encode(), True)
    result = run("stream", "hi", "--url", url)
    assert result.exit_code == 1
    assert result.stdout == "Once upon\n"
    assert "cut mid-response" in one_line(result.stderr)


# --- serve ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args,env,names", [
    (["--port", "0"], {}, "MINIVAULT_PORT=0"),
    (["--workers", "0"], {}, "MINIVAULT_WORKERS=0"),
    ([], {"MINIVAULT_MAX_QUEUE": "lots"}, "MINIVAULT_MAX_QUEUE='lots'"),
    (["--model", "/nonexistent/model.bin"], {}, "MINIVAULT_MODEL=/nonexistent/model.bin: no such file"),
])
def test_bad_settings_are_exit_2_and_one_line(args, env, names, tmp_path):
    result = run("serve", "--log-file", str(tmp_path / "log.jsonl"), *args, **env)
    assert result.exit_code == 2
    assert names in one_line(result.stderr)


def test_serve_runs_the_app_and_drains_on_sigterm(long_model, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "log.jsonl"
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--model", str(long_model),
         "--workers", "2", "--threads", "1", "--max-queue", "3", "--drain", "20", "--log-file", str(log),
         "--no-log-prompts"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.communicate()
            try:
                h = health(url)
                if h["status"] == "ok" and h["state"] == "loaded":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert h["workers"] == 2  # the flags became the settings
        client = cli_process("stream", "a", "--url", url, "--max-new-tokens", "400")
        assert os.read(client.stdout.fileno(), 65536)
        assert health(url)["busy"] == 1
        server.send_signal(signal.SIGTERM)  # the running stream must still finish
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
        assert server.wait(timeout=30) == 0  # a drained SIGTERM is a clean stop
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()
    (record,) = read_log(log)
    assert record["finish_reason"] == "length" and record["usage"]["completion_tokens"] == 400
    assert "prompt" not in record  # --no-log-prompts reached the settings


# --- models, download, convert --------------------------------------------------------------


def test_models_lists_folders_and_bare_files(tmp_path):
    models = tmp_path / "models"
    (models / "tiny-f16").mkdir(parents=True)
    make_tiny_gpt2(models / "tiny-f16" / "model.bin", ftype="f16")
    make_tiny_gpt2(models / "loose.bin")
    (models / "broken.bin").write_bytes(b"not ggml at all")
    result = run("models", "--models-dir", str(models))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "QUANT", "SIZE", "SHA256", "SOURCE", "PATH"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if not line.startswith("  !")}
    assert set(rows) == {"broken", "loose", "tiny-f16"}
    assert rows["tiny-f16"][1] == "f16" and rows["loose"][1] == "f32" and rows["broken"][1] == "?"
    assert any(line.startswith("  ! ") for line in lines)  # the broken file's problem is shown

    as_json = run("models", "--json", MINIVAULT_MODELS_DIR=str(models))
    entries = {e["name"]: e for e in json.loads(as_json.stdout)}
    assert entries["loose"]["size"] == (models / "loose.bin").stat().st_size
    assert entries["tiny-f16"]["path"] == str(models / "tiny-f16" / "model.bin")


def test_models_with_a_server_shows_each_models_state(tmp_path, start_server):
    models = tmp_path / "models"
    for seed, name in enumerate(("one", "two")):
        (models / name).mkdir(parents=True)
        make_tiny_gpt2(models / name / "model.bin", seed=seed)
    server = start_server(models, MINIVAULT_MODEL="one", MINIVAULT_MODELS_DIR=str(models))  # one is preloaded
    result = run("models", "--models-dir", str(models), "--url", server.url)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "QUANT", "SIZE", "SHA256", "SOURCE", "STATE", "PATH"]
    assert {line.split()[0]: line.split()[-2] for line in lines[1:]} == {"one": "loaded", "two": "unloaded"}
    as_json = run("models", "--json", "--models-dir", str(models), MINIVAULT_URL=server.url)
    assert {e["name"]: e["state"] for e in json.loads(as_json.stdout)} == {"one": "loaded", "two": "unloaded"}
    server.stop()
    down = run("models", "--models-dir", str(models), "--url", server.url)
    assert down.exit_code != 0 and down.stdout == ""
    assert f"cannot ask {server.url}" in down.stderr


def test_models_in_an_empty_dir_says_how_to_get_one(tmp_path):
    result = run("models", "--models-dir", str(tmp_path / "none"))
    assert result.exit_code == 0 and result.stdout == ""
    assert "minivault download" in one_line(result.stderr)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from tests.support.hubserver import serve_hub

    yield from serve_hub(tmp_path, monkeypatch)


def test_download_prints_the_model_path_and_models_lists_it(hub, tmp_path):
    ggml = tmp_path / "src.bin"
    make_tiny_gpt2(ggml, n_ctx=64)
    hub.add_repo("someone/tiny-ggml", {"ggml-model.bin": ggml.read_bytes(), "config.json": '{"model_type": "gpt2"}'})
    models = tmp_path / "models"
    result = run("download", "someone/tiny-ggml", "--models-dir", str(models))
    assert result.exit_code == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == models / "tiny-ggml" / "model.bin" and path.read_bytes() == ggml.read_bytes()
    assert "Installed" in result.stderr  # progress goes to stderr, the path alone to stdout
    listed = json.loads(run("models", "--json", "--models-dir", str(models)).stdout)
    assert [e["name"] for e in listed] == ["tiny-ggml"] and listed[0]["source"].startswith("someone/tiny-ggml@")


def test_download_failure_is_one_line(hub, tmp_path):
    result = run("download", "nobody/missing", "--models-dir", str(tmp_path / "models"))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "nobody/missing" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["download"], ["convert", "src", "out"]])
def test_unknown_quant_is_a_usage_error_naming_the_choices(command):
    result = run(*command, "--quant", "bogus")
    assert result.exit_code == 2
    assert "bogus" in result.stderr and "q4_0" in result.stderr


def test_convert_writes_a_model_folder(tmp_path):
    from tests.support.hubserver import checkpoint_files

    src = tmp_path / "ckpt"
    src.mkdir()
    for name, data in checkpoint_files(tmp=src).items():
        (src / name).write_bytes(data)
    out = tmp_path / "models" / "tiny-q8_0"
    result = run("convert", str(src), str(out), "--quant", "q8_0", "--source-repo", "someone/tiny")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{out / 'model.bin'}\n"
    assert {p.name for p in out.iterdir()} == {"model.bin", "tokenizer.json", "manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quant"] == "q8_0" and manifest["source"]["repo"] == "someone/tiny"
    assert "converted" in one_line(result.stderr)

    again = run("convert", str(src), str(out))
    assert again.exit_code == 1 and "not empty" in one_line(again.stderr)
    missing = run("convert", str(tmp_path / "nope"), str(tmp_path / "x"))
    assert missing.exit_code == 1 and "not a directory" in one_line(missing.stderr)
