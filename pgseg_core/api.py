"""One library entry point per pipeline stage; the CLI commands are thin wrappers around these.

Each function takes plain Python values, does the whole stage (load, run, write), and returns a
JSON-serialisable summary. Long stages accept ``progress(phase, done, total, info)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import apply_overrides, load_config
from .errors import ConfigError, DataError, DependencyError
from .utils.io import atomic_write_json

if TYPE_CHECKING:
    from .eval.report import EvalReport
    from .segment.runner import SegmentSummary

__all__ = [
    "prep_shards",
    "train",
    "evaluate_checkpoint",
    "segment_files",
    "resolve_inputs",
    "export_onnx",
    "visualize_prototypes",
]

_log = logging.getLogger("pgseg.api")

Progress = Callable[[str, int, int, dict[str, Any]], None]


def _phase_cb(progress: Progress | None, phase: str) -> Callable[[int, int | None], None] | None:
    if progress is None:
        return None
    return lambda done, total=None: progress(phase, done, total or 0, {})


def prep_shards(
    source: str,
    out_dir: str | Path | None,
    *,
    images: str | Path | None = None,
    captions: str | Path | None = None,
    seed: int = 0,
    n_train: int = 8000,
    n_val: int = 200,
    img_size: int = 224,
    shard_size: int = 1000,
    photos_dir: str | Path | None = None,
    coco_root: str | Path | None = None,
    coco_splits: list[str] | None = None,
    workers: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build training/validation shards, or convert evaluation labels in place.

    Args:
        source: ``"demo"`` (built-in composites from real photos, cutouts, clip art and emoji),
            ``"folder"`` (a folder of images with captions, given by ``images``) or ``"coco-object"``
            (COCO-Object label maps next to the raw COCO-Stuff-164k PNGs of ``coco_root``, GroupViT's
            mapping, see :func:`pgseg_core.eval.datasets.coco_object.convert_coco_object`).
        out_dir: shard directory; gets ``*.tar`` shards and ``index.json`` (not used by "coco-object").
        images / captions: folder source only (see
            :func:`pgseg_core.data.sources.folder.write_folder_shards`).
        seed, n_train, n_val, img_size, shard_size: demo source sizes (n_val per validation split).
        photos_dir: demo source only: also export the bundled real photos (for ``pgseg segment``) here.
        coco_root / coco_splits / workers: coco-object source only: the coco_stuff164k folder, the splits
            ("train", "val"; default all present) and the number of worker processes.

    Raises:
        ConfigError: unknown source, or a missing ``images`` / ``coco_root`` / ``out_dir``.
        DataError: missing sources or bad files.
    """
    if source == "coco-object":
        if coco_root is None:
            raise ConfigError(
                "source coco-object needs coco_root (the coco_stuff164k folder with "
                "annotations/val2017/*.png)"
            )
        from .eval.datasets.coco_object import convert_coco_object

        return convert_coco_object(
            coco_root, coco_splits or None, workers=workers, progress=_phase_cb(progress, "label maps")
        )
    if out_dir is None:
        raise ConfigError(f"source {source} needs out_dir (the shard directory to write)")
    if source == "demo":
        from .data.sources.demo import build_demo_shards

        summary = build_demo_shards(
            out_dir,
            seed=seed,
            n_train=n_train,
            n_val=n_val,
            img_size=img_size,
            shard_size=shard_size,
            progress=_phase_cb(progress, "composites"),
        )
        if photos_dir is not None:
            from .data.sources.demo import export_demo_photos

            summary["photos"] = export_demo_photos(photos_dir)
        return summary
    if source == "folder":
        if images is None:
            raise ConfigError("source folder needs images (a folder of images with captions)")
        from .data.sources.folder import write_folder_shards

        return write_folder_shards(
            images, out_dir, captions=captions, shard_size=shard_size, progress=_phase_cb(progress, "images")
        )
    raise ConfigError(f"unknown source '{source}': use 'demo', 'folder' or 'coco-object'")


def train(
    model: str,
    data: str,
    out_dir: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    init_checkpoint: str | None = None,
    device: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``model`` (a preset name or config JSON) on the shards ``data`` into ``out_dir``.

    Raises:
        ConfigError, DataError, CheckpointError, DeviceError: on bad inputs.
    """
    from .train.loop import fit

    cfg = load_config(model, overrides)
    changes: dict[str, Any] = {"data.train": str(data)}
    if device:
        changes["train.device"] = device
    cfg = apply_overrides(cfg, changes)
    result = fit(cfg, out_dir, resume=resume, init_checkpoint=init_checkpoint, progress=progress)
    return {
        "out_dir": result.out_dir,
        "checkpoint": result.checkpoint,
        "steps": result.steps,
        "device": result.device,
        "seconds": round(result.seconds, 1),
        "final": result.final,
        "stopped_early": result.stopped_early,
    }


def _open_dataset(name: str, root: str | Path, split: str) -> Any:
    """``pgseg_core.eval.datasets.open_dataset`` (imported here so tests can substitute a fake)."""
    try:
        from .eval.datasets import open_dataset
    except ImportError as e:
        raise DependencyError(
            f"benchmark dataset readers are missing from this build ({e}): reinstall pgseg "
            "or evaluate demo shards"
        ) from e
    return open_dataset(name, root, split=split)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | None = None,
    *,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    protocol: str | None = None,
    cache: str | Path | None = None,
    sweep: str | None = None,
    splits: list[str] | None = None,
    eval_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    max_images: int | None = None,
    out: str | Path | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate a checkpoint on validation shards (``data``) or a benchmark ``dataset`` read from
    ``data_root`` (mIoU, mAcc, aAcc, per class; seen / unseen hIoU on the demo splits), and write the
    metrics JSON to ``out`` (default ``metrics.json`` beside the checkpoint for shards,
    ``metrics_<dataset>_<protocol>.json`` for a dataset). ``protocol`` (``groupvit``, ``sclip``) defaults to
    ``groupvit`` for a dataset and to the checkpoint's own eval settings for shards; ``eval_overrides``
    (``{"bg_thresh": 0.5}``) apply last. ``cache`` and ``sweep``: see
    :func:`pgseg_core.eval.report.evaluate_loaded`.

    Raises:
        ConfigError: neither or both of ``data`` / ``dataset``, a dataset without ``data_root``, an unknown
            protocol / eval key / sweep. DataError: bad data, or a feature cache of another checkpoint.
        CheckpointError, DeviceError, DependencyError: see the loaders.
    """
    from .eval.protocol import model_family
    from .eval.report import CheckpointRef, EvalTarget, eval_settings, evaluate_loaded
    from .checkpoint import load_checkpoint
    from .utils.device import resolve_device

    if (data is None) == (dataset is None):
        raise ConfigError("give either demo shards or a benchmark dataset name with its folder, not both")
    if dataset is not None and data_root is None:
        raise ConfigError(f"dataset {dataset} needs its folder (the dataset's mmseg-layout root)")
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, dev)
    eval_cfg, resolved = eval_settings(info.config, protocol, dataset, eval_overrides)
    if dataset is not None:
        split = (splits or ["val"])[0]
        target = EvalTarget(dataset=_open_dataset(dataset, data_root, split), name=dataset, splits=[split])
    else:
        target = EvalTarget(data=data, splits=splits)
    family = model_family(info.config.model)
    ref = CheckpointRef(info.path, info.step, info.config.name, info.source_format, family, info.sha256)
    report = evaluate_loaded(
        model, info.config, ref, target, eval_cfg=eval_cfg, resolved=resolved, device=dev, cache=cache,
        sweep=sweep, max_images=max_images, progress=_phase_cb(progress, "eval"),
    )  # fmt: skip
    if out is None:
        ck = Path(info.path)
        name = "metrics.json" if dataset is None else f"metrics_{dataset}_{report.protocol['name']}.json"
        out = (ck if ck.is_dir() else ck.parent) / name
    atomic_write_json(out, report.to_dict())
    report.written_to = str(out)
    return report


def resolve_inputs(inputs: list[str], *, recursive: bool = False, stdin: Iterable[str] | None = None):
    """Expand files, directories (``recursive``), glob patterns and ``-`` (paths on ``stdin``).

    Returns:
        :class:`pgseg_core.segment.inputs.ResolvedInputs`: ``images`` (path + output-relative path, duplicates
        removed) and ``missing`` (item, reason) pairs; never raises for a bad item.
    """
    from .segment.inputs import resolve_inputs as _resolve

    return _resolve(inputs, recursive=recursive, stdin=stdin)


def segment_files(
    inputs: list[str],
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    classes: str | None = None,
    classes_file: str | Path | None = None,
    bg_words: str | None = None,
    templates: list[str] | None = None,
    templates_file: str | Path | None = None,
    eval_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    formats: str | list[str] | None = None,
    recursive: bool = False,
    stdin: Iterable[str] | None = None,
    skip_existing: bool = False,
    batch_size: int = 1,
    num_workers: int = 0,
    backend: str = "torch",
    onnx_path: str | Path | None = None,
    text_cache: str | Path | bool | None = True,
    bf16: bool = True,
    export_onnx_to: str | Path | None = None,
    feature_cache: str | Path | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
) -> SegmentSummary:
    """Segment image files into the named classes and write label PNGs, overlays, JSON and/or COCO RLE.

    :meth:`pgseg_core.segment.Segmenter.from_checkpoint` then :meth:`~pgseg_core.segment.Segmenter.run`, which
    document the arguments; here ``inputs`` go through :func:`resolve_inputs`, the vocabulary through
    :func:`pgseg_core.inference.parse_class_spec`, the templates through
    :func:`pgseg_core.inference.read_templates`, and ``text_cache`` True means ``out_dir/.pgseg_cache``.

    Returns:
        :class:`pgseg_core.segment.runner.SegmentSummary` (``to_dict()`` for JSON).

    Raises:
        ConfigError, DataError, CheckpointError, DeviceError, DependencyError on bad settings or files; bad
        images never raise: they are counted in ``failed``.
    """
    from .inference import parse_class_spec, read_templates
    from .segment.outputs import parse_formats
    from .segment.segmenter import Segmenter, check_run_options

    spec = parse_class_spec(classes, classes_file, bg_words)
    fmts = parse_formats(formats)
    tpls = read_templates(templates, templates_file)
    check_run_options(batch_size, feature_cache, "onnx" if export_onnx_to is not None else backend)
    out_dir = Path(out_dir)
    cache_dir = (out_dir / ".pgseg_cache" if text_cache is True else Path(text_cache)) if text_cache else None
    segmenter = Segmenter.from_checkpoint(
        checkpoint,
        spec,
        templates=tpls,
        eval_overrides=eval_overrides,
        device=device,
        backend=backend,
        onnx_path=onnx_path,
        export_onnx_to=export_onnx_to,
        text_cache=cache_dir,
        bf16=bf16,
    )
    resolved = resolve_inputs(inputs, recursive=recursive, stdin=stdin)
    summary = segmenter.run(
        resolved.images,
        out_dir,
        formats=fmts,
        skip_existing=skip_existing,
        batch_size=batch_size,
        num_workers=num_workers,
        missing=resolved.missing,
        feature_cache=feature_cache,
        on_record=on_record,
        progress=(lambda d, t, info: progress("segment", d, t, info)) if progress else None,
    )
    return summary


def export_onnx(checkpoint: str | Path, out: str | Path, *, size: int = 448) -> dict[str, Any]:
    """Export a checkpoint's image encoder to ONNX (``pgseg export-onnx``), with a ``.json`` sidecar:
    :func:`pgseg_core.segment.onnx.export_checkpoint`.

    Args:
        checkpoint: any checkpoint :func:`pgseg_core.checkpoint.load_checkpoint` reads.
        out: the ``.onnx`` file.
        size: square tracing size in pixels, a multiple of 16 (inputs of any multiple of 16 work later).

    Returns:
        The sidecar dict plus ``"path"`` and ``"sidecar"``.

    Raises:
        ConfigError: a bad size. CheckpointError, DependencyError: unreadable checkpoint, onnx missing.
    """
    from .segment.onnx import export_checkpoint

    return export_checkpoint(checkpoint, out, size=size)


def visualize_prototypes(
    inputs: list[str],
    checkpoint: str | Path | None,
    out_dir: str | Path,
    *,
    cache: str | Path | None = None,
    max_images: int | None = None,
    short_side: int | None = None,
    patches_per_prototype: int = 8,
    device: str = "auto",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Render what the image encoder does with each image (``pgseg visualize-prototypes``): group maps per
    grouping stage, NPR prototype maps, the Hungarian group <-> prototype matching with its HRS-kept pairs
    (docs/METHOD.md §3.2-3.4), and across the images the patches nearest to every prototype; PNGs, JSON and
    a static ``index.html`` under ``out_dir``.

    With ``inputs`` (files, folders: :func:`resolve_inputs`) and a ``checkpoint`` the encoder runs on each
    image (:func:`pgseg_core.viz.run.visualize_model`); with ``cache`` alone every image the cache's ``viz``
    section holds is rendered without a model (:func:`pgseg_core.viz.run.visualize_cache`); a ``checkpoint``
    given then must be the cache's. ``max_images`` caps the inputs (sorted order) or cached entries.

    Raises:
        ConfigError: neither inputs nor cache, or inputs without a checkpoint. DataError: no readable input;
            a missing cache, one of another checkpoint or without ``viz`` entries. CheckpointError,
            DeviceError: as the loaders.
    """
    from .checkpoint import checkpoint_sha256, load_checkpoint
    from .utils.device import resolve_device
    from .viz.run import visualize_cache, visualize_model

    tick = _phase_cb(progress, "visualize")
    if not inputs:
        if cache is None:
            raise ConfigError("nothing to visualize: give images, or a feature cache to render what it holds")
        want = checkpoint_sha256(checkpoint) if checkpoint is not None else ""
        return visualize_cache(
            cache, out_dir, checkpoint_sha256=want, checkpoint_name=str(checkpoint), max_images=max_images,
            patches_per_prototype=patches_per_prototype, progress=tick,
        )  # fmt: skip
    if checkpoint is None:
        raise ConfigError(
            "a checkpoint is needed to encode images (a feature cache alone renders without one)"
        )
    resolved = resolve_inputs(inputs)
    if not resolved.images:
        reasons = "; ".join(f"{item}: {why}" for item, why in resolved.missing)
        raise DataError(f"no images to visualize ({reasons or 'no inputs'})")
    paths = [im.path for im in resolved.images][:max_images]
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, dev)
    return visualize_model(
        model, info.config, paths, out_dir, device=dev, title=f"checkpoint {info.path} ({info.config.name}, "
        f"step {info.step})", checkpoint_sha256=info.sha256 if cache is not None else "",
        failed=[{"image": item, "error": why} for item, why in resolved.missing], cache=cache,
        short_side=short_side, patches_per_prototype=patches_per_prototype, progress=tick,
    )  # fmt: skip
