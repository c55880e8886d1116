"""How ``rotate`` talks to people: one console for results, one for errors, and errors as one line each."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from errors import RotationError


def _console(stderr: bool = False) -> Console:
    # Output read by a program or kept in a log is not wrapped at 80 columns: a terminal's width, else none to speak of.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 10_000)


console = _console()
err = _console(stderr=True)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Turn the errors a user can act on into one red line and exit status 1; anything else is a bug: raise it."""
    try:
        yield
    except RotationError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        err.print(f"[red]error:[/red] invalid input: {escape(problems)}")
        raise typer.Exit(1) from None
