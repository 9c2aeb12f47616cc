"""Shared CLI plumbing: user errors (and a missing install extra) become one line on stderr, exit 2;
anything unexpected (a bug) one line asking for a report, exit 1, the traceback only with DGA_DEBUG=1."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

import typer

from dga.errors import EXIT_USER_ERROR, DgaError

# Top-level modules of the optional install profiles (pyproject.toml) -> the extra that brings them.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "open_clip", "safetensors", "scipy", "sklearn", "matplotlib", "onnx",
                     "onnxscript"), "train"),
    "tensorrt": "tensorrt",
    "mkdocs": "docs",
    "ray": "ray",
    **dict.fromkeys(("pytriton", "tritonclient"), "serve"),
}


EXIT_INTERNAL_ERROR = 1
DEBUG_ENV = "DGA_DEBUG"  # set (to anything but "", 0, false, no) to see an internal error's traceback


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def internal_error(prog: str, exc: BaseException) -> NoReturn:
    """An exception nobody anticipated: one line naming it and asking for a report; exit 1."""
    if debug_enabled():
        traceback.print_exception(exc)
    what = " ".join(f"{type(exc).__name__}: {exc}".split())
    hint = "" if debug_enabled() else f"; run again with {DEBUG_ENV}=1 to see the traceback"
    typer.echo(f"error: internal error in {prog} ({what}); this is a bug, please report it{hint}", err=True)
    sys.exit(EXIT_INTERNAL_ERROR)


def missing_extra(exc: ImportError) -> str | None:
    """The one-sentence advice for a module of an uninstalled extra, or None for any other import error."""
    root = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(root)
    if extra is None or not isinstance(exc, ModuleNotFoundError):
        return None
    return f"this command needs {root}, which comes with the [{extra}] extra: pip install 'dga[{extra}]'"


def run_app(app: typer.Typer, prog_name: str | None = None) -> None:
    """Run a typer app; user errors (ours and click's usage errors) print one ``error:`` line, exit 2;
    any other exception is an internal error (``internal_error``), exit 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    prog = prog_name or app.info.name or "dga"
    try:
        # With standalone_mode=False click returns a typer.Exit's code instead of raising it.
        rc = app(standalone_mode=False, prog_name=prog)
    except DgaError as exc:
        typer.echo("error: " + " ".join(str(exc).split()), err=True)  # always one line
        sys.exit(EXIT_USER_ERROR)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        advice = missing_extra(exc)
        if advice is None:
            internal_error(prog, exc)
        typer.echo(f"error: {prog}: {advice}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        # typer >= 0.20 vendors click (typer._click): its ClickException is not click's own.
        usage_errors = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
        if isinstance(exc, usage_errors):
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            typer.echo(f"error: {' '.join(message.split())} (see '{prog} --help')", err=True)
            sys.exit(getattr(exc, "exit_code", EXIT_USER_ERROR))
        internal_error(prog, exc)
    sys.exit(rc if isinstance(rc, int) else 0)


def epilog(examples: list[str], note: str = "") -> str:
    """Examples block for --help; the \\b marker stops click from re-wrapping the commands."""
    text = "Examples:\n\n\b\n" + "\n".join(f"  {e}" for e in examples) + "\n"
    return text + (f"\n{note}\n" if note else "")


def single_command(fn: Callable, help_text: str, epilog: str, name: str | None = None) -> typer.Typer:
    name = name or "dga-" + fn.__name__  # the console script's name, shown in usage and errors
    app = typer.Typer(name=name, add_completion=False, rich_markup_mode=None, help=help_text, epilog=epilog)
    app.command(help=help_text, epilog=epilog)(fn)
    return app
