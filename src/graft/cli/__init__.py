"""The `graft` command line: a thin typed layer over the Python API.

One module per command group (train, bundle: eval/predict/info, surgery, keras, data, serve: export/serve, rounds);
this one makes the app, registers their commands in the order `graft --help` lists them, and turns every user
mistake into one line on stderr and exit code 2, never a traceback. `train` and the `rounds` commands take their
training options generated from `TrainConfig`'s fields (graft.cli.options).
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer
from rich.markup import escape

from graft._version import __version__
from graft.cli import help_format
from graft.cli.bundle import eval_command, info_command, predict_command, schema_command
from graft.cli.data import data_app
from graft.cli.keras import import_keras_command
from graft.cli.models import models_command
from graft.cli.rounds import rounds_app
from graft.cli.serve import export_command, serve_command
from graft.cli.surgery import surgery_command
from graft.cli.train import train_command
from graft.errors import GraftError, Interrupted, first_line
from graft.progress import console

__all__ = ["app", "main"]

help_format.install()

app = typer.Typer(
    name="graft",
    help="Fine-tune pretrained image classifiers, reshape trained models, train in rounds, serve to phones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(asked: bool) -> None:
    if asked:
        print(f"graft {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print graft's version and exit."),
    ] = False,
) -> None:
    """Options before the command (`graft --version`)."""


# One-line summaries for `graft --help`: click would cut the docstrings' first sentences mid-phrase to fit.
app.command("train", short_help="Fine-tune a timm model on data and write a bundle.")(train_command)
app.command("eval", short_help="Accuracy, per-class metrics and confusion of a bundle.")(eval_command)
app.command("predict", short_help="Top-k classes of image files, as the bundle sees them.")(predict_command)
app.command("surgery", short_help="Change a model's channels, size, depth, width, classes.")(surgery_command)
app.command("info", short_help="A bundle's architecture, classes, metrics and history.")(info_command)
app.command("schema", short_help="Print the JSON Schema of graft.json.")(schema_command)
app.command("models", short_help="List timm models matching a pattern.")(models_command)
app.command("import-keras", short_help="Import a Keras .h5/.keras model, same logits.")(import_keras_command)
app.command("export", short_help="Export to ONNX or ORT (optionally int8), checked and certified.")(export_command)
app.command("serve", short_help="Serve a bundle: a phone page and an HTTP API.")(serve_command)
app.add_typer(data_app)
app.add_typer(rounds_app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage mistakes, GraftError and OS errors (permissions, disk full) → one line on stderr, exit 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args or ["--help"], prog_name="graft", standalone_mode=False)
    except typer.Abort:
        console().print("graft: interrupted", markup=False)
        sys.exit(130)
    except typer.TyperException as error:  # unknown command or option, wrong type, missing argument
        _fail(error.format_message() if hasattr(error, "format_message") else str(error))
    except Interrupted as error:  # a checkpoint was written: say how to continue, exit as the signal asks
        console().print(f"graft: {error}", markup=False, soft_wrap=True)
        sys.exit(128 + (error.signum or signal.SIGINT))
    except GraftError as error:
        _fail(str(error))
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        _fail(f"{error.strerror or first_line(error)}{where}")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    """The one error line: the message with its whitespace folded, so a multi-line cause still prints as one."""
    console().print(f"[red]graft: error:[/red] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)
    sys.exit(2)
