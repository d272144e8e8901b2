"""`minivault import` and `minivault demo-model`: models for machines without the Hub.

Registered on the app of service/cli/options.py when service/cli/main.py imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli.model_commands import ModelsDir, Quant, _model_errors
from service.cli.options import Text, app, opt, say

PATH_HELP = "A GGML gpt2 .bin file, a GPT-2 .gguf file, or a Hugging Face GPT-2 checkpoint folder."


@app.command(name="import")
def import_(
    path: Annotated[Path, typer.Argument(metavar="PATH", help=PATH_HELP)],
    name: Annotated[Text, opt("Folder name in the models dir (default: from PATH).")] = None,
    quant: Annotated[Quant, opt("Quantisation when a checkpoint folder is converted.")] = "q4_0",
    force: Annotated[bool, opt("Replace a model of the same name.", "--force")] = False,
    keep_gguf: Annotated[bool, opt("Keep a GGUF file as model.gguf beside its GGML copy (for llama.cpp).",
                                   "--keep-gguf/--no-keep-gguf")] = True,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Install a local model file or checkpoint into the models dir.

    A GGUF file is converted to GGML (blocks copied; a mixed-type file has its minority tensors
    requantised, which is reported) and kept as model.gguf for the llama.cpp engine; a GGML file is
    copied; a checkpoint is converted at --quant.
    Prints the installed model file's path.
    """
    with _model_errors():
        from service.hub.importer import import_model

        model = import_model(path, models_dir=models_dir, name=name, quant=quant, force=force, keep_gguf=keep_gguf,
                             say=lambda m: say(m))
        print(model, flush=True)


@app.command(name="demo-model")
def demo_model(
    force: Annotated[bool, opt("Write it again if it is there.", "--force")] = False,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Create a RANDOM-WEIGHT demo model with GPT-2's real vocabulary (no download).

    It writes random text, but the whole service works with it. Prints the model file's path.
    """
    with _model_errors():
        from service.hub.demo import install_demo

        print(install_demo(models_dir, force=force, say=lambda m: say(m)), flush=True)
