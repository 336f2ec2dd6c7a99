"""Segmenter facade (embed the vocabulary once, segment many images) and the files -> outputs runner.

Symbols: C classes (no background), H×W pixels. Label maps: 0 background, 1 + c class c.

:func:`segment_images` is the engine of ``pgseg segment``: a torch DataLoader decodes images (in worker
processes with ``num_workers > 0``), :func:`.batch.predict_batch` runs the encoder on the crops of a batch of
images together, and :mod:`.outputs` writes the requested files atomically. A bad image is recorded and
skipped; the run goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.transforms import load_image_rgb
from ..errors import ConfigError, DataError
from ..utils.hashing import image_cache_key
from .batch import Encoder, predict_batch, prepare_image
from .classes import ClassEmbeddings, ClassSpec, embed_classes
from .inference import extract_image_features, predict, scores_from_features
from .inputs import InputImage
from .outputs import DEFAULT_FORMATS, plan_outputs, write_outputs

logger = logging.getLogger("pgseg.segment")

MAX_PNG_CLASSES = 254  # label values 1..254; 0 is background and 255 the ignore value


@dataclass
class SegResult:
    """Prediction for one image.

    Attributes:
        label: int64 [H,W], 0 background, 1 + c class ``classes[c]``.
        scores: float32 [C+1,H,W] per-pixel scores in [0, 1], channel 0 background.
        classes: the C class names (without background).
    """

    label: np.ndarray
    scores: np.ndarray
    classes: list[str]


class Segmenter:
    """Open-vocabulary segmenter over a fixed class list (GroupViT rule, pgseg_method.md §4.3).

    The class text embeddings are computed once at construction; :meth:`predict` then only runs the
    image encoder.

    Args:
        model: a PGSeg-contract model, already on ``device``; it is put in eval mode.
        class_names: C class names to segment (background is implicit, label 0), or a
            :class:`~pgseg_core.segment.classes.ClassSpec` with synonyms and background words.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (resize, slide, bg_thresh, top_k, templates).
        device: torch device of the model.
        class_emb: precomputed embeddings of the vocabulary (e.g. from the text cache); computed if None.

    Raises:
        ConfigError: empty or duplicated class names, or bad templates.
    """

    def __init__(
        self,
        model: Any,
        class_names: list[str] | ClassSpec,
        eval_cfg: Any,
        device: torch.device | str,
        class_emb: ClassEmbeddings | None = None,
    ) -> None:
        spec = class_names if isinstance(class_names, ClassSpec) else None
        if spec is None:
            names = [str(n).strip() for n in class_names]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ConfigError(f"duplicate class names {dupes}: list each class once")
            spec = ClassSpec.from_names(names)
        self.model = model
        self.spec = spec
        self.classes = spec.names
        self.eval_cfg = eval_cfg
        self.device = torch.device(device)
        if hasattr(model, "eval"):
            model.eval()
        self.class_emb = (
            class_emb
            if class_emb is not None
            else embed_classes(model, spec, list(eval_cfg.templates), self.device)
        )

    def predict(self, image: np.ndarray) -> SegResult:
        """Segment one uint8 RGB image [H,W,3].

        Returns:
            :class:`SegResult` with the label map and per-class scores at the image's own size.

        Raises:
            DataError: ``image`` is not a uint8 [H,W,3] array.
        """
        label, scores = predict(self.model, image, self.class_emb, self.eval_cfg, self.device)
        return SegResult(label=label, scores=scores, classes=list(self.classes))


class _DecodeDataset(torch.utils.data.Dataset):
    """Decode + resize + normalise one image per item; errors come back as text instead of raising."""

    def __init__(self, paths: list[Path], eval_cfg: Any) -> None:
        self.paths = paths
        self.eval_cfg = eval_cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, Any, str | None]:
        try:
            image = np.asarray(load_image_rgb(self.paths[i]))  # DataError on a bad file
            return i, image, prepare_image(image, self.eval_cfg), None
        except DataError as e:
            return i, None, None, str(e)
        except Exception as e:  # noqa: BLE001 - a decoder bug must not end the whole run
            return i, None, None, f"cannot read {self.paths[i]}: {type(e).__name__}: {e}"


def _as_list(batch: list) -> list:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decode workers: one thread each, the model keeps the others


def segment_images(
    encoder: Encoder,
    images: Sequence[InputImage | Path | str],
    class_emb: ClassEmbeddings,
    class_names: list[str],
    logit_scale: float,
    out_dir: str | Path,
    eval_cfg: Any,
    device: torch.device | str,
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    skip_existing: bool = False,
    batch_size: int = 1,
    num_workers: int = 0,
    missing: Sequence[tuple[str, str]] = (),
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    feature_cache: Any | None = None,
    model: Any | None = None,
) -> dict[str, Any]:
    """Segment image files and write the requested outputs under ``out_dir`` (see :mod:`.outputs`).

    Args:
        encoder: crops [B,3,h,w] -> :class:`~pgseg_core.segment.inference.CropFeatures`
            (:class:`~pgseg_core.segment.batch.TorchEncoder` or the ONNX Runtime encoder).
        images: :class:`~pgseg_core.segment.inputs.InputImage` items (plain paths are placed by file name).
        class_emb: embeddings of the C classes (synonyms, background words).
        class_names: the C display names (label 1 + c).
        logit_scale: the model's s = min(exp(logit_scale), 100).
        out_dir: output root; sub-folders mirror the inputs' relative paths.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (resize, slide, bg_thresh, top_k).
        device: where scores are computed.
        formats: subset of ``png, overlay, json, coco-rle``.
        skip_existing: skip (without decoding) images whose requested outputs all exist.
        batch_size: images decoded and encoded together (their same-size crops share one forward).
        num_workers: DataLoader decode processes (0 = decode in this process).
        missing: ``(item, reason)`` inputs that resolved to nothing; counted as failed.
        on_record: called with one JSON-serialisable record per image, in input order within a batch:
            ``status`` "ok" (plus :func:`.outputs.image_record` fields and ``outputs``), "skipped"
            (``outputs``) or "failed" (``error``).
        progress: ``callback(done, total, {"images_per_s": float})`` after each batch.
        feature_cache: an open :class:`pgseg_core.cache.features.FeatureCache` (docs/FEATURE_CACHE.md); each
            image's class-independent features are read from it by the SHA-256 of the file's bytes, or
            computed with ``model`` (:func:`.inference.extract_image_features`) and stored, then scored with
            :func:`.inference.scores_from_features`. A rerun with other classes, templates, bg_thresh or top-k
            then never runs the image encoder.
        model: the torch model; required with ``feature_cache``.

    Returns:
        ``{"out_dir", "classes", "formats", "total", "processed", "skipped", "failed": [{"image", "error"}],
        "num_failed", "seconds", "images_per_s"}``.

    Raises:
        ConfigError: more than 254 classes, or invalid eval settings (before any image is read).
    """
    if len(class_names) > MAX_PNG_CLASSES:
        raise ConfigError(
            f"{len(class_names)} classes do not fit an 8-bit label PNG: segment at most "
            f"{MAX_PNG_CLASSES} classes at once"
        )
    out_dir = Path(out_dir)
    items = [im if isinstance(im, InputImage) else InputImage(Path(im), Path(im).name) for im in images]
    plans = plan_outputs([im.rel for im in items], out_dir, tuple(formats))
    total = len(items) + len(missing)
    emit = on_record or (lambda record: None)
    failed: list[dict[str, str]] = []
    done = skipped = processed = 0
    start = time.perf_counter()

    def tick() -> None:
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(done, total, {"images_per_s": processed / elapsed if elapsed > 0 else 0.0})

    for item, reason in missing:
        failed.append({"image": item, "error": f"input {reason}: {item}"})
        emit({"image": item, "status": "failed", "error": failed[-1]["error"]})
        done += 1
    todo = []
    for im, plan in zip(items, plans):
        if skip_existing and plan.all_exist():
            skipped += 1
            done += 1
            emit(
                {
                    "image": str(im.path),
                    "status": "skipped",
                    "outputs": {f: str(p) for f, p in plan.files.items()},
                }
            )
        else:
            todo.append((im, plan))
    cache_counts = {"encoded": 0, "from_cache": 0}
    if feature_cache is not None and model is None:
        raise ConfigError("a feature cache needs the torch model to encode images it does not hold yet")
    tick()
    if todo:
        out_dir.mkdir(parents=True, exist_ok=True)
        loader = torch.utils.data.DataLoader(
            _DecodeDataset([im.path for im, _ in todo], eval_cfg),
            batch_size=max(int(batch_size), 1),
            shuffle=False,
            num_workers=max(int(num_workers), 0),
            collate_fn=_as_list,
            worker_init_fn=_worker_init if num_workers > 0 else None,
        )
        for batch in loader:
            good = [(i, image, prep) for i, image, prep, error in batch if error is None]
            if feature_cache is not None:
                results = []
                for i, image, _ in good:
                    feats, hit = _cached_features(
                        feature_cache, model, todo[i][0].path, image, eval_cfg, device
                    )
                    cache_counts["from_cache" if hit else "encoded"] += 1
                    results.append(scores_from_features(feats, class_emb, eval_cfg))
            else:
                results = (
                    predict_batch(
                        encoder,
                        [prep for _, _, prep in good],
                        class_emb,
                        logit_scale,
                        eval_cfg,
                        device,
                        max_crops=max(int(batch_size), 1) * 8,
                    )
                    if good
                    else []
                )
            by_index = {i: (image, res) for (i, image, _), res in zip(good, results)}
            for i, _, _, error in batch:
                im, plan = todo[i]
                done += 1
                if error is not None:
                    logger.warning("skipping %s: %s", im.path, error)
                    failed.append({"image": str(im.path), "error": error})
                    emit({"image": str(im.path), "status": "failed", "error": error})
                    continue
                image, (label, scores) = by_index[i]
                record = write_outputs(
                    plan, image, label, scores, list(class_names), str(im.path), float(eval_cfg.bg_thresh)
                )
                processed += 1
                emit({"image": record["image"], "status": "ok", **record})
                logger.debug("segmented %s -> %s", im.path, plan.stem_rel)
            tick()
    seconds = time.perf_counter() - start
    extra = (
        {
            "feature_cache": {
                "images_encoded": cache_counts["encoded"],
                "images_from_cache": cache_counts["from_cache"],
            }
        }
        if feature_cache is not None
        else {}
    )
    return {
        **extra,
        "out_dir": str(out_dir),
        "classes": list(class_names),
        "formats": list(formats),
        "total": total,
        "processed": processed,
        "skipped": skipped,
        "failed": failed,
        "num_failed": len(failed),
        "seconds": round(seconds, 3),
        "images_per_s": round(processed / seconds, 3) if seconds > 0 else 0.0,
    }


def _cached_features(
    cache: Any, model: Any, path: Path, image: np.ndarray, eval_cfg: Any, device: torch.device | str
) -> tuple[Any, bool]:
    """(ImageFeatures, whether they came from ``cache``); new features are stored before returning."""
    key = image_cache_key(path)
    if cache.has(key):
        return cache.get(key, device), True
    feats = extract_image_features(model, image, eval_cfg, device)
    cache.put(key, feats)
    return feats, False
