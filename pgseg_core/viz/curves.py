"""Training curves: every scalar of ``metrics.jsonl`` against the step, raw and smoothed, one or more runs.

``metrics.jsonl`` (written by :mod:`pgseg_core.train.loop`) has one JSON object per logged step: ``step``,
the loss terms (``loss`` and its parts, means over the logging window), ``lr``, ``grad_norm``,
``logit_scale``, ``images_per_s`` and ``elapsed_s``. :func:`plot_curves` draws one panel per scalar (loss
terms first, then lr, logit scale, images/s, grad norm; ``elapsed_s`` is the x-axis of nothing) with the
raw values as a thin line and an exponential moving average (weight :data:`SMOOTHING`, debiased like
TensorBoard's) as a thick one (lr and logit scale, which are not noisy, only as they are); several runs
share the panels, one colour per run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .figure import margins, new_figure, save_figure

__all__ = ["RunCurves", "CurvesResult", "read_metrics", "load_run", "plot_curves", "plot_runs", "CURVES_FILE"]

CURVES_FILE = "curves.png"
SMOOTHING = 0.6
_TRAILING = ("lr", "logit_scale", "images_per_s", "grad_norm")
_NOT_PLOTTED = {"step", "elapsed_s"}
_TITLES = {"lr": "learning rate", "logit_scale": "logit scale", "images_per_s": "images / s"}
_UNSMOOTHED = {"lr", "logit_scale"}  # set by the schedule / the model, not noisy: drawn as they are
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass
class RunCurves:
    """One run's logged rows (``metrics.jsonl``), named for the legend."""

    name: str
    rows: list[dict[str, float]]

    def keys(self) -> list[str]:
        """The plotted scalars in panel order: loss terms (``loss`` first), then lr, logit scale, images/s."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for k, v in row.items():
                if k not in _NOT_PLOTTED and isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen.setdefault(k, None)
        losses = sorted((k for k in seen if k not in _TRAILING), key=lambda k: (k != "loss", k))
        return losses + [k for k in _TRAILING if k in seen]

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one scalar, float64 [n]; rows without it (or non-finite) are skipped."""
        pts = [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
        pts = [(s, v) for s, v in pts if math.isfinite(v)]
        if not pts:
            return np.zeros(0), np.zeros(0)
        arr = np.asarray(pts, dtype=np.float64)
        return arr[:, 0], arr[:, 1]


@dataclass
class CurvesResult:
    """A written curves figure: its path, the runs and scalars drawn, rows read and drawing time (s)."""

    path: str
    runs: list[str]
    metrics: list[str]
    rows: int
    seconds: float = 0.0
    skipped_lines: int = 0
    notes: list[str] = field(default_factory=list)


def read_metrics(path: str | Path) -> tuple[list[dict[str, float]], int]:
    """The rows of a ``metrics.jsonl`` (objects with an integer ``step``) and how many lines were skipped
    (a torn last line of a killed run, blank or foreign lines).

    Raises:
        DataError: the file is missing or unreadable.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e.strerror or e} (a run folder holds metrics.jsonl)") from e
    rows, skipped = [], 0
    for line in lines:
        try:
            row = json.loads(line)
            row["step"] = int(row["step"])
        except (ValueError, TypeError, KeyError):
            skipped += 1
            continue
        rows.append(row)
    return rows, skipped


def load_run(run: str | Path) -> tuple[RunCurves, int]:
    """A run folder (holding ``metrics.jsonl``) or a metrics file -> (:class:`RunCurves`, skipped lines).

    Raises:
        DataError: no metrics file there.
    """
    run = Path(run)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise DataError(f"{run} has no metrics.jsonl: give a training run folder or its metrics.jsonl")
    rows, skipped = read_metrics(path)
    name = (path.parent if path.name == "metrics.jsonl" else path).name or str(path)
    return RunCurves(name, rows), skipped


def smooth(values: np.ndarray, weight: float = SMOOTHING) -> np.ndarray:
    """Debiased exponential moving average: ``m_t = w·m_{t-1} + (1 - w)·x_t``, divided by ``1 - w^t``
    (TensorBoard's scalar smoothing), float64 [n]; ``weight`` in [0, 1)."""
    out = np.empty_like(values, dtype=np.float64)
    m = 0.0
    for i, x in enumerate(values):
        m = weight * m + (1.0 - weight) * float(x)
        out[i] = m / (1.0 - weight ** (i + 1))
    return out


def _panel(ax, runs: list[RunCurves], key: str) -> None:
    for i, run in enumerate(runs):
        steps, values = run.series(key)
        if steps.size == 0:
            continue
        color = _COLORS[i % len(_COLORS)]
        label = run.name if len(runs) > 1 else None
        if key in _UNSMOOTHED:
            ax.plot(steps, values, color=color, linewidth=1.4, label=label)
            continue
        ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
        marker = "." if steps.size < 3 else ""
        ax.plot(steps, smooth(values), color=color, linewidth=1.6, label=label, marker=marker)
    ax.set_title(_TITLES.get(key, key.replace("_", " ")))
    ax.set_xlabel("step")
    if key == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if len(runs) > 1 and key == "loss":
        ax.legend(loc="best", fontsize=7)


def plot_curves(runs: list[RunCurves], out_path: str | Path, *, ncols: int = 3) -> CurvesResult:
    """Draw every scalar of ``runs`` against the step into one PNG (module docstring).

    Args:
        runs: one or more runs; scalars missing from a run are drawn for the others.
        out_path: the PNG to write (atomically; a deterministic file for fixed rows).
        ncols: panels per row.

    Returns:
        :class:`CurvesResult` (``seconds`` is the drawing and writing time).

    Raises:
        DataError: no run has a logged row. DependencyError: matplotlib is missing.
        OutputError: the file cannot be written.
    """
    t0 = time.perf_counter()
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.keys()))
    if not keys:
        names = ", ".join(r.name for r in runs)
        raise DataError(f"no logged steps in {names}: metrics.jsonl gets a row every train.log_every steps")
    losses = sorted((k for k in keys if k not in _TRAILING), key=lambda k: (k != "loss", k))
    order = losses + [k for k in _TRAILING if k in keys]
    nrows = math.ceil(len(order) / ncols)
    with new_figure(3.4 * ncols, 2.4 * nrows) as fig:
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        margins(fig, 0.6, 0.15, 0.55, 0.45, wspace=0.3, hspace=0.55)
        for ax, key in zip(axes, order):
            _panel(ax, runs, key)
        for ax in axes[len(order) :]:
            ax.set_visible(False)
        title = ", ".join(r.name for r in runs)
        fig.suptitle(f"training curves: {title} (thin: raw, thick: smoothed)", fontsize=9)
        path = save_figure(fig, out_path)
    return CurvesResult(
        path=str(path),
        runs=[r.name for r in runs],
        metrics=order,
        rows=sum(len(r.rows) for r in runs),
        seconds=time.perf_counter() - t0,
    )


def plot_runs(runs: list[str | Path], out: str | Path | None = None) -> CurvesResult:
    """``pgseg plot``: redraw one run's ``curves.png`` or overlay several runs in one figure.

    Args:
        runs: run folders (holding ``metrics.jsonl``) or metrics files; several are overlaid.
        out: the PNG; default ``RUN/curves.png`` for one run folder (required for several runs or a file).

    Returns:
        :class:`CurvesResult` (``skipped_lines``: unreadable lines across the files, e.g. a torn last line).

    Raises:
        ConfigError: no run, or several runs without ``out``. DataError: a run without metrics or rows.
        DependencyError: matplotlib is missing. OutputError: the PNG cannot be written.
    """
    from ..errors import ConfigError

    if not runs:
        raise ConfigError("no run given: name one or more training run folders")
    if out is None:
        if len(runs) > 1 or Path(runs[0]).is_file():
            raise ConfigError("several runs (or a metrics file) need an output PNG path")
        out = Path(runs[0]) / CURVES_FILE
    loaded, skipped = [], 0
    for run in runs:
        curves, n = load_run(run)
        loaded.append(curves)
        skipped += n
    names = [r.name for r in loaded]
    for i, r in enumerate(loaded):  # same folder names in different places: number them
        if names.count(r.name) > 1:
            r.name = f"{r.name} ({i + 1})"
    result = plot_curves(loaded, out)
    result.skipped_lines = skipped
    return result
