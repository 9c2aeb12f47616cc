"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import typer

from dga.errors import EXIT_USER_ERROR, DgaError


def run_app(app: typer.Typer) -> None:
    """Run a typer app; a DgaError prints ``error: <sentence>`` and exits with code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        # With standalone_mode=False click returns a typer.Exit's code instead of raising it.
        rc = app(standalone_mode=False)
    except DgaError as exc:
        typer.echo("error: " + " ".join(str(exc).split()), err=True)  # always one line
        sys.exit(EXIT_USER_ERROR)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        # typer >= 0.20 vendors click (typer._click): its ClickException is not click's own.
        usage_errors = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
        if isinstance(exc, usage_errors) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", EXIT_USER_ERROR))
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


def epilog(examples: list[str], note: str = "") -> str:
    """Examples block for --help; the \\b marker stops click from re-wrapping the commands."""
    text = "Examples:\n\n\b\n" + "\n".join(f"  {e}" for e in examples) + "\n"
    return text + (f"\n{note}\n" if note else "")


def single_command(fn: Callable, help_text: str, epilog: str) -> typer.Typer:
    app = typer.Typer(add_completion=False, rich_markup_mode=None, help=help_text, epilog=epilog)
    app.command(help=help_text, epilog=epilog)(fn)
    return app
