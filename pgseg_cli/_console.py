"""Consoles, logging and progress rendering: the only place rich is used."""

from __future__ import annotations

import functools
import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pgseg_core.errors import PgsegError

out = Console()  # results
err = Console(stderr=True)  # logs, progress, errors

STATE: dict[str, Any] = {"verbose": False, "quiet": False}


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    STATE["verbose"] = verbose or os.environ.get("PGSEG_DEBUG") == "1"
    STATE["quiet"] = quiet
    level = logging.DEBUG if STATE["verbose"] else (logging.WARNING if quiet else logging.INFO)
    logger = logging.getLogger("pgseg")
    logger.handlers.clear()
    handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn library errors into one red line and a non-zero exit (traceback only with --verbose)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PgsegError as e:
            if STATE["verbose"]:
                err.print_exception()
            fail(str(e).replace("[", r"\["), e.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


@contextmanager
def progress_bar(description: str, *, transient: bool = False) -> Iterator[Callable[..., None]]:
    """Yield ``update(done, total, info=None)``; renders a rich bar on stderr unless --quiet."""
    if STATE["quiet"]:
        yield lambda *a, **k: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=err, transient=transient) as bar:
        tasks: dict[str, Any] = {}

        def update(done: int, total: int | None, info: str = "", phase: str | None = None) -> None:
            name = phase or description
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total or None, info="")
            fields = {"info": info} if info else {}
            bar.update(tasks[name], completed=done, total=total or None, **fields)

        yield update
