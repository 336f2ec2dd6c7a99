"""Progress counting: a ``tick()`` callback that reports ``progress(done, total)`` after each item."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["progress_ticker"]


def progress_ticker(
    progress: Callable[[int, int | None], None] | None, total: int | None
) -> Callable[[], None]:
    """A callback that counts finished items and reports ``progress(done, total)`` after each."""
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return tick
