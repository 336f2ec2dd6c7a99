"""The Segmenter facade: embed the vocabulary once, segment one image or many image files.

Symbols: C classes (no background), H×W pixels. Label maps: 0 background, 1 + c class c.

``Segmenter(model, classes, eval_cfg, device)`` wraps a model already in memory;
:meth:`Segmenter.from_checkpoint` reads a checkpoint (on first use), with the text-embedding cache
(:mod:`.text_cache`), the torch or ONNX Runtime image encoder (:mod:`.onnx`) and eval overrides.
:meth:`Segmenter.predict` segments one image (:func:`pgseg_core.inference.predict`); :meth:`Segmenter.run`
segments image files into label PNGs, overlays, JSON and COCO RLE (:mod:`.runner`, :mod:`.outputs`),
batching the crops of several images through one encoder forward (:func:`pgseg_core.inference.predict_batch`)
or reading class-independent features from a feature cache (:mod:`pgseg_core.cache.features`). Both paths
apply the rule ``eval.rule`` names, so their masks are identical.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import eval_with_overrides
from ..errors import ConfigError, OutputError
from ..inference import (
    ClassEmbeddings,
    ClassSpec,
    Encoder,
    PreparedImage,
    TorchEncoder,
    embed_classes,
    extract_image_features,
    predict,
    predict_batch,
    scores_from_features,
)
from ..utils.hashing import image_cache_key
from .inputs import InputImage
from .outputs import DEFAULT_FORMATS, OutputPlan, plan_outputs, prepare_output_folders
from .runner import SegmentSummary, run_plans

__all__ = ["MAX_PNG_CLASSES", "SegResult", "SegmentSummary", "Segmenter", "check_run_options"]

logger = logging.getLogger("pgseg.segment")

MAX_PNG_CLASSES = 254  # label values 1..254; 0 is background and 255 the ignore value
BACKENDS = ("torch", "onnx")


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


@dataclass
class _Loaded:
    """What a segmenter needs to predict: the model and everything derived from it."""

    model: Any
    eval_cfg: Any
    class_emb: ClassEmbeddings
    encoder: Encoder
    checkpoint_info: Any = None


@dataclass(frozen=True)
class _CheckpointSource:
    """How :meth:`Segmenter.from_checkpoint` loads, on first use."""

    checkpoint: str | Path
    overrides: dict[str, Any]
    templates: list[str] | None
    onnx_path: str | Path | None
    text_cache: Path | None
    bf16: bool


def check_run_options(batch_size: int, feature_cache: Any | None, backend: str) -> None:
    """Validate the options of :meth:`Segmenter.run` that do not need a model.

    Raises:
        ConfigError: ``batch_size`` below 1, or a feature cache with a backend other than torch.
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if feature_cache is not None and backend != "torch":
        raise ConfigError("a feature cache works with the torch backend only")


def eval_config_of(run_cfg: Any, overrides: dict[str, Any] | None, templates: list[str] | None) -> Any:
    """``run_cfg.eval`` with ``overrides`` (EvalConfig field names, ``eval.`` prefix optional) and
    ``templates`` (None keeps the config's) applied.

    Raises:
        ConfigError: an unknown field or a bad value.
    """
    eval_cfg = eval_with_overrides(run_cfg, overrides)
    if templates:
        eval_cfg = dataclasses.replace(eval_cfg, templates=list(templates))
    return eval_cfg


def _as_spec(classes: Sequence[str] | ClassSpec) -> ClassSpec:
    if isinstance(classes, ClassSpec):
        return classes
    names = [str(n).strip() for n in classes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"duplicate class names {dupes}: list each class once")
    return ClassSpec.from_names(names)


def _check_backend(
    backend: str, onnx_path: str | Path | None, export_onnx_to: str | Path | None, device: str
) -> tuple[str, str | Path | None, str]:
    """(backend, ONNX file, device) after ``--export-onnx``; the ONNX backend runs on the CPU."""
    if export_onnx_to is not None:
        if backend == "onnx" and onnx_path is not None:
            raise ConfigError("give either an ONNX file to export to or an existing ONNX model, not both")
        backend, onnx_path = "onnx", export_onnx_to
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}': use torch or onnx")
    if backend == "onnx" and onnx_path is None:
        raise ConfigError("the onnx backend needs an ONNX model (written by export-onnx)")
    if backend == "onnx":
        if device not in ("auto", "cpu"):
            raise ConfigError(f"the onnx backend runs on the CPU, not on device {device}")
        device = "cpu"
    return backend, onnx_path, device


class Segmenter:
    """Open-vocabulary segmenter over a fixed class list (docs/METHOD.md §4.2-4.3, rule ``eval.rule``).

    The class text embeddings are computed once; :meth:`predict` and :meth:`run` then only run the image
    encoder (or read its features from a feature cache).

    Args:
        model: a PGSeg-contract model, already on ``device``; it is put in eval mode.
        class_names: C class names to segment (background is implicit, label 0), or a
            :class:`~pgseg_core.inference.ClassSpec` with synonyms and background words.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (resize, slide, rule, bg_thresh, top_k, templates).
        device: torch device of the model.
        class_emb: precomputed embeddings of the vocabulary (e.g. from the text cache); computed if None.
        encoder: image encoder of :meth:`run` (crops -> CropFeatures); :class:`TorchEncoder` of ``model``
            (bf16 autocast on CUDA) if None.

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
        *,
        encoder: Encoder | None = None,
    ) -> None:
        self._setup(_as_spec(class_names), torch.device(device), "torch")
        if hasattr(model, "eval"):
            model.eval()
        if class_emb is None:
            class_emb = embed_classes(model, self.spec, list(eval_cfg.templates), self.device)
        encoder = encoder if encoder is not None else TorchEncoder(model, self.device)
        self._state = _Loaded(model, eval_cfg, class_emb, encoder)
        self.text_cache_state = "off"

    def _setup(self, spec: ClassSpec, device: torch.device, backend: str) -> None:
        self.spec = spec
        self.classes = spec.names
        self.device = device
        self.backend = backend
        self._state: _Loaded | None = None
        self._source: _CheckpointSource | None = None
        self._logit_scale: float | None = None
        self.text_cache_state = "unused"

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        classes: Sequence[str] | ClassSpec,
        *,
        templates: list[str] | None = None,
        eval_overrides: dict[str, Any] | None = None,
        device: str = "auto",
        backend: str = "torch",
        onnx_path: str | Path | None = None,
        export_onnx_to: str | Path | None = None,
        text_cache: str | Path | None = None,
        bf16: bool = True,
    ) -> "Segmenter":
        """A segmenter over a checkpoint; the checkpoint is read on first use (:meth:`load`).

        Args:
            checkpoint: any checkpoint :func:`pgseg_core.models.factory.load_checkpoint` reads.
            classes: class names or a :class:`~pgseg_core.inference.ClassSpec` (synonyms, background words).
            templates: prompt templates (None: the checkpoint's eval templates).
            eval_overrides: EvalConfig fields such as ``{"bg_thresh": 0.5, "top_k": 3, "short_side": 448}``.
            device: ``auto | cpu | cuda | cuda:N`` (bf16 autocast on CUDA unless ``bf16=False``).
            backend: ``torch`` or ``onnx`` (the image encoder through ONNX Runtime on the CPU, from
                ``onnx_path`` written by :func:`.onnx.export_checkpoint`; text embeddings still come from
                ``checkpoint``).
            export_onnx_to: export the checkpoint's image encoder to this ``.onnx`` file now, and use it
                (``backend`` becomes ``onnx``).
            text_cache: folder of the text-embedding cache (:mod:`.text_cache`); None = off.

        Raises:
            ConfigError: duplicated class names, bad backend / ONNX / device / bg_thresh options.
            DeviceError: an unavailable device. CheckpointError, DependencyError: from the ONNX export.
        """
        from ..utils.device import resolve_device

        spec = _as_spec(classes)
        backend, onnx_path, device = _check_backend(backend, onnx_path, export_onnx_to, device)
        overrides = dict(eval_overrides or {})
        dev = resolve_device(device)
        if export_onnx_to is not None:
            from .onnx import export_checkpoint

            export_checkpoint(checkpoint, export_onnx_to)
        self = cls.__new__(cls)
        self._setup(spec, dev, backend)
        cache_dir = Path(text_cache) if text_cache is not None else None
        self._source = _CheckpointSource(checkpoint, overrides, templates, onnx_path, cache_dir, bool(bf16))
        return self

    # ------------------------------------------------------------------------------------------------------
    # loading

    def load(self) -> None:
        """Read the checkpoint of :meth:`from_checkpoint` now (no-op when loaded).

        Raises:
            CheckpointError: an unreadable checkpoint or ONNX file. ConfigError: bad eval overrides or
            templates. DependencyError: onnxruntime missing.
        """
        if self._state is None:
            self._state = self._load_checkpoint()

    def _load_checkpoint(self) -> _Loaded:
        from ..checkpoint import load_checkpoint
        from .text_cache import cached_class_embeddings

        src = self._source
        model, info = load_checkpoint(src.checkpoint, self.device)
        eval_cfg = eval_config_of(info.config, src.overrides, src.templates)
        digest = None
        if src.text_cache is not None or self.backend == "onnx":
            try:
                digest = info.sha256[:16]
            except OSError as e:  # e.g. weights that are not plain files: run without the cache
                logger.warning("cannot hash %s (%s): text-embedding cache off", info.path, e)
        class_emb, hit = cached_class_embeddings(
            model, self.spec, list(eval_cfg.templates), self.device, digest=digest, cache_dir=src.text_cache
        )
        self.text_cache_state = "off" if src.text_cache is None else ("hit" if hit else "miss")
        self._logit_scale = float(model.logit_scale_value())
        if self.backend == "onnx":
            from .onnx import OnnxEncoder

            encoder: Encoder = OnnxEncoder(src.onnx_path, checkpoint_digest=digest)
        else:
            encoder = TorchEncoder(model, self.device, bf16=src.bf16)
        return _Loaded(model, eval_cfg, class_emb, encoder, info)

    def _loaded(self) -> _Loaded:
        self.load()
        return self._state

    @property
    def model(self) -> Any:
        return self._loaded().model

    @property
    def eval_cfg(self) -> Any:
        return self._loaded().eval_cfg

    @property
    def class_emb(self) -> ClassEmbeddings:
        return self._loaded().class_emb

    @property
    def encoder(self) -> Encoder:
        return self._loaded().encoder

    @property
    def logit_scale(self) -> float:
        """The model's s = min(exp(logit_scale), 100)."""
        if self._logit_scale is None:
            self._logit_scale = float(self.model.logit_scale_value())
        return self._logit_scale

    # ------------------------------------------------------------------------------------------------------
    # prediction

    def predict(self, image: np.ndarray) -> SegResult:
        """Segment one uint8 RGB image [H,W,3].

        Returns:
            :class:`SegResult` with the label map and per-class scores at the image's own size.

        Raises:
            DataError: ``image`` is not a uint8 [H,W,3] array.
        """
        label, scores = predict(self.model, image, self.class_emb, self.eval_cfg, self.device)
        return SegResult(label=label, scores=scores, classes=list(self.classes))

    def predict_images(
        self,
        images: list[np.ndarray],
        prepared: list[PreparedImage],
        paths: list[Path],
        *,
        max_crops: int = 32,
        feature_cache: Any | None = None,
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
        """Segment decoded images together (:func:`pgseg_core.inference.predict_batch`), or through
        ``feature_cache`` (features keyed by the SHA-256 of each file's bytes, computed and stored when
        missing, then :func:`pgseg_core.inference.scores_from_features`).

        Args:
            images: uint8 RGB [H0,W0,3] images.
            prepared: :func:`pgseg_core.inference.prepare_image` of each.
            paths: each image's file (the feature-cache key).
            max_crops: most crops per encoder forward.
            feature_cache: an open :class:`pgseg_core.cache.features.FeatureCache`, or None.

        Returns:
            (per image ``(label int64 [H0,W0], scores float32 [C+1,H0,W0])``, images read from the cache).
        """
        if not images:
            return [], 0
        if feature_cache is None:
            results = predict_batch(
                self.encoder,
                prepared,
                self.class_emb,
                self.logit_scale,
                self.eval_cfg,
                self.device,
                max_crops=max_crops,
            )
            return results, 0
        results, hits = [], 0
        for image, path in zip(images, paths):
            key = image_cache_key(path)
            if feature_cache.has(key):
                feats = feature_cache.get(key, self.device)
                hits += 1
            else:
                feats = extract_image_features(self.model, image, self.eval_cfg, self.device)
                feature_cache.put(key, feats)
            results.append(scores_from_features(feats, self.class_emb, self.eval_cfg, image=image))
        return results, hits

    # ------------------------------------------------------------------------------------------------------
    # files -> outputs

    def _open_feature_cache(self, path: str | Path) -> Any:
        from ..cache.features import CacheMeta, FeatureCache, feature_config_hash

        info = self._loaded().checkpoint_info
        if info is None:
            raise ConfigError("a feature cache file needs a Segmenter made with Segmenter.from_checkpoint")
        meta = CacheMeta(
            info.sha256,
            feature_config_hash(info.config.model, self.eval_cfg),
            "checkpoint",
            "segment",
        )
        return FeatureCache.open(path, meta)

    def _plan_run(
        self, images: Sequence[InputImage | Path | str], out_dir: Path, formats: Sequence[str]
    ) -> tuple[list[InputImage], list[OutputPlan]]:
        """The input items and their output plans of :meth:`run`; checks the class count and the output
        folders, and removes the temporary files killed runs left there and in the text cache."""
        if len(self.classes) > MAX_PNG_CLASSES:
            raise ConfigError(
                f"{len(self.classes)} classes do not fit an 8-bit label PNG: segment at most "
                f"{MAX_PNG_CLASSES} classes at once"
            )
        items = [im if isinstance(im, InputImage) else InputImage(Path(im), Path(im).name) for im in images]
        plans = plan_outputs([im.rel for im in items], out_dir, tuple(formats))
        text_dir = self._source.text_cache if self._source is not None else None
        if text_dir is not None and text_dir.exists() and not text_dir.is_dir():
            raise OutputError(f"{text_dir} is a file, not a folder: choose another text-cache folder")
        prepare_output_folders(out_dir, plans, (text_dir,) if text_dir is not None else ())
        return items, plans

    def run(
        self,
        images: Sequence[InputImage | Path | str],
        out_dir: str | Path,
        *,
        formats: Sequence[str] = DEFAULT_FORMATS,
        skip_existing: bool = False,
        batch_size: int = 1,
        num_workers: int = 0,
        missing: Sequence[tuple[str, str]] = (),
        feature_cache: str | Path | Any | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    ) -> SegmentSummary:
        """Segment image files and write the requested outputs under ``out_dir`` (see :mod:`.outputs`).

        Before the checkpoint is read, ``out_dir`` is created and the temporary files that killed runs left
        in the output folders and the text cache are removed; outputs are written atomically, so after a
        ``kill -9`` a rerun with ``skip_existing`` redoes exactly the images with a missing output.

        Args:
            images: :class:`~pgseg_core.segment.inputs.InputImage` items (plain paths are placed by file
                name); outputs mirror their relative paths under ``out_dir``.
            out_dir: output root.
            formats: subset of ``png, overlay, json, coco-rle``.
            skip_existing: skip (without decoding) images whose requested outputs all exist; when every
                image is skipped the checkpoint is never read.
            batch_size: images decoded and encoded together (their same-size crops share one forward).
            num_workers: DataLoader decode processes (0 = decode in this process); they are stopped when the
                run ends in any way, and on Linux die with this process on any signal, ``kill -9`` included.
            missing: ``(item, reason)`` inputs that resolved to nothing; counted as failed.
            feature_cache: an HDF5 feature cache file (docs/FEATURE_CACHE.md; needs :meth:`from_checkpoint`
                and the torch backend) or an open :class:`pgseg_core.cache.features.FeatureCache`: images it
                holds skip the image encoder, so a rerun with other classes, templates, bg_thresh or top-k
                only re-scores. Masks equal those of a run without it.
            on_record: called with one JSON-serialisable record per image, in input order within a batch:
                ``status`` "ok" (plus :func:`.outputs.image_record` fields and ``outputs``), "skipped"
                (``outputs``) or "failed" (``error``). An exception it raises (``BrokenPipeError`` when the
                reader of stdout went away) ends the run and propagates unchanged.
            progress: ``callback(done, total, {"images_per_s": float})`` after each batch.

        Returns:
            :class:`SegmentSummary`.

        Raises:
            ConfigError: more than 254 classes, a bad batch size, a feature cache with the ONNX backend or of
            another checkpoint, invalid eval settings. CheckpointError: as :meth:`load`. Bad images never
            raise: they are counted in ``failed``. OutputError: ``out_dir`` or the text-cache folder is a
            file, ``out_dir`` cannot be created (both before the checkpoint is read), or an output cannot be
            written (the run stops there; outputs already written are complete).
        """
        check_run_options(batch_size, feature_cache, self.backend)
        out_dir = Path(out_dir)
        items, plans = self._plan_run(images, out_dir, formats)
        if not items and not missing:
            logger.warning("no input images: nothing to segment")
        pending = any(not (skip_existing and p.all_exist()) for p in plans)
        if pending:
            self.load()  # before any record: a bad checkpoint fails the run up front
        opened = None
        if pending and isinstance(feature_cache, (str, Path)):
            feature_cache = opened = self._open_feature_cache(feature_cache)
        try:
            return run_plans(
                self,
                items,
                plans,
                out_dir,
                formats=formats,
                skip_existing=skip_existing,
                batch_size=batch_size,
                num_workers=num_workers,
                missing=missing,
                on_record=on_record,
                progress=progress,
                feature_cache=feature_cache if pending else None,
            )
        finally:
            if opened is not None:
                opened.close()
