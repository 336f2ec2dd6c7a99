"""Bad training samples skipped by the loader: one count shared by its decode workers, read by the loop.

The training loader's exception handler (:class:`pgseg_core.data.loader.SkipAndCount`) adds every sample it
skips (a corrupt JPEG, a truncated tar, a sample without an image or caption) to a :class:`SkipCounter` in
shared memory, so the DataLoader workers' counts add up in the training process.
:func:`skip_metrics` gives the training loop the total of the loaders alive now, for ``metrics.jsonl``
(``skipped_samples``), and logs a warning whenever the total has grown since the previous call.
"""

from __future__ import annotations

import logging
import multiprocessing
import weakref
from typing import Any

__all__ = ["SkipCounter", "register_loader", "skip_metrics"]

log = logging.getLogger("pgseg.data.skips")

_LIVE: weakref.WeakKeyDictionary[Any, SkipCounter] = weakref.WeakKeyDictionary()
_reported = {"total": 0}


class SkipCounter:
    """A process-shared count of skipped samples (``multiprocessing.Value``; workers inherit it)."""

    def __init__(self) -> None:
        self._value = multiprocessing.Value("q", 0)

    def add(self, n: int = 1) -> None:
        """Count ``n`` more skipped samples (any process)."""
        with self._value.get_lock():
            self._value.value += n

    @property
    def value(self) -> int:
        """Samples skipped so far by every process sharing this counter."""
        return int(self._value.value)


def register_loader(loader: Any, counter: SkipCounter) -> None:
    """Make ``counter`` count for :func:`skip_metrics` while ``loader`` is alive."""
    _LIVE[loader] = counter
    _reported["total"] = 0


def skip_metrics() -> dict[str, int]:
    """``{"skipped_samples": n}``: bad samples the live training loaders skipped so far (empty when no
    loader is alive, e.g. training on cached stem features). Logs a warning when ``n`` has grown."""
    counters = list(_LIVE.values())
    if not counters:
        return {}
    total = sum(c.value for c in counters)
    if total > _reported["total"]:
        log.warning("training data: %d bad sample(s) skipped so far (corrupt images, truncated tars)", total)
        _reported["total"] = total
    return {"skipped_samples": total}
