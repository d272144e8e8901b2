"""Models without the Hub, and GGUF repos from it: `minivault import`, `demo-model`, `download` of GGUF files.

CLI tests go through Typer's runner (stdout and stderr apart); served models run in a real server
subprocess over HTTP; GGUF repos come from the Hub-shaped server through the real huggingface_hub.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from service.cli.main import app
from service.formats.ggml.format import HParams, is_matrix, read_gpt2, write_gpt2
from service.formats.ggml.tiny import make_tiny_gpt2
from service.formats.manifest import file_sha256, read_manifest
from service.hub.download import HubError, download, list_models
from tests.support.engines import require_llamacpp
from tests.support.gguf_models import (
    gpt2_hparams,
    gpt2_vocab_bytes,
    weights,
    write_gguf,
)
from tests.support.hubserver import checkpoint_files, serve_hub
from tests.support.server import LiveServer

runner = CliRunner()
GREEDY = {"prompt": "Hello, my name is", "max_new_tokens": 12, "temperature": 0}


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def hp() -> HParams:
    return gpt2_hparams(n_layer=1)


@pytest.fixture(scope="module")
def state(hp):
    return weights(hp, seed=5)


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, hp, state) -> dict[str, Path]:
    """A q8_0 GGUF, and a q4_0 one with a q8_0 matrix (a mix)."""
    root = tmp_path_factory.mktemp("ggufs")
    mixed = {"model/h0/mlp/c_proj/w": "q8_0"}
    return {
        "q8_0": write_gguf(root / "gpt2-small.Q8_0.gguf", hp, state, lambda n: "q8_0" if is_matrix(n) else "f32"),
        "mixed": write_gguf(root / "gpt2-small.Q4_0_M.gguf", hp, state,
                            lambda n: mixed.get(n, "q4_0" if is_matrix(n) else "f32")),
    }


@pytest.fixture
def hub(tmp_path, monkeypatch):
    yield from serve_hub(tmp_path, monkeypatch)


def generate(model: Path, log: Path, engine: str = "ctransformers") -> str:
    server = LiveServer(model, log, MINIVAULT_THREADS="1", MINIVAULT_ENGINE=engine)
    try:
        r = httpx.post(server.url + "/generate", json=GREEDY, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["response"]
    finally:
        server.stop()


# --- import -----------------------------------------------------------------------------------


def test_import_gguf_installs_a_verified_model_that_serves_like_the_projects_own_file(ggufs, hp, state, tmp_path):
    models = tmp_path / "models"
    result = run("import", str(ggufs["q8_0"]), "--models-dir", str(models))
    assert result.exit_code == 0, result.stderr
    model = models / "gpt2-small.q8_0" / "model.bin"
    assert result.stdout == f"{model}\n"  # the path, last and alone on stdout
    assert "copied block for block as q8_0" in result.stderr and result.stderr.splitlines()[-1].startswith(
        f"minivault: Installed {model}")
    manifest = read_manifest(model)
    assert manifest.source.kind == "gguf" and manifest.source_sha256 == file_sha256(ggufs["q8_0"])
    assert manifest.sha256 == file_sha256(model) and not list((models / ".partial").iterdir())
    kept = model.parent / "model.gguf"  # the original, for the llama.cpp engine
    assert kept.read_bytes() == ggufs["q8_0"].read_bytes() and "Kept the original as model.gguf" in result.stderr

    # the same weights through the project's own GGML path, with the same tokenizer, over HTTP
    ref = tmp_path / "ref" / "model.bin"
    ref.parent.mkdir()
    write_gpt2(ref, HParams(**{**hp.__dict__, "ftype": "q8_0"}), gpt2_vocab_bytes(), state.items())
    shutil.copy(model.parent / "tokenizer.json", ref.parent / "tokenizer.json")
    text = generate(model, tmp_path / "a.jsonl")
    assert text and text == generate(ref, tmp_path / "b.jsonl")


def test_import_gguf_without_keeping_it_installs_the_ggml_copy_alone(ggufs, tmp_path):
    models = tmp_path / "models"
    result = run("import", str(ggufs["q8_0"]), "--models-dir", str(models), "--no-keep-gguf")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (models / "gpt2-small.q8_0").iterdir()) == ["manifest.json", "model.bin",
                                                                               "tokenizer.json"]


def test_the_kept_gguf_is_what_llamacpp_serves(ggufs, tmp_path):
    require_llamacpp()
    models = tmp_path / "models"
    assert run("import", str(ggufs["q8_0"]), "--models-dir", str(models)).exit_code == 0
    server = LiveServer(models, tmp_path / "log.jsonl", MINIVAULT_MODEL="", MINIVAULT_MODELS_DIR=str(models),
                        MINIVAULT_THREADS="1")
    try:
        (entry,) = httpx.get(server.url + "/health").json()["models"]
        assert entry["engine"] == "llamacpp"  # auto: a GGUF file and llama.cpp installed
        r = httpx.post(server.url + "/generate", json=GREEDY, timeout=60)
        assert r.status_code == 200 and r.json()["response"], r.text
    finally:
        server.stop()


def test_import_of_a_mixed_gguf_reports_the_requantisation(ggufs, tmp_path):
    models = tmp_path / "models"
    result = run("import", str(ggufs["mixed"]), "--models-dir", str(models), "--name", "mix")
    assert result.exit_code == 0, result.stderr
    note = next(line for line in result.stderr.splitlines() if "requantised" in line)
    assert "requantised 1 q8_0 tensors to q4_0" in note and "blk.0.ffn_down.weight" in note
    assert "tensors: 11 f32, 4 q4_0, 1 q8_0" in result.stderr
    manifest = json.loads((models / "mix" / "manifest.json").read_text())
    assert manifest["quant"] == "q4_0" and manifest["source_types"] == {"f32": 11, "q4_0": 4, "q8_0": 1}
    [change] = manifest["requantised"]
    assert change["tensor"] == "blk.0.ffn_down.weight" and change["source_type"] == "q8_0"
    assert 0.01 < change["rms_error"] < 0.2
    assert result.stdout == f"{models / 'mix' / 'model.bin'}\n"


def test_import_ggml_file_and_checkpoint_folder(tmp_path):
    models = tmp_path / "models"
    src = tmp_path / "copied" / "my-gpt2.bin"
    src.parent.mkdir()
    make_tiny_gpt2(src)
    result = run("import", str(src), "--models-dir", str(models))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{models / 'my-gpt2' / 'model.bin'}\n"
    assert (models / "my-gpt2" / "model.bin").read_bytes() == src.read_bytes()
    assert read_manifest(models / "my-gpt2" / "model.bin").source.kind == "local"

    ckpt = tmp_path / "Tiny-GPT2"
    ckpt.mkdir()
    for name, data in checkpoint_files(tmp=ckpt).items():
        (ckpt / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    result = run("import", str(ckpt), "--quant", "q8_0", "--models-dir", str(models))
    assert result.exit_code == 0, result.stderr
    model = models / "tiny-gpt2-q8_0" / "model.bin"
    assert result.stdout == f"{model}\n" and read_gpt2(model).hparams.ftype == "q8_0"
    assert (model.parent / "tokenizer.json").is_file()
    assert sorted(e.name for e in list_models(models)) == ["my-gpt2", "tiny-gpt2-q8_0"]

    again = run("import", str(src), "--models-dir", str(models))  # an installed name is kept
    assert again.exit_code == 1 and again.stdout == "" and "pass --force" in again.stderr
    assert run("import", str(src), "--models-dir", str(models), "--force").exit_code == 0


@pytest.mark.parametrize(("content", "expect"), [
    (b"PK\x03\x04 a zip, say", "is not a model MiniVault can import (it starts with bytes 504b0304)"),
    (None, "no such file or folder"),
])
def test_import_refuses_other_things_in_one_line(content, expect, tmp_path):
    path = tmp_path / "thing.bin"
    if content is not None:
        path.write_bytes(content)
    result = run("import", str(path), "--models-dir", str(tmp_path / "models"))
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert expect in line and line.startswith("minivault: ")
    assert list_models(tmp_path / "models") == []


# --- demo model and the no-Hub messages -------------------------------------------------------


def test_demo_model_has_gpt2s_vocabulary_and_serves(tmp_path):
    models = tmp_path / "models"
    result = run("demo-model", "--models-dir", str(models))
    assert result.exit_code == 0, result.stderr
    model = models / "demo-random-gpt2" / "model.bin"
    assert result.stdout == f"{model}\n" and "RANDOM WEIGHTS" in result.stderr
    assert read_gpt2(model).vocab == gpt2_vocab_bytes()
    server = LiveServer(model, tmp_path / "log.jsonl", MINIVAULT_THREADS="1")
    try:
        tokens = httpx.post(server.url + "/tokenize", json={"text": "Hello, world!"}, timeout=10).json()
        assert tokens["tokens"] == [15496, 11, 995, 0]  # GPT-2's ids
        r = httpx.post(server.url + "/generate", json={"prompt": "Hello", "max_new_tokens": 5}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    finally:
        server.stop()


def test_the_run_command_without_the_hub_ends_naming_both_routes(tmp_path, monkeypatch):
    # the README's `minivault download && minivault serve`, on a machine that cannot reach the Hub
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    result = run("download")
    assert result.exit_code == 1 and result.stdout == ""
    last = result.stderr.splitlines()[-1]
    assert f"can't reach the Hub at {dead}" in last
    assert "`minivault import PATH`" in last and "`minivault demo-model`" in last
    served = run("serve", "--log-file", str(tmp_path / "log.jsonl"))
    assert served.exit_code == 2
    [line] = served.stderr.splitlines()
    assert "no model in" in line and "`minivault import PATH`" in line and "`minivault demo-model`" in line


# --- download of GGUF repos -------------------------------------------------------------------


def test_download_gguf_repo_picks_the_file_by_quant_or_lists_them(hub, ggufs, tmp_path):
    models = tmp_path / "models"
    hub.add_repo("someone/gpt2-GGUF", {"gpt2.Q8_0.gguf": ggufs["q8_0"], "gpt2.Q4_0_M.gguf": ggufs["mixed"],
                                       "README.md": "# GGUF"})
    with pytest.raises(HubError) as err:
        download("someone/gpt2-GGUF", models_dir=models)
    message = str(err.value)
    assert "has 2 GGUF files: gpt2.Q4_0_M.gguf, gpt2.Q8_0.gguf; choose one with --quant" in message
    assert not hub.downloads("gpt2.Q8_0.gguf") and "\n" not in message

    result = run("download", "someone/gpt2-GGUF", "--quant", "Q8_0", "--models-dir", str(models))
    assert result.exit_code == 0, result.stderr
    model = models / "gpt2-gguf-q8_0" / "model.bin"
    assert result.stdout == f"{model}\n"
    manifest = read_manifest(model)
    assert manifest.source.repo == "someone/gpt2-GGUF" and manifest.source.kind == "gguf"
    assert manifest.source_sha256 == file_sha256(ggufs["q8_0"]) and manifest.quant == "q8_0"
    assert not hub.downloads("gpt2.Q4_0_M.gguf")

    listed = run("download", "someone/gpt2-GGUF", "--models-dir", str(models))
    assert listed.exit_code == 1 and "gpt2.Q4_0_M.gguf, gpt2.Q8_0.gguf" in listed.stderr
    missing = run("download", "someone/gpt2-GGUF", "--quant", "Q5_K_M", "--models-dir", str(models))
    assert missing.exit_code == 1 and "no GGUF file for --quant Q5_K_M" in missing.stderr


def test_download_of_a_gguf_repo_with_one_file_reports_a_mix(hub, ggufs, tmp_path, capsys):
    hub.add_repo("someone/one-gguf", {"model-Q4_0_M.gguf": ggufs["mixed"]})
    model = download("someone/one-gguf", models_dir=tmp_path / "models")
    assert model == tmp_path / "models" / "one-gguf-q4_0_m" / "model.bin"
    assert "requantised 1 q8_0 tensors to q4_0" in capsys.readouterr().err


# --- convert --quant q*_k -----------------------------------------------------------------------


def test_convert_writes_k_quants_with_ggmls_quantiser_and_they_load(tmp_path):
    from safetensors.numpy import load_file

    from service.formats.ggml import quant
    from service.formats.ggml.format import read_tensor
    from tests.support.gpt2_reference import ggml_greedy

    src = tmp_path / "ckpt"
    src.mkdir()
    for name, data in checkpoint_files(tmp=src, n_embd=256, n_layer=1).items():
        (src / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    weights_in = load_file(str(src / "model.safetensors"))
    for kind in ("q6_k", "q4_k"):
        result = run("convert", str(src), str(tmp_path / kind), "--quant", kind)
        assert result.exit_code == 0, result.stderr
        model = tmp_path / kind / "model.bin"
        assert result.stdout == f"{model}\n"
        ggml = read_gpt2(model)
        assert ggml.hparams.ftype == kind and ggml.tensors["model/h0/mlp/c_fc/w"].ggml_type == kind
        with open(model, "rb") as f:
            info = ggml.tensors["model/h0/mlp/c_fc/w"]
            f.seek(info.offset)
            assert f.read(info.nbytes) == quant.quantize(weights_in["h.0.mlp.c_fc.weight"].T, kind)
        assert read_tensor(model, ggml.tensors["model/h0/ln_1/b"]).dtype == "float32"
        assert len(ggml_greedy(model, [1, 2, 3], 4)) == 4  # ctransformers loads and runs it
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    for name, data in checkpoint_files(tmp=narrow).items():
        (narrow / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    refused = run("convert", str(narrow), str(tmp_path / "n"), "--quant", "q4_k")
    assert refused.exit_code == 1 and "q4_k needs n_embd to be a multiple of 256, got 32" in refused.stderr
