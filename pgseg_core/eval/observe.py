"""What an evaluation shows besides its metrics: each split's confusion matrix and its first images with
their ground truth and prediction, kept for the eval figures (:mod:`pgseg_core.eval.figures`).

The evaluation loop (:mod:`pgseg_core.eval.stream`) reports to the :class:`EvalObserver` made active by
:func:`observing` (a context variable, so nothing is kept when no one asked for figures and the loop's
signatures stay as they are): :func:`observe_sample` per scored image of the main setting,
:func:`observe_split` once per split with its confusion matrix. Splits are recorded in evaluation order,
which is the order of ``EvalResult.splits``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EvalObserver", "ObservedSplit", "KeptSample", "observing", "observe_sample", "observe_split"]

_ACTIVE: contextvars.ContextVar[EvalObserver | None] = contextvars.ContextVar(
    "pgseg_eval_observer", default=None
)


@dataclass
class KeptSample:
    """One evaluated image: ``image`` uint8 [H,W,3], ``label`` and ``pred`` uint8 [H,W] (label values:
    with background 0 background and 1 + c class c, 255 ignore)."""

    key: str
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray


@dataclass
class ObservedSplit:
    """One split: its class names (index = label value), confusion matrix int64 [C,C] (ground truth on
    the rows) and kept samples."""

    names: list[str]
    confusion: np.ndarray
    samples: list[KeptSample] = field(default_factory=list)


@dataclass
class EvalObserver:
    """Collects up to ``keep`` samples per split and every split's confusion matrix."""

    keep: int = 8
    splits: list[ObservedSplit] = field(default_factory=list)
    pending: list[KeptSample] = field(default_factory=list)

    def add_sample(self, key: str, image: Any, label: Any, pred: Any) -> None:
        if len(self.pending) >= self.keep:
            return
        if hasattr(pred, "detach"):
            pred = pred.detach().cpu().numpy()
        to_u8 = lambda a: np.asarray(a).astype(np.uint8, copy=True)  # noqa: E731
        self.pending.append(KeptSample(key, to_u8(image), to_u8(label), to_u8(pred)))

    def end_split(self, names: list[str], confusion: np.ndarray) -> None:
        self.splits.append(ObservedSplit(list(names), np.asarray(confusion, dtype=np.int64), self.pending))
        self.pending = []


@contextmanager
def observing(keep: int = 8) -> Iterator[EvalObserver]:
    """Make a new :class:`EvalObserver` (keeping ``keep`` samples per split) active inside the block."""
    observer = EvalObserver(keep=max(int(keep), 0))
    token = _ACTIVE.set(observer)
    try:
        yield observer
    finally:
        _ACTIVE.reset(token)


def observe_sample(main: bool, key: str, image: Any, label: Any, pred: Any) -> None:
    """The loop scored ``image`` (``main``: under the main setting, not a sweep value); cheap when no
    observer is active or it holds enough samples. ``pred`` may be a tensor on any device."""
    observer = _ACTIVE.get()
    if main and observer is not None:
        observer.add_sample(key, image, label, pred)


def observe_split(names: list[str], confusion: np.ndarray) -> None:
    """A split ended with this confusion matrix over ``names`` (label order)."""
    observer = _ACTIVE.get()
    if observer is not None:
        observer.end_split(names, confusion)
