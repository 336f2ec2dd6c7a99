"""The evaluation loop shared by demo shards and benchmark datasets.

Per image, the class-independent features come from a feature cache or the image encoder, the scoring
rule runs once per eval setting (the main one and each sweep value), and each setting accumulates its own
confusion matrix on the model's device (label 0 background, 1 + c class c, 255 ignored; metrics follow
mmseg, see :mod:`pgseg_core.eval.metrics`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..inference import ClassSpec, check_eval_config, embed_classes, extract_image_features, iter_score_maps
from .metrics import ConfusionAccumulator, metrics_from_confusion
from .observe import observe_sample, observe_split
from .result import BACKGROUND
from .sweep import Sweep

__all__ = ["evaluate_stream", "evaluate_samples", "without_background"]

logger = logging.getLogger("pgseg.eval")


def _check_sample(sample: Any) -> tuple[np.ndarray, np.ndarray]:
    image, label = np.asarray(sample.image), np.asarray(sample.label)
    if label.ndim != 2 or image.ndim != 3 or label.shape != image.shape[:2]:
        raise DataError(
            f"sample '{sample.key}': label map {label.shape} does not match image {image.shape}; "
            "rebuild the shards / check the dataset files"
        )
    return image, label


def _check_labels(key: str, gt: torch.Tensor, num_classes: int, ignore_index: int = 255) -> None:
    valid = gt[gt != ignore_index]
    if valid.numel() and int(valid.max()) >= num_classes:
        raise DataError(
            f"sample '{key}': label value {int(valid.max())} is outside 0..{num_classes - 1} and is not the "
            f"ignore value {ignore_index}; check that the label map matches the class list"
        )


def _sample_features(model: Any, image: np.ndarray, cache: Any, cache_key: str, eval_cfg: Any, dev) -> tuple:
    """(ImageFeatures, came from the cache) for one sample; new features are stored in ``cache``."""
    if cache is not None and cache.has(cache_key):
        return cache.get(cache_key, dev), True
    feats = extract_image_features(model, image, eval_cfg, dev)
    if cache is not None:
        cache.put(cache_key, feats)
    return feats, False


def _summarise(conf: np.ndarray, names: list[str], spec: ClassSpec) -> dict[str, Any]:
    """:func:`metrics_from_confusion` plus ``mIoU_fg`` (mean IoU over the foreground classes)."""
    m = metrics_from_confusion(conf, names)
    fg = np.array([m["per_class"][c]["IoU"] for c in spec.names], dtype=np.float64)
    fg = fg[~np.isnan(fg)]
    m["mIoU_fg"] = float(fg.mean()) if fg.size else float("nan")
    return m


def _sweep_points(sweep: Sweep, accs: list[ConfusionAccumulator], names: list[str], spec: ClassSpec) -> list:
    points = []
    for value, acc in zip(sweep.values, accs):
        m = _summarise(acc.numpy(), names, spec)
        points.append({"value": value, **{k: m[k] for k in ("mIoU", "mIoU_fg", "mAcc", "aAcc")}})
    return points


def _accumulate(
    model: Any,
    samples: Iterable[Any],
    class_emb: Any,
    cfgs: list[Any],
    accs: list[ConfusionAccumulator],
    dev: torch.device,
    with_background: bool,
    cache: Any,
    key_prefix: str,
    max_images: int | None,
    on_image: Callable[[], None] | None,
    skip_bad: bool,
) -> tuple[int, int, int, list[str]]:
    """Score every sample under each setting of ``cfgs`` into its accumulator of ``accs``.

    Returns:
        (images evaluated, images encoded, images read from the cache, keys of skipped samples).
    """
    n = encoded = from_cache = 0
    skipped: list[str] = []
    rank, world = _rank_world()
    for pos, sample in enumerate(samples):
        if max_images is not None and (pos if world > 1 else n) >= max_images:
            break
        if pos % world != rank:  # torchrun: rank r takes samples r, r + W, ... (docs/TRAINING.md §6)
            continue
        key = str(sample.key)
        try:
            image, label = _check_sample(sample)
            gt = torch.from_numpy(np.require(label, requirements=["C", "W"])).to(dev)
            _check_labels(key, gt, accs[0].num_classes)
        except DataError as e:
            if not skip_bad:
                raise
            logger.warning("skipping %s", e)
            skipped.append(key)
        else:
            feats, hit = _sample_features(model, image, cache, key_prefix + key, cfgs[0], dev)
            from_cache, encoded = from_cache + int(hit), encoded + int(not hit)
            maps = iter_score_maps(feats, class_emb, cfgs, with_background=with_background, image=image)
            for (pred, _), acc in zip(maps, accs):
                acc.update(pred, gt)
                observe_sample(acc is accs[0], key, image, label, pred)  # kept for the eval figures
            n += 1
        if on_image is not None:
            on_image()
    return n, encoded, from_cache, skipped


def evaluate_stream(
    model: Any,
    samples: Iterable[Any],
    spec: ClassSpec,
    eval_cfg: Any,
    device: torch.device | str,
    *,
    with_background: bool = True,
    cache: Any = None,
    key_prefix: str = "",
    sweep: Sweep | None = None,
    max_images: int | None = None,
    on_image: Callable[[], None] | None = None,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Evaluate a stream of labelled samples against one class vocabulary (docs/EVAL.md).

    Args:
        model: a PGSeg-contract model on ``device`` (eval mode).
        samples: objects with ``.key``, ``.image`` uint8 [H,W,3] and ``.label`` uint8 [H,W] in the canonical
            convention (with background: 0 background, 1 + c class c; without: c; 255 ignore).
        spec: the C classes (synonyms, background words).
        eval_cfg: :class:`pgseg_core.config.EvalConfig`.
        device: torch device of the model.
        with_background: the labels have a background class (metrics over C + 1 classes) or not (C).
        cache: an open :class:`pgseg_core.cache.features.FeatureCache` or None.
        key_prefix: prepended to sample keys in the cache (e.g. the split name).
        sweep: evaluate these values of one class-dependent key as well.
        max_images: stop after this many evaluated samples (None = all).
        on_image: called after each sample (evaluated or skipped).
        skip_bad: skip (and count) samples whose label map does not fit instead of raising.

    Returns:
        :func:`metrics_from_confusion` over the class names (``["background"] + names`` with background;
        percent) plus ``mIoU_fg`` (without background), ``num_images``, ``classes``, ``seconds``,
        ``images_encoded``, ``images_from_cache``, ``skipped`` ({"count", "keys"}) and, with a sweep,
        ``sweep`` = {"key", "points": [{"value", "mIoU", "mIoU_fg", "mAcc", "aAcc"}]}.

    Raises:
        DataError: a malformed sample (naming its key) when ``skip_bad`` is False.
        ConfigError: invalid eval settings or background words on a dataset without background.
    """
    names = ([BACKGROUND] if with_background else []) + spec.names
    dev = torch.device(device)
    class_emb = embed_classes(model, spec, list(eval_cfg.templates), dev)
    cfgs = [eval_cfg]
    if sweep is not None:
        cfgs += [dataclasses.replace(eval_cfg, **{sweep.key: v}) for v in sweep.values]
    for cfg in cfgs:
        check_eval_config(cfg)
    accs = [ConfusionAccumulator(len(names), dev) for _ in cfgs]
    start = time.perf_counter()
    counts = _accumulate(model, samples, class_emb, cfgs, accs, dev, with_background, cache, key_prefix,
                         max_images, on_image, skip_bad)  # fmt: skip
    n, encoded, from_cache, skipped = _reduce_over_ranks(accs, counts)
    metrics = _summarise(accs[0].numpy(), names, spec)
    observe_split(names, accs[0].numpy())
    metrics["num_images"] = n
    metrics["classes"] = list(spec.names)
    metrics["has_background"] = bool(with_background)
    metrics["seconds"] = time.perf_counter() - start
    metrics["images_encoded"] = encoded
    metrics["images_from_cache"] = from_cache
    metrics["skipped"] = {"count": len(skipped), "keys": skipped[:50]}
    if sweep is not None:
        metrics["sweep"] = {"key": sweep.key, "points": _sweep_points(sweep, accs[1:], names, spec)}
    return metrics


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of a torchrun process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _reduce_over_ranks(accs: list[ConfusionAccumulator], counts: tuple) -> tuple[int, int, int, list[str]]:
    """With several processes: the confusion matrices and the counts summed over ranks (every rank ends
    with the whole evaluation's), the skipped keys gathered; otherwise ``counts`` unchanged."""
    if _rank_world()[1] == 1:
        return counts
    dist = torch.distributed
    for acc in accs:  # int64 sums: exactly the 1-process matrices
        dist.all_reduce(acc.counts)
    n, encoded, from_cache, skipped = counts
    totals = torch.tensor([n, encoded, from_cache], dtype=torch.int64, device=accs[0].counts.device)
    dist.all_reduce(totals)
    keys: list = [None] * dist.get_world_size()
    dist.all_gather_object(keys, skipped)
    n, encoded, from_cache = (int(v) for v in totals.tolist())
    return n, encoded, from_cache, [k for part in keys for k in part]


def evaluate_samples(
    model: Any,
    samples: Iterable[Any],
    class_names: list[str],
    eval_cfg: Any,
    device: torch.device | str,
    *,
    max_images: int | None = None,
    on_image: Callable[[], None] | None = None,
    cache: Any = None,
    key_prefix: str = "",
    sweep: Sweep | None = None,
    with_background: bool = True,
) -> dict[str, Any]:
    """Evaluate one split's samples against its class list (labels with background).

    Args:
        model: a PGSeg-contract model on ``device`` (put in eval mode by the caller).
        samples: objects with ``.key``, ``.image`` uint8 [H,W,3] and ``.label`` uint8 [H,W]
            (0 background, 1 + c class c, 255 ignore).
        class_names: the split's C class names.
        eval_cfg: :class:`pgseg_core.config.EvalConfig`.
        device: torch device of the model.
        max_images: stop after this many samples (None = all).
        on_image: called after each image.
        cache, key_prefix, sweep: see :func:`evaluate_stream`.
        with_background: False ignores the background pixels and scores the C classes alone
            (:func:`without_background`: the VOC20 / PC59 convention).

    Returns:
        :func:`evaluate_stream`'s metrics over ``["background"] + class_names`` (``class_names`` alone
        without background).

    Raises:
        DataError: a label map whose size differs from its image, or with values beyond the class list
            (the message names the sample key).
    """
    spec = ClassSpec.from_names(class_names)
    return evaluate_stream(
        model,
        samples if with_background else without_background(samples),
        spec,
        eval_cfg,
        device,
        with_background=with_background,
        cache=cache,
        key_prefix=key_prefix,
        sweep=sweep,
        max_images=max_images,
        on_image=on_image,
    )


def without_background(samples: Iterable[Any]) -> Iterator[Any]:
    """The samples with their background pixels ignored: label 0 (background) → 255, 1 + c → c, 255 kept.

    This is the label convention of the benchmarks without background (VOC20, PC59: mmseg's
    ``reduce_zero_label``), which MVP-SEG's zero-shot splits use (docs/MVP_SEG.md §5). Samples are
    dataclasses with a uint8 ``label`` [H, W]; each is copied, never changed in place.
    """
    lut = np.arange(256, dtype=np.int16) - 1
    lut[0] = lut[255] = 255
    table = lut.astype(np.uint8)
    for sample in samples:
        yield dataclasses.replace(sample, label=table[np.asarray(sample.label, dtype=np.uint8)])
