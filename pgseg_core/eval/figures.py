"""The figures ``pgseg eval`` writes beside its metrics file (docs/FIGURES.md §2).

For a metrics file ``DIR/STEM.json`` (``metrics.json`` by default):

- ``STEM_per_class.png``: per-class IoU bars, coloured by split (the demo's seen and unseen classes);
- ``STEM_confusion.png``: per split, the confusion among the most confused classes (from the split's
  confusion matrix, which the metrics are computed from);
- ``STEM_predictions.png``: the first images of each split (up to ``grid_images`` in all): input, ground
  truth, prediction, class legend;
- ``STEM_sweep.png`` with ``--sweep``: mIoU against the swept value.

The images and confusion matrices are kept during the evaluation by :mod:`pgseg_core.eval.observe`; the
charts need matplotlib (the ``plots`` extra), the grid only PIL. Without matplotlib the charts are skipped
with a warning, or, when figures were asked for explicitly (``required``), a one-line DependencyError is
raised before anything is evaluated. The drawing time is measured against the evaluation's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DependencyError, OutputError
from .observe import EvalObserver

__all__ = [
    "EvalFigureOptions",
    "EvalFigures",
    "FIGURE_SUFFIXES",
    "figure_paths",
    "check_figure_support",
    "write_eval_figures",
]

FIGURE_SUFFIXES = ("_per_class.png", "_confusion.png", "_predictions.png", "_sweep.png")
_log = logging.getLogger("pgseg.eval")


@dataclass(frozen=True)
class EvalFigureOptions:
    """Which eval figures to draw.

    Attributes:
        grid_images: images in the prediction grid over all splits (0: no grid), taken in turn from each
            split's first images.
        confusion_top: classes per confusion panel.
        required: asked for explicitly: a missing matplotlib raises instead of skipping the charts.
    """

    grid_images: int = 8
    confusion_top: int = 10
    required: bool = False


@dataclass
class EvalFigures:
    """What was drawn: ``files`` (paths), the drawing time and the evaluation's (s), and ``notes``
    (figures skipped and why)."""

    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    eval_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Drawing time as a fraction of the whole command's evaluation + drawing time, in [0, 1]."""
        total = self.seconds + self.eval_seconds
        return self.seconds / total if total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "seconds": self.seconds, "fraction": self.fraction, "notes": self.notes}


def figure_paths(metrics_path: str | Path) -> dict[str, Path]:
    """``{"per_class", "confusion", "predictions", "sweep"}`` -> the PNG beside ``metrics_path``."""
    p = Path(metrics_path)
    keys = ("per_class", "confusion", "predictions", "sweep")
    return {k: p.with_name(p.stem + suffix) for k, suffix in zip(keys, FIGURE_SUFFIXES)}


def check_figure_support(options: EvalFigureOptions) -> bool:
    """Whether the charts can be drawn (matplotlib importable).

    Raises:
        DependencyError: matplotlib is missing and ``options.required``.
    """
    from ..viz.figure import require_matplotlib

    try:
        require_matplotlib("eval figures")
    except DependencyError:
        if options.required:
            raise
        return False
    return True


def _grid_rows(observer: EvalObserver, split_names: list[str], n: int) -> list[Any]:
    from ..viz.pred_grid import GridRow

    queues = [
        [GridRow(f"{split}/{s.key}", s.image, s.label, s.pred, obs.names) for s in obs.samples]
        for split, obs in zip(split_names, observer.splits)
    ]
    rows: list[Any] = []
    while len(rows) < n and any(queues):
        for q in queues:
            if q and len(rows) < n:
                rows.append(q.pop(0))
    return rows


def write_eval_figures(
    metrics: dict[str, Any],
    observer: EvalObserver | None,
    metrics_path: str | Path,
    options: EvalFigureOptions,
    eval_seconds: float = 0.0,
) -> EvalFigures:
    """Draw the eval figures (module docstring) beside ``metrics_path``.

    Args:
        metrics: the ``metrics.json`` dict (:meth:`EvalReport.to_dict`).
        observer: what :func:`pgseg_core.eval.observe.observing` kept during the evaluation (None: only
            the charts that the metrics alone give: per-class and sweep).
        metrics_path: where the metrics file was written.
        options: :class:`EvalFigureOptions`.
        eval_seconds: the evaluation's own time, for :attr:`EvalFigures.fraction`.

    Raises:
        OutputError: a figure cannot be written. DependencyError: see :func:`check_figure_support`.
    """
    from ..viz.eval_charts import plot_confusion, plot_per_class, plot_sweep
    from ..viz.pred_grid import write_prediction_grid

    t0 = time.perf_counter()
    done = EvalFigures(eval_seconds=eval_seconds)
    paths = figure_paths(metrics_path)
    split_names = list((metrics.get("splits") or {}).keys())
    observed = observer.splits if observer is not None else []
    if len(observed) != len(split_names):
        done.notes.append("confusion and predictions: the evaluation kept no matching splits")
        observed = []
    try:
        if check_figure_support(options):
            has_per_class = any(m.get("per_class") for m in metrics["splits"].values())
            if has_per_class:
                done.files.append(str(plot_per_class([("", metrics)], paths["per_class"])))
            if observed:
                panels = [(s, o.names, o.confusion) for s, o in zip(split_names, observed)]
                done.files.append(str(plot_confusion(panels, paths["confusion"], options.confusion_top)))
            sweep = plot_sweep(metrics, paths["sweep"])
            if sweep is not None:
                done.files.append(str(sweep))
        else:
            done.notes.append("charts skipped: matplotlib is missing (pip install 'pgseg[plots]')")
        rows = _grid_rows(observer, split_names, options.grid_images) if observed else []
        if rows:
            done.files.append(str(write_prediction_grid(rows, paths["predictions"])))
    except OSError as e:
        raise OutputError(f"cannot write the eval figures beside {metrics_path}: {e}") from e
    done.seconds = time.perf_counter() - t0
    for note in done.notes:
        _log.warning("eval figures: %s", note)
    _log.info(
        "eval figures: %d file(s) in %.2f s (%.1f %% of the command)",
        len(done.files),
        done.seconds,
        100 * done.fraction,
    )
    return done
