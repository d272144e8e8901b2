"""The `minivault` commands that manage the models dir: download, models, convert.

They register on the app of service/cli/options.py when service/cli/main.py imports this module; huggingface_hub,
numpy and the converter are imported inside the commands, so `minivault --help` stays fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Literal

import typer

from service.cli.options import Text, app, fail, opt, reporting, say
from service.errors import one_line

Quant = Literal["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k"]
ModelsDir = Annotated[Path, opt("The models dir.", envvar="MINIVAULT_MODELS_DIR")]

REPO_HELP = "Hugging Face repo id: a GPT-2 checkpoint, GPT-2 GGUF files or a GGML gpt2 repo."
SRC_HELP = "A GPT-2 Hugging Face checkpoint folder: config.json, model.safetensors, a tokenizer."


@contextmanager
def _model_errors(*errors: type[BaseException]) -> Iterator[None]:
    """ValueError, OSError and the given errors (e.g. HubError) from the models code: one line, exit 1."""
    from service.cli.http import GENERIC

    with reporting():
        try:
            yield
        except (ValueError, OSError, *errors) as exc:
            raise fail(one_line(exc), GENERIC) from None


def _check_quant(value: str | None) -> str | None:
    """A usage error (exit 2) for a --quant that is neither a GGML type nor a GGUF file's quant name."""
    import re

    if value is not None and not re.fullmatch(r"(?i)i?q\d(_[a-z0-9]+)*|bf16|f16|f32", value):
        raise typer.BadParameter(f"{value!r} is not a quant: use f32, f16, q8_0, q5_1, q5_0, q4_1, q4_0, q6_k, "
                                 "q5_k, q4_k, q3_k, q2_k, or a GGUF file's quant such as Q4_K_M")
    return value


@app.command()
def download(
    repo: Annotated[str, typer.Argument(metavar="REPO", help=REPO_HELP)] = "distilgpt2",
    quant: Annotated[Text, opt("Quantisation when a checkpoint is converted (default q4_0: f32, f16, q8_0, q5_1, "
                               "q5_0, q4_1, q4_0, q6_k..q2_k); for a GGUF repo, the file's quant (e.g. Q4_K_M).",
                               callback=_check_quant)] = None,
    revision: Annotated[Text, opt("Branch, tag or commit (default main).")] = None,
    force: Annotated[bool, opt("Download and install again even if already installed.", "--force")] = False,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Download a model from the Hugging Face Hub.

    A GPT-2 checkpoint is converted to GGML at --quant; a GGUF file (chosen by --quant when the
    repo has several) is converted to GGML; the model lands in MODELS_DIR/<name>/ and its path
    is printed.
    """
    from service.hub import download as hub

    with _model_errors(hub.HubError):
        path = hub.download(repo, models_dir=models_dir, quant=quant, revision=revision, force=force)
        print(path, flush=True)


@app.command()
def models(
    models_dir: ModelsDir = Path("models"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
    url: Annotated[Text, opt("Also show each model's state (unloaded, loading, loaded, error) on the server "
                             "at this URL.", envvar="MINIVAULT_URL")] = None,
) -> None:
    """List the models installed in the models dir (with --url, each one's state on that server)."""
    from service.hub import download as hub

    with _model_errors(hub.HubError):
        entries = hub.list_models(models_dir)
        states = _server_states(url) if url else None
        if as_json:
            import msgspec

            rows = msgspec.to_builtins(entries)
            if states is not None:
                rows = [row | {"state": states.get(row["name"], "not served")} for row in rows]
            print(msgspec.json.encode(rows).decode(), flush=True)
            return
        if not entries:
            say(f"no models in {models_dir}; get one with `minivault download`, `minivault import PATH` "
                "or `minivault demo-model` (random weights)")
            return
        print(_models_table(entries, states), flush=True)


def _server_states(url: str) -> dict[str, str]:
    """Model id -> state, from the server's /health (a ClientError, exit 1, if it cannot be asked)."""
    from service.cli.http import Client, ClientError

    try:
        with Client(url, timeout=10) as client:
            health = client.health()
    except ClientError as exc:
        raise fail(f"cannot ask {url} for its models' states: {exc}", exc.code) from None
    return {m["id"]: m["state"] for m in health.get("models", [])}


def _models_table(entries, states: dict[str, str] | None = None) -> str:
    """A plain-text table of ModelEntry rows, a problem (if any) under its model."""
    from service.hub.store import human_size

    head = ("NAME", "QUANT", "SIZE", "SHA256", "SOURCE") + (("STATE",) if states is not None else ()) + ("PATH",)
    rows = [head]
    rows += [(e.name, e.quant, human_size(e.size), e.sha256[:12], e.source or "-")
             + ((states.get(e.name, "not served"),) if states is not None else ()) + (e.path,) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        problem = getattr(entries[i - 1], "problem", None) if i else None
        if problem:
            lines.append(f"  ! {problem}")
    return "\n".join(line.rstrip() for line in lines)


@app.command()
def convert(
    src_dir: Annotated[Path, typer.Argument(metavar="SRC_DIR", help=SRC_HELP)],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder for model.bin, tokenizer.json, manifest.json.")],
    quant: Annotated[Quant, opt("How to store the weight matrices.")] = "q4_0",
    name: Annotated[Text, opt("Model name for the manifest (default: OUT's name).")] = None,
    source_repo: Annotated[Text, opt("Where the checkpoint came from, for the manifest.")] = None,
    revision: Annotated[Text, opt("The checkpoint's revision, for the manifest.")] = None,
    overwrite: Annotated[bool, opt("Replace a model already in OUT.", "--overwrite")] = False,
) -> None:
    """Convert a local GPT-2 checkpoint to GGML.

    Writes OUT/model.bin, tokenizer.json and manifest.json; prints the model path.
    """
    with _model_errors():
        from service.formats.convert import convert_checkpoint
        from service.hub.store import human_size

        manifest = convert_checkpoint(src_dir, out, quant, name=name, source_repo=source_repo, revision=revision,
                                      overwrite=overwrite)
        say(f"converted {src_dir} to {manifest.quant}: {manifest.parameters:,} parameters, "
            f"{human_size(manifest.size)}, sha256 {manifest.sha256[:16]}")
        print(out / manifest.file, flush=True)
