"""`minivault download` / `minivault models` through the real huggingface_hub code path.

A Hub-shaped server on 127.0.0.1 (tests/hubserver.py) serves tiny repos made here;
HF_ENDPOINT and HF_HOME point huggingface_hub at it and at a temp cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from tokenizers import Tokenizer

from service.formats.ggml.format import read_gpt2
from service.formats.ggml.tiny import make_tiny_gpt2
from service.formats.manifest import read_manifest
from service.hub.download import HubError, download, list_models
from tests.support.hubserver import checkpoint_files, serve_hub

ROOT = Path(__file__).resolve().parents[2]
HF_MAJOR = int(huggingface_hub.__version__.split(".")[0])


@pytest.fixture
def hub(tmp_path, monkeypatch):
    yield from serve_hub(tmp_path, monkeypatch)


@pytest.fixture
def models(tmp_path) -> Path:
    return tmp_path / "models"


@pytest.fixture(scope="module")
def ggml_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ggml") / "tiny.bin"
    make_tiny_gpt2(path, n_ctx=64)
    return path.read_bytes()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _generate(model: Path) -> str:
    from ctransformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(str(model), model_type="gpt2")
    return llm("Hello", max_new_tokens=3, seed=1)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- tiny GPT-2 checkpoint in Hugging Face layout ---------------------------------------------


# --- GGML repos -------------------------------------------------------------------------------


def test_ggml_repo_is_installed_as_is_and_loads(hub, models, ggml_bytes, capsys):
    sha = hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes, "README.md": "# gpt-2 ggml",
                                              "config.json": '{"model_type": "gpt2"}'})
    model = download("marella/gpt-2-ggml", models_dir=models)

    assert model == models / "gpt-2-ggml" / "model.bin"
    assert model.read_bytes() == ggml_bytes
    manifest = read_manifest(model)
    assert (manifest.source.repo, manifest.source.revision, manifest.source.kind) == ("marella/gpt-2-ggml", sha,
                                                                                      "ggml")
    assert manifest.quant == "f32" and manifest.size == len(ggml_bytes)
    assert manifest.sha256 == hashlib.sha256(ggml_bytes).hexdigest()
    assert not (model.parent / "tokenizer.json").exists()  # the repo has none
    umask = os.umask(0)
    os.umask(umask)
    assert model.parent.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by a service running as another user
    assert sorted(p.name for p in models.iterdir()) == [".partial", "gpt-2-ggml"]
    assert list((models / ".partial").iterdir()) == []
    assert hub.downloads("README.md") == 0  # only what is needed is fetched
    err = capsys.readouterr().err
    assert "GGML gpt2, f32" in err and "Installed" in err
    assert isinstance(_generate(model), str)


def test_ggml_repo_tokenizer_is_built_from_vocab_and_merges(hub, models, ggml_bytes, tmp_path):
    files = checkpoint_files(tmp_path)
    hub.add_repo("someone/gpt2-ggml", {"ggml-model.bin": ggml_bytes, "vocab.json": files["vocab.json"],
                                       "merges.txt": files["merges.txt"]})
    model = download("someone/gpt2-ggml", models_dir=models)
    assert read_manifest(model).tokenizer == "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(model.parent / "tokenizer.json"))
    assert tokenizer.decode(tokenizer.encode(" the theme").ids) == " the theme"
    assert tokenizer.token_to_id("Ġthe") == json.loads(files["vocab.json"])["Ġthe"]


def test_ggml_candidates_are_verified_after_download(hub, models, ggml_bytes):
    hub.add_repo("someone/Mixed-GGML", {
        "ggml-model.bin": b"not ggml at all" * 100,  # ranked first by name, but not GGML
        "pytorch_model.bin": b"PK pickle",  # never a candidate
        "weights.bin": ggml_bytes,
    })
    model = download("someone/Mixed-GGML", models_dir=models)
    assert model == models / "Mixed-GGML" / "model.bin"
    assert model.read_bytes() == ggml_bytes
    assert hub.downloads("ggml-model.bin") == 1 and hub.downloads("pytorch_model.bin") == 0


def test_ggml_repo_where_no_bin_is_ggml_is_refused(hub, models):
    hub.add_repo("someone/fake-ggml", {"ggml-model.bin": b"\x00" * 64})
    with pytest.raises(HubError) as err:
        download("someone/fake-ggml", models_dir=models)
    message = str(err.value)
    assert "ggml-model.bin" in message and "not a GGML file" in message and "\n" not in message
    assert list_models(models) == []


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expect"),
    [
        ({"config.json": '{"model_type": "gpt2"}', "pytorch_model.bin": b"PK pickle"},
         ["pytorch_model.bin", "pickle", "model.safetensors"]),
        ({"config.json": '{"model_type": "llama"}', "model.safetensors": b"{}"},
         ["'llama'", "not GPT-2"]),
        ({"README.md": "# nothing"}, ["no weight files", "README.md"]),
        ({"config.json": '{"model_type": "llama"}', "model.gguf": b"GGUF"}, ["model.gguf", "'llama'", "not GPT-2"]),
        ({"config.json": '{"model_type": "gpt2"}', "weights.safetensors": b"{}"}, ["weights.safetensors",
                                                                                 "must be model.safetensors"]),
        ({"model.safetensors": b"{}"}, ["needs a config.json"]),
    ],
    ids=["pickle-only", "wrong-model-type", "no-weights", "gguf-not-gpt2", "renamed-weights", "no-config"],
)
def test_unusable_repos_are_refused_before_big_downloads(hub, models, files, expect):
    hub.add_repo("someone/unusable", files)
    with pytest.raises(HubError) as err:
        download("someone/unusable", models_dir=models)
    message = str(err.value)
    assert "\n" not in message and "MiniVault accepts" in message
    for part in expect:
        assert part in message
    assert not any(hub.downloads(name) for name in files if name != "config.json")
    assert list_models(models) == []


# --- converted checkpoints --------------------------------------------------------------------


def test_safetensors_checkpoint_is_converted_and_loads(hub, models, tmp_path, capsys):
    files = checkpoint_files(tmp_path)
    sha = hub.add_repo("distilgpt2", files)
    model = download(models_dir=models)  # the default repo and quant

    assert model == models / "distilgpt2-q4_0" / "model.bin"
    manifest = read_manifest(model)
    assert (manifest.source.repo, manifest.source.revision) == ("distilgpt2", sha)
    assert manifest.quant == "q4_0" and manifest.sha256 == _sha256(model)
    assert read_gpt2(model).hparams.ftype == "q4_0"
    assert (model.parent / "tokenizer.json").is_file()
    assert hub.downloads("pytorch_model.bin") == 0 and hub.downloads("README.md") == 0
    assert "Converting to GGML q4_0" in capsys.readouterr().err
    assert isinstance(_generate(model), str)


def test_sharded_checkpoint_is_fetched_whole(hub, models, tmp_path):
    files = checkpoint_files(tmp_path, shards=2)
    hub.add_repo("someone/sharded-gpt2", files)
    model = download("someone/sharded-gpt2", models_dir=models, quant="q8_0")
    assert read_gpt2(model).hparams.ftype == "q8_0"
    assert hub.downloads("model-00001-of-00002.safetensors") == hub.downloads("model-00002-of-00002.safetensors") == 1


def test_repo_names_are_lowercased_and_quant_suffixed(hub, models, tmp_path):
    hub.add_repo("Org/Tiny-GPT2", checkpoint_files(tmp_path))
    model = download("Org/Tiny-GPT2", models_dir=models, quant="f16")
    assert model == models / "tiny-gpt2-f16" / "model.bin"
    assert read_gpt2(model).hparams.ftype == "f16"


# --- skipping work ----------------------------------------------------------------------------


def test_second_download_is_skipped(hub, models, ggml_bytes, capsys):
    sha = hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    model = download("marella/gpt-2-ggml", models_dir=models)
    mtime = model.stat().st_mtime_ns
    hub.requests.clear()
    capsys.readouterr()

    assert download("marella/gpt-2-ggml", models_dir=models) == model
    assert "already installed" in capsys.readouterr().err
    assert model.stat().st_mtime_ns == mtime
    assert [m for m, _, _ in hub.requests] == ["GET"]  # one look at the revision, no file traffic

    hub.requests.clear()
    assert download("marella/gpt-2-ggml", models_dir=models, revision=sha[:10], quant="f32") == model
    assert hub.requests == []  # a pinned commit that is installed needs no network at all


def test_ggml_repo_with_several_quants(hub, models, tmp_path, capsys):
    for ftype in ("f32", "f16"):
        make_tiny_gpt2(tmp_path / f"{ftype}.bin", n_ctx=64, ftype=ftype)
    hub.add_repo("someone/gpt2-ggml", {"ggml-model-f32.bin": tmp_path / "f32.bin",
                                       "ggml-model-f16.bin": tmp_path / "f16.bin"})
    model = download("someone/gpt2-ggml", models_dir=models, quant="f16")
    assert model == models / "gpt2-ggml" / "model.bin"
    assert read_manifest(model).quant == "f16" and hub.downloads("ggml-model-f32.bin") == 0

    download("someone/gpt2-ggml", models_dir=models, quant="f32")  # the repo names a file for it
    assert read_manifest(model).quant == "f32"
    capsys.readouterr()
    download("someone/gpt2-ggml", models_dir=models)  # no q4_0 file: what is installed will do
    assert "already installed" in capsys.readouterr().err and read_manifest(model).quant == "f32"


def test_changed_or_corrupt_install_is_replaced(hub, models, ggml_bytes, tmp_path):
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    model = download("marella/gpt-2-ggml", models_dir=models)

    make_tiny_gpt2(tmp_path / "v2.bin", n_ctx=64, seed=7)
    sha2 = hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": tmp_path / "v2.bin"})
    assert download("marella/gpt-2-ggml", models_dir=models) == model
    assert read_manifest(model).source.revision == sha2
    assert model.read_bytes() == (tmp_path / "v2.bin").read_bytes()

    with open(model, "r+b") as f:  # same size, different bytes: only the sha256 catches it
        f.seek(100)
        f.write(b"\xff\xff")
    download("marella/gpt-2-ggml", models_dir=models)
    assert model.read_bytes() == (tmp_path / "v2.bin").read_bytes()
    assert list((models / ".partial").iterdir()) == []


def test_force_reinstalls_and_another_repos_model_is_not_overwritten(hub, models, ggml_bytes, capsys):
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    hub.add_repo("other/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    model = download("marella/gpt-2-ggml", models_dir=models)
    capsys.readouterr()
    download("marella/gpt-2-ggml", models_dir=models, force=True)
    assert "Installed" in capsys.readouterr().err

    with pytest.raises(HubError, match="already holds a model from marella/gpt-2-ggml; pass --force"):
        download("other/gpt-2-ggml", models_dir=models)
    download("other/gpt-2-ggml", models_dir=models, force=True)
    assert read_manifest(model).source.repo == "other/gpt-2-ggml"


# --- the Hub saying no ------------------------------------------------------------------------


def test_unknown_repo_bad_revision_and_bad_quant(hub, models, ggml_bytes):
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    with pytest.raises(HubError, match=r"nobody/nothing was not found on http://127\.0\.0\.1"):
        download("nobody/nothing", models_dir=models)
    with pytest.raises(HubError, match="has no revision 'v9.9'"):
        download("marella/gpt-2-ggml", models_dir=models, revision="v9.9")
    with pytest.raises(HubError, match="unknown quant 'bogus'"):
        download("marella/gpt-2-ggml", models_dir=models, quant="bogus")
    with pytest.raises(HubError, match="invalid repo id"):
        download("not a/valid/repo", models_dir=models)
    assert not models.exists() or list_models(models) == []


def test_gated_repo_needs_a_token(hub, models, ggml_bytes, monkeypatch):
    hub.add_repo("corp/gated-gpt2", {"ggml-model.bin": ggml_bytes}, gated=True, tokens=("hf_good",))
    with pytest.raises(HubError) as err:
        download("corp/gated-gpt2", models_dir=models)
    assert "gated" in str(err.value) and "HF_TOKEN" in str(err.value) and "\n" not in str(err.value)
    assert list_models(models) == []

    hub.strict_tokens = True
    hub.tokens.add("hf_other_account")
    monkeypatch.setenv("HF_TOKEN", "hf_other_account")
    with pytest.raises(HubError, match="token in HF_TOKEN has no access"):
        download("corp/gated-gpt2", models_dir=models)

    monkeypatch.setenv("HF_TOKEN", "hf_expired")
    with pytest.raises(HubError, match=r"refused access to corp/gated-gpt2 \(HTTP 401\); check the token"):
        download("corp/gated-gpt2", models_dir=models)

    monkeypatch.setenv("HF_TOKEN", "hf_good")
    model = download("corp/gated-gpt2", models_dir=models)
    assert model.read_bytes() == ggml_bytes
    heads = [(path, auth) for method, path, auth in hub.requests if method == "HEAD"]
    assert heads[-1][0].endswith("/ggml-model.bin") and heads[-1][1] == "Bearer hf_good"


def test_revision_is_honoured(hub, models, ggml_bytes, tmp_path):
    first = hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    make_tiny_gpt2(tmp_path / "v2.bin", n_ctx=64, seed=3)
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": tmp_path / "v2.bin"})
    hub.repos["marella/gpt-2-ggml"].refs["v1.0"] = first

    model = download("marella/gpt-2-ggml", models_dir=models, revision="v1.0")
    assert model.read_bytes() == ggml_bytes and read_manifest(model).source.revision == first


# --- offline and unreachable ------------------------------------------------------------------


def test_offline_mode_uses_the_prefilled_cache(hub, models, tmp_path, ggml_bytes, monkeypatch):
    files = checkpoint_files(tmp_path)
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes, "vocab.json": files["vocab.json"],
                                        "merges.txt": files["merges.txt"]})
    hub.add_repo("distilgpt2", files)
    download("marella/gpt-2-ggml", models_dir=models)
    download("distilgpt2", models_dir=models)
    hub.requests.clear()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    elsewhere = tmp_path / "models-2"
    model = download("marella/gpt-2-ggml", models_dir=elsewhere)
    assert model.read_bytes() == ggml_bytes
    assert (model.parent / "tokenizer.json").read_bytes() == (models / "gpt-2-ggml" / "tokenizer.json").read_bytes()
    converted = download("distilgpt2", models_dir=elsewhere)
    assert converted.read_bytes() == (models / "distilgpt2-q4_0" / "model.bin").read_bytes()
    assert hub.requests == []

    with pytest.raises(HubError) as err:
        download("someone/never-fetched", models_dir=elsewhere)
    assert "HF_HUB_OFFLINE is set" in str(err.value) and "not in the local cache" in str(err.value)


def test_unreachable_hub_is_one_clear_line(hub, models, ggml_bytes, monkeypatch):
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    download("marella/gpt-2-ggml", models_dir=models)

    dead = _closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", dead)
    with pytest.raises(HubError) as err:
        download("someone/other-model", models_dir=models)
    message = str(err.value)
    assert message.startswith(f"can't reach the Hub at {dead}") and "not in the local cache" in message
    assert "\n" not in message

    # What the cache already holds still installs, and an installed model is kept.
    model = download("marella/gpt-2-ggml", models_dir=models / "again")
    assert model.read_bytes() == ggml_bytes
    assert download("marella/gpt-2-ggml", models_dir=models) == models / "gpt-2-ggml" / "model.bin"


def test_unreachable_hub_with_part_of_a_repo_cached(hub, models, monkeypatch):
    hub.add_repo("someone/unusable", {"config.json": '{"model_type": "gpt2"}', "pytorch_model.bin": b"PK"})
    with pytest.raises(HubError, match="pickle"):
        download("someone/unusable", models_dir=models)  # leaves config.json in the cache
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    with pytest.raises(HubError) as err:
        download("someone/unusable", models_dir=models)
    assert "the local cache holds only part of someone/unusable@main (config.json)" in str(err.value)


# --- interrupted downloads --------------------------------------------------------------------


def test_connection_dropped_mid_file_leaves_nothing_and_rerun_succeeds(hub, models, ggml_bytes):
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    hub.drop("ggml-model.bin", after=len(ggml_bytes) // 2)  # cut mid-file ...
    hub.fail("ggml-model.bin", status=500)  # ... and the resume attempt fails too
    with pytest.raises(HubError) as err:
        download("marella/gpt-2-ggml", models_dir=models)
    assert "marella/gpt-2-ggml@main" in str(err.value) and "\n" not in str(err.value)
    assert not (models / "gpt-2-ggml").exists()
    assert list((models / ".partial").iterdir()) == []
    assert list_models(models) == []

    hub.faults.clear()  # huggingface_hub 0.x gives up at the cut, before asking again
    model = download("marella/gpt-2-ggml", models_dir=models)
    assert model.read_bytes() == ggml_bytes


@pytest.mark.skipif(HF_MAJOR < 1, reason="huggingface_hub 0.x does not resume a body cut off mid-way")
def test_dropped_connection_is_resumed(hub, models, ggml_bytes):
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    hub.drop("ggml-model.bin", after=len(ggml_bytes) // 3)
    model = download("marella/gpt-2-ggml", models_dir=models)
    assert model.read_bytes() == ggml_bytes
    assert hub.downloads("ggml-model.bin") == 2


def test_killed_download_leaves_no_model_and_rerun_cleans_up(hub, models, ggml_bytes):
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    hub.stall("ggml-model.bin", after=len(ggml_bytes) // 2)
    code = f"from service.hub.download import download; download('marella/gpt-2-ggml', models_dir={str(models)!r})"
    log = models.parent / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        assert hub.stalled.wait(30), log.read_text()
        assert len(list((models / ".partial").iterdir())) == 1  # its work folder
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    assert not (models / "gpt-2-ggml").exists()
    assert list_models(models) == []
    model = download("marella/gpt-2-ggml", models_dir=models)
    assert model.read_bytes() == ggml_bytes
    assert list((models / ".partial").iterdir()) == []  # the dead process's folder is swept


def test_work_folders_of_dead_processes_are_swept(hub, models, ggml_bytes):
    hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    partial = models / ".partial"
    left = [f"gpt-2-ggml.{dead}.0123abcd", f".gpt-2-ggml.{dead}.0123abcd.89abcdef.partial",
            f"gpt-2-ggml.{os.getpid()}.fedc4321"]  # the last belongs to a live process
    for name in left:
        (partial / name).mkdir(parents=True)
        make_tiny_gpt2(partial / name / "model.bin", n_ctx=64)
    download("marella/gpt-2-ggml", models_dir=models)
    assert [p.name for p in partial.iterdir()] == [left[2]]


# --- minivault models -------------------------------------------------------------------------


def test_list_models(hub, models, ggml_bytes, tmp_path):
    sha = hub.add_repo("marella/gpt-2-ggml", {"ggml-model.bin": ggml_bytes})
    download("marella/gpt-2-ggml", models_dir=models)
    make_tiny_gpt2(models / "loose.bin", n_ctx=64, ftype="f16")
    (models / "junk.bin").write_bytes(b"nope")

    entries = {e.name: e for e in list_models(models)}
    assert sorted(entries) == ["gpt-2-ggml", "junk", "loose"]
    managed = entries["gpt-2-ggml"]
    assert managed.path == str(models / "gpt-2-ggml" / "model.bin")
    assert (managed.quant, managed.size, managed.problem) == ("f32", len(ggml_bytes), None)
    assert managed.sha256 == hashlib.sha256(ggml_bytes).hexdigest()
    assert managed.source == f"marella/gpt-2-ggml@{sha[:7]} (ggml)"
    loose = entries["loose"]
    assert (loose.quant, loose.source, loose.sha256) == ("f16", None, _sha256(models / "loose.bin"))
    assert entries["junk"].quant == "?" and "GGML" in entries["junk"].problem
    assert list_models(tmp_path / "missing") == []
