"""matplotlib without global state: figures on the Agg canvas, saved byte-for-byte reproducibly.

Every figure of pgseg (training curves, eval charts, prediction grids) is made here with
:func:`new_figure` and written with :func:`save_figure`: the object-oriented API (no ``pyplot``, so no
backend switch in the caller's process), fixed style settings and dpi, and PNG metadata without the
matplotlib version, so the same inputs give the same bytes on the same matplotlib / freetype.
matplotlib is the optional ``plots`` extra; asking for a figure without it raises one readable line.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import DependencyError
from ..utils.io import atomic_write, output_error

__all__ = ["DPI", "require_matplotlib", "new_figure", "margins", "save_figure", "FigureTimer"]

DPI = 100
_STYLE = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "path.simplify": False,
    "svg.hashsalt": "pgseg",
}


def require_matplotlib(what: str = "figures") -> Any:
    """The ``matplotlib`` module.

    Raises:
        DependencyError: matplotlib is not installed (names the ``plots`` extra).
    """
    try:
        import matplotlib
    except ImportError as e:
        raise DependencyError(
            f"{what} need matplotlib: pip install 'pgseg[plots]' (or turn the figures off)"
        ) from e
    return matplotlib


@contextmanager
def new_figure(width_in: float, height_in: float) -> Iterator[Any]:
    """A ``matplotlib.figure.Figure`` of ``width_in`` × ``height_in`` inches on the Agg canvas, made and
    used under pgseg's fixed style (the caller's rcParams are restored afterwards). No layout engine: the
    callers set fixed margins (``subplots_adjust``), which costs half the drawing time less than
    matplotlib's constrained layout.

    Raises:
        DependencyError: matplotlib is missing.
    """
    mpl = require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with mpl.rc_context(rc=_STYLE):
        fig = Figure(figsize=(width_in, height_in), dpi=DPI)
        FigureCanvasAgg(fig)
        yield fig


def margins(fig: Any, left: float, right: float, top: float, bottom: float, **space: float) -> None:
    """Fixed margins in inches (``wspace`` / ``hspace`` as fractions of the mean axes size)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h, **space)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically at :data:`DPI`, without version metadata.

    Raises:
        OutputError: the file cannot be written (no permission, a full disk).
    """
    path = Path(path)

    def _w(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})

    try:
        return atomic_write(path, _w)
    except OSError as e:
        raise output_error(path, e) from e


class FigureTimer:
    """Wall time spent on figures inside a command (``seconds``; ``count`` figures), to report their cost
    as a fraction of the command's time."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0

    @contextmanager
    def timed(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t
            self.count += 1
