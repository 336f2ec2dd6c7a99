"""Zero-shot segmentation evaluation over the validation splits of a shard set or a benchmark dataset.

:func:`evaluate_stream` is the loop shared by both: per image, the class-independent features come from a
feature cache or the encoder, the scoring rule runs once per eval setting (the main one and each sweep
value), and each setting accumulates its own confusion matrix on the model's device.
:func:`evaluate` walks the splits of demo shards; :func:`evaluate_dataset` adapts any dataset object with
``info.has_background``, ``class_spec(protocol)``, ``len`` and iteration (the mmseg-layout readers of
``pgseg_core.data.benchmarks``).

For each split, the class names of ``index.json`` ("splits"[name]["classes"]) are embedded once with
``eval_cfg.templates``; each sample is predicted with the GroupViT rule (pgseg_method.md §4.2-4.3) and
accumulated into a confusion matrix over ``["background"] + classes`` (label 0 background, 1 + c class c,
255 ignored). Metrics follow mmseg (see :mod:`pgseg_core.eval.metrics`).

Seen / unseen: "val-caption" holds classes named in training captions (seen), "val-heldout" classes never
named (unseen). When both are evaluated, ``hIoU`` is the harmonic mean of their foreground mIoU (mean over
the split's own classes, background excluded, so the shared background class does not mask the gap).
"""

from __future__ import annotations

import dataclasses
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
from ..inference import ClassSpec, check_eval_config, embed_classes, extract_image_features, iter_score_maps
from .metrics import ConfusionAccumulator, harmonic_mean, metrics_from_confusion
from .sweep import Sweep

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
    """Evaluate a stream of labelled samples against one class vocabulary (pgseg_method.md §4).

    Per image, the class-independent features come from ``cache`` when it has the sample's key, else
    from the image encoder (:func:`extract_image_features`, then stored in ``cache``); the scoring rule
    (:func:`score_maps`) is applied once for ``eval_cfg`` and once per sweep value, each into its own
    confusion matrix on the model's device.

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
    n = encoded = from_cache = 0
    skipped: list[str] = []
    start = time.perf_counter()
    for sample in samples:
        if max_images is not None and n >= max_images:
            break
        key = str(sample.key)
        try:
            image, label = _check_sample(sample)
            gt = torch.from_numpy(np.require(label, requirements=["C", "W"])).to(dev)
            _check_labels(key, gt, len(names))
        except DataError as e:
            if not skip_bad:
                raise
            logger.warning("skipping %s", e)
            skipped.append(key)
            if on_image is not None:
                on_image()
            continue
        cache_key = key_prefix + key
        if cache is not None and cache.has(cache_key):
            feats = cache.get(cache_key, dev)
            from_cache += 1
        else:
            feats = extract_image_features(model, image, eval_cfg, dev)
            encoded += 1
            if cache is not None:
                cache.put(cache_key, feats)
        maps = iter_score_maps(feats, class_emb, cfgs, with_background=with_background)
        for (pred, _), acc in zip(maps, accs):
            acc.update(pred, gt)
        n += 1
        if on_image is not None:
            on_image()

    def summarise(conf: np.ndarray) -> dict[str, Any]:
        m = metrics_from_confusion(conf, names)
        fg = np.array([m["per_class"][c]["IoU"] for c in spec.names], dtype=np.float64)
        fg = fg[~np.isnan(fg)]
        m["mIoU_fg"] = float(fg.mean()) if fg.size else float("nan")
        return m

    metrics = summarise(accs[0].numpy())
    metrics["num_images"] = n
    metrics["classes"] = list(spec.names)
    metrics["has_background"] = bool(with_background)
    metrics["seconds"] = time.perf_counter() - start
    metrics["images_encoded"] = encoded
    metrics["images_from_cache"] = from_cache
    metrics["skipped"] = {"count": len(skipped), "keys": skipped[:50]}
    if sweep is not None:
        points = []
        for value, acc in zip(sweep.values, accs[1:]):
            m = summarise(acc.numpy())
            points.append({"value": value, **{k: m[k] for k in ("mIoU", "mIoU_fg", "mAcc", "aAcc")}})
        metrics["sweep"] = {"key": sweep.key, "points": points}
    return metrics


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

    Returns:
        :func:`evaluate_stream`'s metrics over ``["background"] + class_names``.

    Raises:
        DataError: a label map whose size differs from its image, or with values beyond the class list
            (the message names the sample key).
    """
    spec = ClassSpec.from_names(class_names)
    return evaluate_stream(
        model,
        samples,
        spec,
        eval_cfg,
        device,
        with_background=True,
        cache=cache,
        key_prefix=key_prefix,
        sweep=sweep,
        max_images=max_images,
        on_image=on_image,
    )


def _ticker(progress: Callable[[int, int | None], None] | None, total: int | None) -> Callable[[], None]:
    """A callback that counts finished images and reports ``progress(done, total)`` after each."""
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return tick


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
        cache: an open :class:`pgseg_core.cache.features.FeatureCache` (keys ``SPLIT/KEY``) or None.
        sweep: also evaluate these values of one class-dependent key (:func:`evaluate_stream`).

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
    tick = _ticker(progress, total)

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
    """Evaluate a model on a benchmark dataset (mmseg layouts, via ``pgseg_core.data.benchmarks``).

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
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (e.g. from :func:`pgseg_core.eval.protocol.resolve_protocol`).
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
        raise DataError(f"dataset {name} ({split_name}) has no samples: check --data-root")
    if max_images is not None:
        total = min(total, max_images)
    if hasattr(model, "eval"):
        model.eval()
    tick = _ticker(progress, total)

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
    logger.info(
        "%s: mIoU %.2f, mAcc %.2f, aAcc %.2f over %d images (%d skipped)",
        name,
        metrics["mIoU"],
        metrics["mAcc"],
        metrics["aAcc"],
        metrics["num_images"],
        metrics["skipped"]["count"],
    )
    cfg_dict = asdict(eval_cfg) if hasattr(eval_cfg, "__dataclass_fields__") else dict(vars(eval_cfg))
    ds = {
        "name": name,
        "split": split_name,
        "has_background": with_bg,
        "num_classes": len(spec),
        "num_images": metrics["num_images"],
        "dataset_size": len(dataset),
        "skipped": metrics["skipped"]["count"],
        "class_names": class_names,
    }
    return EvalResult(splits={split_name: metrics}, eval_config=cfg_dict, dataset=ds)
