"""The typed result of an evaluation run: per-split metrics, seen / unseen mIoU and hIoU.

Seen / unseen: "val-caption" holds classes named in training captions (seen), "val-heldout" classes never
named (unseen). When both are evaluated, ``hIoU`` is the harmonic mean of their foreground mIoU (mean over
the split's own classes, background excluded, so the shared background class does not mask the gap).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EvalResult", "json_safe", "SEEN_SPLIT", "UNSEEN_SPLIT", "BACKGROUND"]

SEEN_SPLIT = "val-caption"
UNSEEN_SPLIT = "val-heldout"
BACKGROUND = "background"


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf floats replaced by None, recursively (valid JSON)."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass
class EvalResult:
    """Metrics of one evaluation run.

    Attributes:
        splits: per split, the :func:`metrics_from_confusion` dict over ``["background"] + classes`` plus
            ``"mIoU_fg"`` (foreground classes only), ``"num_images"``, ``"classes"`` and ``"seconds"``.
            Percentages; NaN where undefined.
        seen_mIoU: foreground mIoU of "val-caption", when evaluated.
        unseen_mIoU: foreground mIoU of "val-heldout", when evaluated.
        hIoU: harmonic mean of the two, when both were evaluated.
        eval_config: the EvalConfig used, as a dict.
        dataset: for a benchmark dataset, ``{"name", "split", "has_background", "num_classes",
            "num_images", "skipped"}``.
    """

    splits: dict[str, dict[str, Any]]
    seen_mIoU: float | None = None
    unseen_mIoU: float | None = None
    hIoU: float | None = None
    eval_config: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with NaN / inf replaced by None (valid JSON)."""
        return json_safe(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)
