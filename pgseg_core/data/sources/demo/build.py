"""The demo dataset as webdataset shards: train, val-caption and val-heldout composites plus
``index.json``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ....errors import DataError
from ....utils.progress import progress_ticker
from ...shard_set import ShardSet
from ...shards import Progress, new_index
from .compose import compose, encode_image
from .photos import Background, split_backgrounds
from .roots import DemoRoots
from .sources import load_demo_sources
from .sprites import DemoClass
from .vocab import make_caption

log = logging.getLogger("pgseg.data.sources.demo")

__all__ = ["SPLITS", "build_demo_shards"]

SPLITS = ("train", "val-caption", "val-heldout", "train-seen")
_SPLIT_STREAM = {"train": 0, "val-caption": 1, "val-heldout": 2, "train-seen": 3}
SEEN_TRAIN_SPLIT = (
    "train-seen"  # labelled caption-class composites for zero-shot training (docs/MVP_SEG.md §5)
)


def build_demo_shards(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 8000,
    n_val: int = 200,
    img_size: int = 224,
    roots: DemoRoots | None = None,
    shard_size: int = 1000,
    progress: Progress | None = None,
    vocab: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate the demo dataset as webdataset shards plus ``index.json``.

    Train samples hold ``jpg`` (RGB composite), ``txt`` (caption) and ``json`` ``{"classes": [...]}``
    (the classes in the image). Val samples (and the ``train-seen`` split: caption classes only, training
    backgrounds, its own random stream, for training with exact masks) hold ``jpg``, ``png`` (uint8 label
    map: 0 background, 1 + i = class i of the split's class list), ``txt`` and ``json`` ``{"classes":
    split class list, "split", "present", "caption"}``. The set is built beside ``out_dir`` and published
    there only when complete (:class:`~pgseg_core.data.shard_set.ShardSet`): an interrupted or failed build
    leaves ``out_dir`` as it was.

    Args:
        out_dir: output directory (missing or empty, or a shard set to replace with ``overwrite``).
        seed: generator seed; the same seed, sizes and sources give byte-identical shards.
        n_train: number of training composites.
        n_val: composites per validation split (val-caption and val-heldout) and of train-seen.
        img_size: composite side S in pixels (square images).
        roots: source locations (default: installed Debian/pip locations).
        shard_size: samples per tar file.
        progress: called as ``progress(done, total)`` after each composite (all splits together).
        vocab: vocabulary file (default: the package's ``demo_vocab.json``).
        overwrite: replace a shard set already at ``out_dir``.

    Returns:
        Summary ``{"out_dir", "index", "splits": {split: count}, "vocabulary", "class_items", "sources",
        "dropped_classes", "seconds"}``.

    Raises:
        DataError: a missing source (names the package to install) or too few usable classes.
        OutputError: ``out_dir`` cannot be used (see :class:`~pgseg_core.data.shard_set.ShardSet`) or
            the disk is full.
    """
    if img_size < 32:
        raise DataError(f"demo img_size must be at least 32 pixels, got {img_size}")
    if n_train < 0 or n_val < 0:
        raise DataError(f"demo sizes must be >= 0, got n_train={n_train}, n_val={n_val}")
    t0 = time.perf_counter()
    with ShardSet(out_dir, overwrite=overwrite) as dest:
        src = load_demo_sources(roots, img_size, vocab)
        train_bgs, val_only_bgs = split_backgrounds(src["backgrounds"])
        log.info(
            "demo sources loaded in %.1fs: %d caption classes, %d held-out, %d backgrounds",
            time.perf_counter() - t0,
            len(src["caption"]),
            len(src["heldout"]),
            len(src["backgrounds"]),
        )
        plan = [
            ("train", n_train, src["caption"], train_bgs),
            ("val-caption", n_val, src["caption"], src["backgrounds"]),
            ("val-heldout", n_val, src["heldout"], src["backgrounds"]),
            (SEEN_TRAIN_SPLIT, n_val, src["caption"], train_bgs),
        ]
        tick = progress_ticker(progress, sum(n for _, n, _, _ in plan))
        splits = {
            split: _write_split(dest, split, n, classes, bgs, seed, img_size, shard_size, tick)
            for split, n, classes, bgs in plan
        }
        summary = _write_demo_index(dest, splits, src, seed, img_size, val_only_bgs)
    return {**summary, "seconds": time.perf_counter() - t0}


def _write_split(
    dest: ShardSet,
    split: str,
    n: int,
    classes: list[DemoClass],
    backgrounds: list[Background],
    seed: int,
    img_size: int,
    shard_size: int,
    tick: Callable[[], None],
) -> dict[str, Any]:
    """Write ``n`` composites of one split (``tick()`` after each); returns the split's index entry
    ``{"shards", "count"}`` (plus ``"classes"`` for a validation split)."""
    names = [c.name for c in classes]
    with dest.split_writer(split, shard_size) as writer:
        for i in range(n):
            writer.write(_sample(split, i, classes, names, backgrounds, seed, img_size))
            tick()
        shards = writer.close()
    entry: dict[str, Any] = {"shards": shards, "count": n}
    if split == SEEN_TRAIN_SPLIT:  # not "classes": evaluation selects the splits that have a class list
        entry["seen_classes"] = names
    elif split != "train":
        entry["classes"] = names
    return entry


def _sample(
    split: str,
    i: int,
    classes: list[DemoClass],
    names: list[str],
    backgrounds: list[Background],
    seed: int,
    img_size: int,
) -> dict[str, Any]:
    """Composite ``i`` of ``split`` (its own random stream ``[seed, split, i]``) as a shard sample."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], i])
    image, label, pasted = compose(rng, classes, backgrounds, img_size)
    present = [names[c] for c in pasted]
    caption = make_caption(rng, [classes[c].phrase for c in pasted])
    sample: dict[str, Any] = {
        "__key__": f"{split}-{i:08d}",
        "jpg": encode_image(image, "JPEG", quality=92),
        "txt": caption,
    }
    if split == "train":
        sample["json"] = {"classes": present}
    else:
        sample["png"] = encode_image(label, "PNG")
        sample["json"] = {"classes": names, "split": split, "present": present, "caption": caption}
    return sample


def _write_demo_index(
    dest: ShardSet,
    splits: dict[str, dict[str, Any]],
    src: dict[str, Any],
    seed: int,
    img_size: int,
    val_only_bgs: list[Background],
) -> dict[str, Any]:
    """Write ``index.json`` of the written splits (last) and return the build summary without
    ``seconds`` (see :func:`build_demo_shards`)."""
    vocabulary = {"caption": [c.name for c in src["caption"]], "heldout": [c.name for c in src["heldout"]]}
    index = new_index(
        splits,
        seed=seed,
        vocabulary=vocabulary,
        sources=src["sources"],
        skipped=src["skipped"],
        generator="demo",
        img_size=img_size,
        class_items=src["class_items"],
        dropped_classes=src["dropped"],
        val_only_backgrounds=[f"{b.source}/{b.name}" for b in val_only_bgs],
    )
    index_path = dest.write_index(index)
    return {
        "out_dir": str(dest.out),
        "index": str(index_path),
        "splits": {k: v["count"] for k, v in splits.items()},
        "vocabulary": vocabulary,
        "class_items": src["class_items"],
        "sources": src["sources"],
        "dropped_classes": src["dropped"],
    }
