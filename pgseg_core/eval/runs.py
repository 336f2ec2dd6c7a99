"""Evaluation runs: the validation splits of a shard set (:func:`evaluate`) and benchmark datasets
(:func:`evaluate_dataset`), both through :func:`pgseg_core.eval.stream.evaluate_stream`.

For each shard split, the class names of ``index.json`` ("splits"[name]["classes"]) are embedded once with
``eval_cfg.templates``; each sample is predicted with the checkpoint's rule (docs/EVAL.md) and accumulated
into a confusion matrix over ``["background"] + classes``. :func:`evaluate_dataset` adapts any dataset
object with ``info.has_background``, ``class_spec(protocol)``, ``len`` and iteration (the mmseg-layout
readers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from ..errors import DataError
from ..inference.classes import ClassSpec
from ..utils.progress import progress_ticker
from .metrics import harmonic_mean
from .result import SEEN_SPLIT, UNSEEN_SPLIT, EvalResult
from .stream import evaluate_samples, evaluate_stream
from .sweep import Sweep

__all__ = ["evaluate", "evaluate_dataset", "config_dict"]

logger = logging.getLogger("pgseg.eval")


def _index_splits(index: Any) -> dict[str, Any]:
    splits = index.get("splits") if isinstance(index, dict) else getattr(index, "splits", None)
    if not isinstance(splits, dict):
        raise DataError("index.json has no 'splits' mapping: rebuild the shards with 'pgseg prep-shards'")
    return splits


def _split_classes(info: Any) -> list[str] | None:
    classes = info.get("classes") if isinstance(info, dict) else getattr(info, "classes", None)
    return list(classes) if classes is not None else None


def _select_splits(all_splits: dict[str, Any], splits: list[str] | None, data_spec: Any) -> list[str]:
    """The requested splits (default: every split with a class list), each checked to be evaluable."""
    val_splits = [name for name, info in all_splits.items() if _split_classes(info) is not None]
    if splits is None:
        splits = sorted(val_splits)
        if not splits:
            raise DataError(
                f"{data_spec} has no validation split with a class list: rebuild the shards with val splits"
            )
    for name in splits:
        if name not in val_splits:
            raise DataError(
                f"split '{name}' is not an evaluable split of {data_spec} "
                f"(available: {', '.join(sorted(val_splits)) or 'none'})"
            )
    return splits


def _total_images(all_splits: dict[str, Any], splits: list[str], max_images: int | None) -> int | None:
    """Images the splits will yield (capped at ``max_images`` each); None when a count is unknown."""
    total: int | None = 0
    for name in splits:
        info = all_splits[name]
        count = info.get("count") if isinstance(info, dict) else getattr(info, "count", None)
        if count is None or total is None:
            total = None
        else:
            total += min(int(count), max_images) if max_images is not None else int(count)
    return total


def config_dict(eval_cfg: Any) -> dict[str, Any]:
    """The eval settings as a plain dict (a dataclass or any object with attributes)."""
    return asdict(eval_cfg) if hasattr(eval_cfg, "__dataclass_fields__") else dict(vars(eval_cfg))


def evaluate(
    model: Any,
    data_spec: Any,
    *,
    splits: list[str] | None,
    eval_cfg: Any,
    device: torch.device | str,
    max_images: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    cache: Any = None,
    sweep: Sweep | None = None,
    with_background: bool = True,
) -> EvalResult:
    """Evaluate a model on the validation splits of a shard set (docs/METHOD.md §4).

    Args:
        model: a PGSeg-contract model on ``device``; it is put in eval mode.
        data_spec: what :func:`pgseg_core.data.shards.read_index` and
            :func:`pgseg_core.data.loader.iter_val_samples` accept (shard dir or index.json).
        splits: split names to evaluate; None = every split of index.json with a class list.
        eval_cfg: :class:`pgseg_core.config.EvalConfig`.
        device: torch device of the model.
        max_images: at most this many images per split (None = all).
        progress: optional ``callback(n_done, n_total)``, n_total None when the counts are unknown.
        cache: an open :class:`pgseg_core.cache.features.FeatureCache` (keys ``SPLIT/KEY``) or None.
        sweep: also evaluate these values of one class-dependent key (:func:`evaluate_stream`).
        with_background: False ignores the background pixels and scores the classes alone (the VOC20 / PC59
            convention, :func:`pgseg_core.eval.stream.without_background`).

    Returns:
        :class:`EvalResult` (per-split metrics, seen / unseen foreground mIoU and hIoU when both
        "val-caption" and "val-heldout" were evaluated).

    Raises:
        DataError: an unknown split, a split without a class list, or a malformed sample.
        ConfigError: invalid eval settings.
    """
    from ..data.loader import iter_val_samples
    from ..data.shards import read_index

    all_splits = _index_splits(read_index(data_spec))
    splits = _select_splits(all_splits, splits, data_spec)
    total = _total_images(all_splits, splits, max_images)
    if hasattr(model, "eval"):
        model.eval()
    tick = progress_ticker(progress, total)

    results: dict[str, dict[str, Any]] = {}
    for name in splits:
        classes = _split_classes(all_splits[name]) or []
        logger.info("evaluating %s (%d classes)", name, len(classes))
        metrics = evaluate_samples(
            model,
            iter_val_samples(data_spec, name),
            classes,
            eval_cfg,
            device,
            max_images=max_images,
            on_image=tick,
            cache=cache,
            key_prefix=f"{name}/",
            sweep=sweep,
            with_background=with_background,
        )
        numbers = [metrics[k] for k in ("mIoU", "mIoU_fg", "mAcc", "aAcc", "num_images")]
        logger.info("%s: mIoU %.2f (fg %.2f), mAcc %.2f, aAcc %.2f over %d images", name, *numbers)
        results[name] = metrics

    seen = results[SEEN_SPLIT]["mIoU_fg"] if SEEN_SPLIT in results else None
    unseen = results[UNSEEN_SPLIT]["mIoU_fg"] if UNSEEN_SPLIT in results else None
    h_iou = harmonic_mean(seen, unseen) if seen is not None and unseen is not None else None
    return EvalResult(
        splits=results, seen_mIoU=seen, unseen_mIoU=unseen, hIoU=h_iou, eval_config=config_dict(eval_cfg)
    )


def evaluate_dataset(
    model: Any,
    dataset: Any,
    *,
    class_names: str,
    eval_cfg: Any,
    device: torch.device | str,
    split_name: str = "val",
    max_images: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    cache: Any = None,
    sweep: Sweep | None = None,
    class_spec: ClassSpec | None = None,
) -> EvalResult:
    """Evaluate a model on a benchmark dataset (mmseg layouts, via ``pgseg_core.eval.datasets``).

    Any object works that has ``.info.has_background`` (and optionally ``.info.name``),
    ``.class_spec(protocol) -> ClassSpec``, ``__len__`` and ``__iter__`` yielding ValSample-like objects
    (``key``, ``image`` uint8 [H,W,3], ``label`` uint8 [H,W] canonical). With background the metrics are
    over ``["background"] + classes`` (label 0 background, 1 + c class c); without background there is no
    background channel and the metrics are over the C classes (label c). Samples whose label map does not
    fit are skipped and counted.

    Args:
        model: a PGSeg-contract model on ``device``; put in eval mode.
        dataset: the dataset object (see above).
        class_names: which class-name files to use (``"groupvit"`` or ``"sclip"``, a protocol's
            ``class_names``), passed to ``dataset.class_spec``.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (e.g. from
            :func:`pgseg_core.eval.protocol.resolve_protocol`).
        device: torch device of the model.
        split_name: the key of the result in ``EvalResult.splits``.
        max_images, progress, cache, sweep: as in :func:`evaluate`.
        class_spec: use this vocabulary instead of ``dataset.class_spec(class_names)``.

    Returns:
        :class:`EvalResult` with one split and ``dataset`` filled.

    Raises:
        DataError: an empty dataset. ConfigError: invalid eval settings.
    """
    info = dataset.info
    with_bg = bool(info.has_background)
    spec = class_spec if class_spec is not None else dataset.class_spec(class_names)
    name = str(getattr(info, "name", "") or type(dataset).__name__)
    total = len(dataset)
    if total == 0:
        raise DataError(f"dataset {name} ({split_name}) has no samples: check the dataset folder")
    if max_images is not None:
        total = min(total, max_images)
    if hasattr(model, "eval"):
        model.eval()
    tick = progress_ticker(progress, total)

    logger.info(
        "evaluating %s/%s: %d images, %d classes%s",
        name,
        split_name,
        total,
        len(spec),
        " + background" if with_bg else "",
    )
    metrics = evaluate_stream(
        model,
        iter(dataset),
        spec,
        eval_cfg,
        device,
        with_background=with_bg,
        cache=cache,
        sweep=sweep,
        max_images=max_images,
        on_image=tick,
        skip_bad=True,
    )
    return EvalResult(
        splits={split_name: metrics},
        eval_config=config_dict(eval_cfg),
        dataset=_dataset_summary(name, split_name, with_bg, spec, metrics, len(dataset), class_names),
    )


def _dataset_summary(
    name: str, split: str, with_bg: bool, spec: ClassSpec, metrics: dict, size: int, class_names: str
) -> dict[str, Any]:
    """Log the dataset's headline numbers and return :attr:`EvalResult.dataset`."""
    logger.info(
        "%s: mIoU %.2f, mAcc %.2f, aAcc %.2f over %d images (%d skipped)",
        name,
        metrics["mIoU"],
        metrics["mAcc"],
        metrics["aAcc"],
        metrics["num_images"],
        metrics["skipped"]["count"],
    )
    return {
        "name": name,
        "split": split,
        "has_background": with_bg,
        "num_classes": len(spec),
        "num_images": metrics["num_images"],
        "dataset_size": size,
        "skipped": metrics["skipped"]["count"],
        "class_names": class_names,
    }
