"""What a training run writes besides checkpoints and ``metrics.jsonl``: ``curves.png`` and, with
``train.tensorboard``, TensorBoard event files.

:class:`RunObserver` is driven by :mod:`pgseg_core.train.loop`: :meth:`~RunObserver.log` for every
``metrics.jsonl`` row, :meth:`~RunObserver.checkpoint` after every periodic checkpoint and the context exit
at the end of the run. The curves (:func:`pgseg_core.viz.curves.plot_curves`) are redrawn from the whole
``metrics.jsonl`` each time, so a resumed run's figure shows every step; the time spent drawing is counted
and logged as a fraction of the run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import DataError, DependencyError, OutputError
from ..viz.curves import CURVES_FILE, load_run, plot_curves
from ..viz.figure import FigureTimer, require_matplotlib

__all__ = ["RunObserver", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"
_log = logging.getLogger("pgseg.train")


def _summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``; DependencyError naming the extra without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise DependencyError(
            "train.tensorboard needs the tensorboard package: pip install 'pgseg[tensorboard]' "
            "(or drop --train.tensorboard)"
        ) from e
    return SummaryWriter


class RunObserver:
    """Curves and TensorBoard events of one run in ``out`` (module docstring).

    Args:
        out: the run folder (``metrics.jsonl`` is read from it, ``curves.png`` and ``tensorboard/`` written).
        train_cfg: :class:`pgseg_core.config.TrainConfig`; ``curves`` draws ``curves.png``, ``tensorboard``
            writes TensorBoard scalars (tag = the ``metrics.jsonl`` key, step = its ``step``) from
            :meth:`begin` on.

    Without matplotlib ``curves.png`` is skipped with a warning (the curves are on by default).

    Raises:
        DependencyError: ``tensorboard`` asked for and the package is missing; raised here, before any
            training.
    """

    def __init__(self, out: Path, train_cfg: Any) -> None:
        self.out = Path(out)
        self.curves = bool(train_cfg.curves)
        self.tensorboard = bool(train_cfg.tensorboard)
        if self.curves:
            try:
                require_matplotlib("train.curves (curves.png)")
            except DependencyError as e:  # on by default: a lean install trains without the figure
                _log.warning("%s; training without curves.png", e)
                self.curves = False
        if self.tensorboard:
            _summary_writer_class()
        self.writer: Any = None
        self.timer = FigureTimer()
        self.t0 = time.perf_counter()

    def begin(self, start_step: int) -> None:
        """Training starts at ``start_step``: open the TensorBoard writer, purging a killed run's events
        logged after that step (``purge_step`` drops steps >= it, so ``start_step + 1``)."""
        if self.tensorboard and self.writer is None:
            writer_class = _summary_writer_class()
            self.writer = writer_class(
                log_dir=str(self.out / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None
            )

    @property
    def seconds(self) -> float:
        """Time spent on figures so far (s)."""
        return self.timer.seconds

    def log(self, record: dict[str, float]) -> None:
        """One ``metrics.jsonl`` row: every numeric value but ``step`` becomes a TensorBoard scalar."""
        if self.writer is None:
            return
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, float(value), step)
        self.writer.flush()

    def checkpoint(self) -> None:
        """A checkpoint was written: redraw ``curves.png`` from ``metrics.jsonl``. A figure that cannot be
        written (a full disk) is a warning: the run and its checkpoints matter more than the picture."""
        if not self.curves or not (self.out / "metrics.jsonl").exists():
            return
        with self.timer.timed():
            try:
                run, _ = load_run(self.out)
                if run.rows:
                    plot_curves([run], self.out / CURVES_FILE)
            except (OutputError, DataError) as e:
                _log.warning("curves.png not drawn: %s", e)

    def __enter__(self) -> RunObserver:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.checkpoint()
                total = max(time.perf_counter() - self.t0, 1e-9)
                if self.timer.count:
                    _log.info(
                        "curves.png drawn %d time(s) in %.2f s (%.1f %% of the run)",
                        self.timer.count,
                        self.timer.seconds,
                        100.0 * self.timer.seconds / total,
                    )
        finally:
            if self.writer is not None:
                self.writer.close()
