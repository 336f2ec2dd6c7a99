"""Labelled images for MVP-SEG training and evaluation, from demo shards or the benchmark readers.

Every sample's label map is remapped into a vocabulary (a list of names, ``"background"`` first when the
data has background): a class outside the vocabulary becomes 255 (ignored). Training uses the seen classes
(unseen pixels are ignored, the zero-shot protocol); evaluation uses seen + unseen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..splits import ZeroShotSplit

__all__ = ["LabelledData", "open_labelled", "remap_label", "BACKGROUND"]

BACKGROUND = "background"


@dataclass
class LabelledData:
    """Named groups of samples: ``parts`` = [(name, factory of an iterator of ValSample-like objects)],
    ``background``: label 0 is background; ``classes``: every class of the data (no background)."""

    parts: list[tuple[str, Callable[[], Iterator[Any]]]]
    background: bool
    classes: list[str]
    name: str


def remap_label(label: np.ndarray, source_names: list[str], vocab: list[str]) -> np.ndarray:
    """uint8 [H, W] label in ``source_names`` order -> int64 [H, W] indices into ``vocab`` (255 outside)."""
    lut = np.full(256, 255, dtype=np.int64)
    index = {n: i for i, n in enumerate(vocab)}
    for j, name in enumerate(source_names[:255]):
        lut[j] = index.get(name, 255)
    return lut[np.asarray(label, dtype=np.uint8)]


def sample_names(sample: Any, background: bool) -> list[str]:
    """The label order of a sample (``"background"`` then its classes, or its classes)."""
    return ([BACKGROUND] if background else []) + list(sample.classes)


def _shards(data: str, parts: list[str]) -> LabelledData:
    from ..data.loader import iter_val_samples
    from ..data.shards import read_index

    index = read_index(data)
    known = index.get("splits", {})
    missing = [p for p in parts if p not in known]
    if missing:
        raise DataError(f"{data} has no split(s) {missing}: it has {sorted(known)}; rebuild with prep-shards")
    classes: list[str] = []
    for p in parts:
        for c in known[p].get("classes") or known[p].get("seen_classes") or []:
            if c not in classes:
                classes.append(c)
    return LabelledData(
        [(p, lambda p=p: iter_val_samples(data, p)) for p in parts], True, classes, f"shards:{data}"
    )


def _dataset(name: str, root: str, split: str, class_names: str) -> LabelledData:
    from ..eval.datasets import open_dataset

    ds = open_dataset(name, root, split=split)
    names = list(ds.class_spec(class_names).names)

    def samples() -> Iterator[Any]:
        for s in ds:
            s.classes = names
            yield s

    return LabelledData([(split, samples)], bool(ds.info.has_background), names, f"{name}/{split}")


def open_labelled(
    data: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    *,
    parts: list[str] | None = None,
    zs: ZeroShotSplit | None = None,
) -> LabelledData:
    """Demo shards (``data``; ``parts`` default val-caption + val-heldout) or a benchmark ``dataset`` under
    ``data_root`` (``parts`` = [its split], default val; class names of the zero-shot split's class file).

    Raises:
        DataError: missing splits, an unreadable dataset.
    """
    if dataset is not None:
        return _dataset(dataset, str(data_root), (parts or ["val"])[0], zs.class_names if zs else "groupvit")
    return _shards(str(data), parts or ["val-caption", "val-heldout"])


def vocabulary(data: LabelledData, classes: list[str]) -> list[str]:
    """The prediction vocabulary: ``"background"`` first when the data has it, then ``classes``."""
    return ([BACKGROUND] if data.background else []) + [c for c in classes if c != BACKGROUND]
