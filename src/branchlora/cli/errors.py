"""Turn the library's validation errors into one clear line and exit status 2, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, IndexError)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        # Escaped, so a message quoting "[x, y, w, h]" prints as written; soft-wrapped: one line in a log.
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
