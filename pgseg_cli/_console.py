"""Consoles, logging and progress rendering: the only place rich is used."""

from __future__ import annotations

import functools
import logging
import os
import sys
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
from pgseg_core.utils.io import output_error


class _Console(Console):
    """rich's Console, except for a reader that went away: rich itself would exit with status 1 at the
    first write to a closed pipe, pgseg ends the command quietly with status 0 (closed stdout, as
    :func:`handle_errors` does) or just stops writing (closed stderr: logs and progress are dropped, the
    command carries on and its exit status stays its own)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        if self.stderr:
            _to_devnull(sys.stderr)
            return
        _stdout_closed()


out = _Console()  # results
err = _Console(stderr=True)  # logs, progress, errors

STATE: dict[str, Any] = {"verbose": False, "quiet": False}


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    STATE["verbose"] = verbose or os.environ.get("PGSEG_DEBUG") == "1"
    STATE["quiet"] = quiet
    out.quiet = err.quiet = False  # a closed pipe silenced them in an earlier command of this process
    level = logging.DEBUG if STATE["verbose"] else (logging.WARNING if quiet else logging.INFO)
    logger = logging.getLogger("pgseg")
    logger.handlers.clear()
    handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    if not STATE["verbose"]:  # library chatter (transformers' "Loading weights" bars, warnings): -v shows it
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn errors into one red line and a non-zero exit (traceback only with --verbose).

    pgseg's own errors keep their exit code; an OSError (a path that cannot be read or written, a full disk)
    becomes one line naming the path and the fix; a ValueError one line with its message; a closed stdout
    (``pgseg segment ... --jsonl | head``) ends the command quietly with exit 0, as ``find`` or ``grep`` do.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PgsegError as e:
            _fail_with(e, str(e), e.exit_code)
        except BrokenPipeError:
            _stdout_closed()
        except OSError as e:
            target = e.filename if e.filename is not None else "a file"
            _fail_with(e, str(output_error(target, e, "use")), 1)
        except ValueError as e:
            _fail_with(e, f"{e} (a value pgseg could not use; -v shows where)", 1)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


def _fail_with(e: BaseException, message: str, code: int) -> None:
    if STATE["verbose"]:
        err.print_exception()
    fail(message.replace("[", r"\["), code)


def _stdout_closed() -> None:
    """The reader of stdout went away: stop quietly. stdout is pointed at /dev/null so that the
    interpreter's final flush does not fail again."""
    _to_devnull(sys.stdout)
    raise typer.Exit(0)


def _to_devnull(stream: Any) -> None:
    """Point the file descriptor of ``stream`` at /dev/null (nothing to do for a stream without one)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


@contextmanager
def progress_bar(description: str, *, transient: bool = False) -> Iterator[Callable[..., None]]:
    """Yield ``update(done, total, info=None)``; renders a rich bar on stderr unless --quiet.

    The bar is stopped when the block ends; when it ends with an exception (an error, Ctrl-C, SIGTERM) or
    before anything was counted, the bar is cleared instead of left on screen, so that an error line
    printed next stands alone."""
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

        from pgseg_core.checkpoint.download import download_progress_to  # torch-free, but a package import

        def download(label: str, done: int, total: int | None) -> None:
            mb = f"{done / 1e6:.0f}/{total / 1e6:.0f} MB" if total else f"{done / 1e6:.0f} MB"
            update(done, total, info=mb, phase=f"download {label}")

        try:
            with download_progress_to(download):  # released weights fetched inside the command
                yield update
        except BaseException:
            _clear(bar)  # an error, Ctrl-C or SIGTERM: the one error line stands alone
            raise
        finally:
            if not tasks:  # nothing was counted: leave no empty bar line behind
                _clear(bar)


def _clear(bar: Progress) -> None:
    """Stop ``bar`` and erase it (on a terminal) or print nothing of it (to a file or pipe); rich's own
    stop then has nothing left to do (it would add a blank line when stderr is not a terminal)."""
    bar.live.transient = True
    bar.live.stop()
    bar.disable = True
