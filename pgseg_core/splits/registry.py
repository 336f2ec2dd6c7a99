"""Zero-shot splits: which classes of a dataset are seen in training and which are unseen.

A split file (``files/NAME.json``, schema 1) holds ``name``, ``dataset`` (the benchmark reader's name, or
``demo``), ``class_names`` (which class file of the reader), ``background``, ``classes`` (the full list in
label order), ``unseen`` (a subset) and the ``source`` of the split. Seen = classes − unseen. mIoU(S) and
mIoU(U) are the mean IoU over the seen / unseen classes (background counts in neither); hIoU is their
harmonic mean, 2·S·U / (S + U).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["ZeroShotSplit", "load_split", "split_names", "seen_unseen_miou", "apply_split", "default_split"]


@dataclass(frozen=True)
class ZeroShotSplit:
    name: str
    dataset: str
    class_names: str
    background: bool
    classes: tuple[str, ...]
    unseen: tuple[str, ...]
    source: str = ""

    @property
    def seen(self) -> tuple[str, ...]:
        return tuple(c for c in self.classes if c not in set(self.unseen))


def _files():
    return resources.files("pgseg_core.splits").joinpath("files")


_DEFAULT = {
    "demo": "demo-30-8",
    "voc20": "voc-15-5",
    "pc59": "pc59-49-10",
    "coco-stuff-171": "coco-stuff-156-15",
}


def default_split(dataset: str | None) -> str:
    """The shipped split of a dataset (``None``: demo shards).

    Raises:
        ConfigError: a dataset without a shipped split.
    """
    name = _DEFAULT.get(dataset or "demo")
    if name is None:
        raise ConfigError(
            f"no zero-shot split ships for {dataset}: pass one (--zs-split FILE), see docs/MVP_SEG.md §5"
        )
    return name


def split_names() -> list[str]:
    """Names of the shipped splits."""
    return sorted(p.name[:-5] for p in _files().iterdir() if p.name.endswith(".json"))


def load_split(name_or_path: str | Path) -> ZeroShotSplit:
    """A shipped split by name (``voc-15-5``, ``pc59-49-10``, ``coco-stuff-156-15``, ``demo-30-8``) or a
    split file path.

    Raises:
        ConfigError: unknown name, unreadable file, or unseen classes missing from the class list.
    """
    text = None
    if str(name_or_path) in split_names():
        text = _files().joinpath(f"{name_or_path}.json").read_text("utf-8")
    elif Path(name_or_path).is_file():
        text = Path(name_or_path).read_text("utf-8")
    if text is None:
        raise ConfigError(
            f"unknown zero-shot split '{name_or_path}': use one of {', '.join(split_names())} or a file"
        )
    try:
        data = json.loads(text)
        split = ZeroShotSplit(
            name=str(data["name"]),
            dataset=str(data["dataset"]),
            class_names=str(data.get("class_names", "groupvit")),
            background=bool(data["background"]),
            classes=tuple(data["classes"]),
            unseen=tuple(data["unseen"]),
            source=str(data.get("source", "")),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"zero-shot split {name_or_path} is malformed ({e}): see docs/MVP_SEG.md §5") from e
    missing = [c for c in split.unseen if c not in split.classes]
    if missing:
        raise ConfigError(f"zero-shot split {split.name}: unseen {missing} are not in its class list")
    return split


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def seen_unseen_miou(ious: dict[str, float | None], split: ZeroShotSplit) -> dict[str, float | None]:
    """``{"mIoU_S", "mIoU_U", "hIoU"}`` (percent, None where undefined) from per-class IoUs by name."""
    s = _mean([ious.get(c) for c in split.seen])
    u = _mean([ious.get(c) for c in split.unseen])
    h = None if s is None or u is None else (0.0 if s + u == 0 else 2 * s * u / (s + u))
    return {"mIoU_S": s, "mIoU_U": u, "hIoU": h}


def _class_ious(splits: dict[str, dict[str, Any]], split: ZeroShotSplit) -> dict[str, float | None]:
    """Per-class IoU by the split's names: by label position for one benchmark split of the same length,
    else by name across every evaluated split."""
    ious: dict[str, float | None] = {}
    for metrics in splits.values():
        rows = list(metrics.get("per_class", {}).items())
        if rows and split.background and rows[0][0] == "background":
            rows = rows[1:]
        if len(splits) == 1 and len(rows) == len(split.classes):
            return {c: row["IoU"] for c, (_, row) in zip(split.classes, rows)}
        ious.update({name: row["IoU"] for name, row in rows})
    return ious


def apply_split(result: Any, split: ZeroShotSplit) -> dict[str, float | None]:
    """Fill ``result.seen_mIoU`` / ``unseen_mIoU`` / ``hIoU`` of an :class:`pgseg_core.eval.result.EvalResult`
    from its per-class IoUs under ``split``; returns the three numbers plus the split name."""
    numbers = seen_unseen_miou(_class_ious(result.splits, split), split)
    result.seen_mIoU, result.unseen_mIoU, result.hIoU = numbers["mIoU_S"], numbers["mIoU_U"], numbers["hIoU"]
    return {"split": split.name, **numbers}
