"""Zero-shot segmentation evaluation over the validation splits of a shard set.

For each split, the class names of ``index.json`` ("splits"[name]["classes"]) are embedded once with
``eval_cfg.templates``; each sample is predicted with the GroupViT rule (pgseg_method.md §4.2-4.3) and
accumulated into a confusion matrix over ``["background"] + classes`` (label 0 background, 1 + c class c,
255 ignored). Metrics follow mmseg (see :mod:`pgseg_core.eval.metrics`).

Seen / unseen: "val-caption" holds classes named in training captions (seen), "val-heldout" classes never
named (unseen). When both are evaluated, ``hIoU`` is the harmonic mean of their foreground mIoU (mean over
the split's own classes, background excluded, so the shared background class does not mask the gap).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..segment.inference import compute_class_embeddings, predict
from .metrics import confusion_matrix, harmonic_mean, metrics_from_confusion

logger = logging.getLogger("pgseg.eval")

SEEN_SPLIT = "val-caption"
UNSEEN_SPLIT = "val-heldout"
BACKGROUND = "background"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
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
    """

    splits: dict[str, dict[str, Any]]
    seen_mIoU: float | None = None
    unseen_mIoU: float | None = None
    hIoU: float | None = None
    eval_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with NaN / inf replaced by None (valid JSON)."""
        return _json_safe(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)


def _index_splits(index: Any) -> dict[str, Any]:
    splits = index.get("splits") if isinstance(index, dict) else getattr(index, "splits", None)
    if not isinstance(splits, dict):
        raise DataError("index.json has no 'splits' mapping: rebuild the shards with 'pgseg prep-shards'")
    return splits


def _split_classes(info: Any) -> list[str] | None:
    classes = info.get("classes") if isinstance(info, dict) else getattr(info, "classes", None)
    return list(classes) if classes is not None else None


def evaluate_samples(
    model: Any,
    samples: Iterable[Any],
    class_names: list[str],
    eval_cfg: Any,
    device: torch.device | str,
    *,
    max_images: int | None = None,
    on_image: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Evaluate one split's samples against its class list.

    Args:
        model: a PGSeg-contract model on ``device`` (put in eval mode by the caller).
        samples: objects with ``.key``, ``.image`` uint8 [H,W,3] and ``.label`` uint8 [H,W]
            (0 background, 1 + c class c, 255 ignore).
        class_names: the split's C class names.
        eval_cfg: :class:`pgseg_core.config.EvalConfig`.
        device: torch device of the model.
        max_images: stop after this many samples (None = all).
        on_image: called after each image.

    Returns:
        :func:`metrics_from_confusion` over ``["background"] + class_names`` (percent), plus
        ``"mIoU_fg"``, ``"num_images"``, ``"classes"`` and ``"seconds"``.

    Raises:
        DataError: a label map whose size differs from its image, or with values beyond the class list
            (the message names the sample key).
    """
    names = [BACKGROUND] + list(class_names)
    class_emb = compute_class_embeddings(model, list(class_names), list(eval_cfg.templates), device)
    conf = np.zeros((len(names), len(names)), dtype=np.int64)
    n = 0
    start = time.perf_counter()
    for sample in samples:
        if max_images is not None and n >= max_images:
            break
        image, label = np.asarray(sample.image), np.asarray(sample.label)
        if label.ndim != 2 or image.ndim != 3 or label.shape != image.shape[:2]:
            raise DataError(
                f"sample '{sample.key}': label map {label.shape} does not match image {image.shape}; "
                "rebuild the shards"
            )
        pred, _ = predict(model, image, class_emb, eval_cfg, device)
        try:
            conf += confusion_matrix(pred, label, len(names))
        except DataError as e:
            raise DataError(f"sample '{sample.key}': {e}") from e
        n += 1
        if on_image is not None:
            on_image()
    metrics = metrics_from_confusion(conf, names)
    fg_iou = np.array([metrics["per_class"][c]["IoU"] for c in class_names], dtype=np.float64)
    fg_iou = fg_iou[~np.isnan(fg_iou)]
    metrics["mIoU_fg"] = float(fg_iou.mean()) if fg_iou.size else float("nan")
    metrics["num_images"] = n
    metrics["classes"] = list(class_names)
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def evaluate(
    model: Any,
    data_spec: Any,
    *,
    splits: list[str] | None,
    eval_cfg: Any,
    device: torch.device | str,
    max_images: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> EvalResult:
    """Evaluate a model on the validation splits of a shard set (pgseg_method.md §4).

    Args:
        model: a PGSeg-contract model on ``device``; it is put in eval mode.
        data_spec: what :func:`pgseg_core.data.shards.read_index` and
            :func:`pgseg_core.data.loader.iter_val_samples` accept (shard dir or index.json).
        splits: split names to evaluate; None = every split of index.json with a class list.
        eval_cfg: :class:`pgseg_core.config.EvalConfig`.
        device: torch device of the model.
        max_images: at most this many images per split (None = all).
        progress: optional ``callback(n_done, n_total)``, n_total None when the counts are unknown.

    Returns:
        :class:`EvalResult` (per-split metrics, seen / unseen foreground mIoU and hIoU when both
        "val-caption" and "val-heldout" were evaluated).

    Raises:
        DataError: an unknown split, a split without a class list, or a malformed sample.
        ConfigError: invalid eval settings.
    """
    from ..data.loader import iter_val_samples
    from ..data.shards import read_index

    index = read_index(data_spec)
    all_splits = _index_splits(index)
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

    total: int | None = 0
    for name in splits:
        info = all_splits[name]
        count = info.get("count") if isinstance(info, dict) else getattr(info, "count", None)
        if count is None or total is None:
            total = None
        else:
            total += min(int(count), max_images) if max_images is not None else int(count)

    if hasattr(model, "eval"):
        model.eval()
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

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
        )
        logger.info(
            "%s: mIoU %.2f (fg %.2f), mAcc %.2f, aAcc %.2f over %d images",
            name,
            metrics["mIoU"],
            metrics["mIoU_fg"],
            metrics["mAcc"],
            metrics["aAcc"],
            metrics["num_images"],
        )
        results[name] = metrics

    seen = results[SEEN_SPLIT]["mIoU_fg"] if SEEN_SPLIT in results else None
    unseen = results[UNSEEN_SPLIT]["mIoU_fg"] if UNSEEN_SPLIT in results else None
    h_iou = harmonic_mean(seen, unseen) if seen is not None and unseen is not None else None
    cfg_dict = asdict(eval_cfg) if hasattr(eval_cfg, "__dataclass_fields__") else dict(vars(eval_cfg))
    return EvalResult(splits=results, seen_mIoU=seen, unseen_mIoU=unseen, hIoU=h_iou, eval_config=cfg_dict)
