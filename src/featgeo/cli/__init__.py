"""The ``featgeo`` command line: thin typer commands over library functions.

Bad input (``ValueError``/``TypeError``/``FileNotFoundError`` from the library) becomes one line
on stderr and exit code 2; set ``FEATGEO_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import typer
from rich.logging import RichHandler

from featgeo import __version__
from featgeo.errors import USER_ERRORS, ExecutionError
from featgeo.progress import console, err_console

app = typer.Typer(
    name="featgeo",
    help="Geometry of features inside language models: pruning masks and SAE latents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _one_line_errors(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("FEATGEO_DEBUG"):
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__
            _print_error(message)
            raise typer.Exit(2) from None
        except ExecutionError as exc:
            if os.environ.get("FEATGEO_DEBUG"):
                raise
            _print_error(" ".join(str(exc).split()))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("featgeo: interrupted; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper


def _print_error(message: str) -> None:
    """``featgeo: error: MESSAGE`` on one stderr line; the message is text, never markup (a
    path may hold square brackets)."""
    from rich.markup import escape

    err_console.print(
        f"[red]featgeo: error:[/red] {escape(message)}", highlight=False, soft_wrap=True
    )


def _wrap_commands(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.callback is not None and not getattr(command.callback, "_featgeo_wrapped", 0):
            command.callback = _one_line_errors(command.callback)
            command.callback._featgeo_wrapped = True
    for group in typer_app.registered_groups:
        _wrap_commands(group.typer_instance)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"featgeo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,  # before the check that a command was given
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("transformers", "httpx", "huggingface_hub", "faiss", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _register() -> None:
    from featgeo.cli import aanet as aanet_cli
    from featgeo.cli import corpus as corpus_cli
    from featgeo.cli import demo as demo_cli
    from featgeo.cli import hamming as hamming_cli
    from featgeo.cli import model as model_cli
    from featgeo.cli import prune as prune_cli
    from featgeo.cli import review as review_cli
    from featgeo.cli import sae as sae_cli

    app.add_typer(model_cli.app, name="model")
    app.add_typer(corpus_cli.app, name="corpus")
    app.command("prune")(prune_cli.prune)
    app.command("ppl")(prune_cli.ppl)
    app.add_typer(hamming_cli.app, name="hamming")
    app.add_typer(sae_cli.app, name="sae")
    app.add_typer(aanet_cli.app, name="aanet")
    app.command("review")(review_cli.review)
    app.command("demo")(demo_cli.demo)
    _wrap_commands(app)


_register()


def main() -> None:
    """The ``featgeo`` executable: like click's standalone mode, except that a usage error (an
    unknown option, a value of the wrong type) is one line, like every other bad input."""
    from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer's own click

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = app(prog_name="featgeo", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "featgeo"
        message = " ".join(exc.format_message().split())
        _print_error(f"{message} (see: {where} --help)")
        sys.exit(2)
    except typer.Abort:
        err_console.print("featgeo: aborted")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
