"""One library entry point per pipeline stage; each CLI command parses its flags and calls one of these.

Each does a whole stage (load, run, write) through the package that owns it and returns what it did
(``TrainResult``, ``EvalReport``, ``SegmentSummary``, the builders' summaries). Long stages accept
``progress(phase, done, total, info)``. Flag checks live in the CLI."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import apply_overrides, load_config
from .errors import ConfigError, DataError, DependencyError

if TYPE_CHECKING:
    from .eval.report import EvalReport
    from .segment.options import SegmentOptions
    from .segment.runner import SegmentSummary
    from .train.loop import TrainResult

__all__ = ["prep_shards", "train", "evaluate_checkpoint", "segment_files", "export_onnx",
           "visualize_prototypes"]  # fmt: skip

Progress = Callable[[str, int, int, dict[str, Any]], None]


def _phase_cb(progress: Progress | None, phase: str) -> Callable[[int, int | None], None] | None:
    if progress is None:
        return None
    return lambda done, total=None: progress(phase, done, total or 0, {})


def prep_shards(source: str, out_dir: str | Path | None, *, images: str | Path | None = None,
                captions: str | Path | None = None, seed: int = 0, n_train: int = 8000, n_val: int = 200,
                img_size: int = 224, shard_size: int = 1000, photos_dir: str | Path | None = None,
                coco_root: str | Path | None = None, coco_splits: list[str] | None = None, workers: int = 0,
                progress: Progress | None = None, overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Build shards or convert evaluation labels in place (``pgseg prep-shards``).

    ``source``: ``demo`` (:func:`pgseg_core.data.sources.demo.build_demo_shards`; ``photos_dir`` also
    exports the bundled photos), ``folder`` (:func:`pgseg_core.data.sources.folder.write_folder_shards`) or
    ``coco-object`` (:func:`pgseg_core.eval.datasets.coco_object.convert_coco_object`; no ``out_dir``).
    Shard sets are published whole; one already at ``out_dir`` is replaced only with ``overwrite``.

    Raises:
        ConfigError: unknown source or a missing argument. DataError: bad sources. OutputError: unusable
            ``out_dir`` / ``photos_dir`` (checked before the build), a full disk.
    """
    if source == "coco-object":
        if coco_root is None:
            raise ConfigError("source coco-object needs coco_root (the coco_stuff164k folder)")
        from .eval.datasets.coco_object import convert_coco_object

        return convert_coco_object(coco_root, coco_splits or None, workers=workers,
                                   progress=_phase_cb(progress, "label maps"))  # fmt: skip
    if source not in ("demo", "folder"):
        raise ConfigError(f"unknown source '{source}': use 'demo', 'folder' or 'coco-object'")
    if out_dir is None:
        raise ConfigError(f"source {source} needs out_dir (the shard directory to write)")
    if source == "folder":
        if images is None:
            raise ConfigError("source folder needs images (a folder of images with captions)")
        from .data.sources.folder import write_folder_shards

        return write_folder_shards(images, out_dir, captions=captions, shard_size=shard_size,
                                   progress=_phase_cb(progress, "images"), overwrite=overwrite)  # fmt: skip
    from .data.sources.demo import build_demo_shards, export_demo_photos
    from .utils.io import ensure_dir

    if photos_dir is not None:
        ensure_dir(photos_dir)  # fail before the build, not after it
    tick = _phase_cb(progress, "composites")
    summary = build_demo_shards(out_dir, seed=seed, n_train=n_train, n_val=n_val, img_size=img_size,
                                shard_size=shard_size, progress=tick, overwrite=overwrite)  # fmt: skip
    if photos_dir is not None:
        summary["photos"] = export_demo_photos(photos_dir)
    return summary


def train(model: str, data: str, out_dir: str | Path, *, overrides: dict[str, Any] | None = None,
          resume: bool = False, overwrite: bool = False, init_checkpoint: str | None = None,
          device: str | None = None, progress: Progress | None = None) -> TrainResult:  # fmt: skip
    """Train ``model`` (a preset or config JSON, dotted ``overrides``) on the shards ``data`` into the run
    directory ``out_dir`` (:func:`pgseg_core.train.loop.fit`: a folder holding a run needs ``resume`` or
    ``overwrite``); ``device`` None keeps the config's ``train.device``.

    Raises:
        ConfigError, DataError, CheckpointError, DeviceError, OutputError: on bad inputs or output folders.
    """
    from .train.loop import fit

    changes: dict[str, Any] = {"data.train": str(data), **({"train.device": device} if device else {})}
    cfg = apply_overrides(load_config(model, overrides), changes)
    return fit(cfg, out_dir, resume=resume, overwrite=overwrite, init_checkpoint=init_checkpoint,
               progress=progress)  # fmt: skip


def _open_dataset(name: str, root: str | Path, split: str) -> Any:
    """``pgseg_core.eval.datasets.open_dataset`` (imported here so tests can substitute a fake)."""
    try:
        from .eval.datasets import open_dataset
    except ImportError as e:
        raise DependencyError(f"benchmark dataset readers are missing from this build ({e}): reinstall "
                              "pgseg or evaluate demo shards") from e  # fmt: skip
    return open_dataset(name, root, split=split)


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | None = None, *, dataset: str | None = None,
                        data_root: str | Path | None = None, protocol: str | None = None,
                        cache: str | Path | None = None, sweep: str | None = None, figures: Any = None,
                        splits: list[str] | None = None, eval_overrides: dict[str, Any] | None = None,
                        device: str = "auto", max_images: int | None = None, out: str | Path | None = None,
                        ignore_background: bool = False,
                        progress: Progress | None = None) -> EvalReport:  # fmt: skip
    """Evaluate a checkpoint on shards (``data``) or a benchmark ``dataset`` under ``data_root`` and write the
    metrics JSON to ``out`` (default :func:`pgseg_core.eval.report.metrics_path`, checked before any image is
    encoded). ``protocol``: default ``groupvit`` for a dataset, the checkpoint's settings for shards;
    ``eval_overrides`` apply last; ``cache``, ``sweep``, ``figures``: :func:`~.eval.report.evaluate_loaded`.
    ``ignore_background`` (shards): background pixels ignored, only the classes scored (:class:`EvalTarget`).

    Raises:
        ConfigError: not exactly one of ``data`` / ``dataset``, no ``data_root``, a bad protocol, key or
            sweep; ``ignore_background`` with a dataset. DataError: bad data or a foreign cache. OutputError:
            ``out`` or the cache unwritable; ``MetricsWriteError`` (carries the report) when the final write
            fails. CheckpointError, ...
    """
    from .checkpoint import load_checkpoint
    from .eval.protocol import model_family
    from .eval.report import CheckpointRef, EvalTarget, eval_settings, evaluate_loaded
    from .eval.report import check_ignore_background, check_metrics_path, metrics_path, write_metrics
    from .utils.device import resolve_device

    if (data is None) == (dataset is None):
        raise ConfigError("give either demo shards or a benchmark dataset name with its folder, not both")
    if dataset is not None and data_root is None:
        raise ConfigError(f"dataset {dataset} needs its folder (the dataset's mmseg-layout root)")
    check_ignore_background(dataset, ignore_background)
    if out is not None:
        check_metrics_path(out)  # before the checkpoint is even loaded
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, dev)
    eval_cfg, resolved = eval_settings(info.config, protocol, dataset, eval_overrides)
    if out is None:  # beside the checkpoint: checked before any image is encoded
        out = metrics_path(None, info.path, dataset, resolved.name if resolved is not None else "checkpoint")
        check_metrics_path(out, beside_checkpoint=True)
    if dataset is not None:
        split = (splits or ["val"])[0]
        target = EvalTarget(dataset=_open_dataset(dataset, data_root, split), name=dataset, splits=[split])
    else:
        target = EvalTarget(data=data, splits=splits, ignore_background=ignore_background)
    family = model_family(info.config.model)
    ref = CheckpointRef(info.path, info.step, info.config.name, info.source_format, family, info.sha256)
    report = evaluate_loaded(
        model, info.config, ref, target, eval_cfg=eval_cfg, resolved=resolved, device=dev, cache=cache,
        sweep=sweep, max_images=max_images, progress=_phase_cb(progress, "eval"), figures=figures,
    )  # fmt: skip
    return write_metrics(report, out)


def segment_files(inputs: list[str], checkpoint: str | Path, out_dir: str | Path, *,
                  classes: str | None = None, classes_file: str | Path | None = None,
                  bg_words: str | None = None, templates: list[str] | None = None,
                  templates_file: str | Path | None = None, options: SegmentOptions | None = None,
                  stdin: Iterable[str] | None = None, on_record: Callable[[dict], None] | None = None,
                  progress: Progress | None = None) -> SegmentSummary:  # fmt: skip
    """Segment image files into the named classes, writing label PNGs, overlays, JSON and/or COCO RLE under
    ``out_dir``: :meth:`pgseg_core.segment.Segmenter.from_checkpoint`, then ``.run``.

    ``inputs``: :func:`pgseg_core.segment.inputs.resolve_inputs` (``stdin`` for ``-``); vocabulary:
    :func:`pgseg_core.inference.parse_class_spec`; templates: :func:`pgseg_core.inference.read_templates`;
    ``options``: :class:`~pgseg_core.segment.options.SegmentOptions`; ``on_record`` gets a record per image.

    Raises:
        ConfigError, DataError, CheckpointError, DeviceError, DependencyError on bad settings or files; bad
        images never raise: they are counted in ``SegmentSummary.failed``.
    """
    from .inference import parse_class_spec, read_templates
    from .segment.inputs import resolve_inputs
    from .segment.options import SegmentOptions
    from .segment.outputs import parse_formats
    from .segment.segmenter import Segmenter, check_run_options

    opt = options or SegmentOptions()
    spec = parse_class_spec(classes, classes_file, bg_words)
    fmts, tpls, out_dir = parse_formats(opt.formats), read_templates(templates, templates_file), Path(out_dir)
    check_run_options(opt.batch_size, opt.feature_cache, "onnx" if opt.export_onnx_to else opt.backend)
    segmenter = Segmenter.from_checkpoint(
        checkpoint, spec, templates=tpls, eval_overrides=opt.eval_overrides, device=opt.device,
        backend=opt.backend, onnx_path=opt.onnx_path, export_onnx_to=opt.export_onnx_to,
        text_cache=opt.text_cache_dir(out_dir), bf16=opt.bf16,
    )  # fmt: skip
    resolved = resolve_inputs(inputs, recursive=opt.recursive, stdin=stdin)
    return segmenter.run(
        resolved.images, out_dir, formats=fmts, skip_existing=opt.skip_existing, batch_size=opt.batch_size,
        num_workers=opt.num_workers, missing=resolved.missing, feature_cache=opt.feature_cache,
        on_record=on_record, progress=(lambda d, t, i: progress("segment", d, t, i)) if progress else None,
    )  # fmt: skip


def export_onnx(checkpoint: str | Path, out: str | Path, *, size: int = 448) -> dict[str, Any]:
    """Export a checkpoint's image encoder to ``out`` (``.onnx`` + ``.json`` sidecar) traced at a square
    ``size`` (multiple of 16): :func:`pgseg_core.segment.onnx.export_checkpoint`."""
    from .segment.onnx import export_checkpoint

    return export_checkpoint(checkpoint, out, size=size)


def visualize_prototypes(inputs: list[str], checkpoint: str | Path | None, out_dir: str | Path, *,
                         cache: str | Path | None = None, max_images: int | None = None,
                         short_side: int | None = None, patches_per_prototype: int = 8, device: str = "auto",
                         progress: Progress | None = None) -> dict[str, Any]:  # fmt: skip
    """Render group maps, NPR prototype maps, the group <-> prototype matching with its HRS-kept pairs
    (docs/METHOD.md §3.2-3.4) and nearest patches per prototype into ``out_dir`` (PNGs, JSON, index.html).

    With ``inputs`` and a ``checkpoint`` the encoder runs on each image (:func:`pgseg_core.viz.run.
    visualize_model`); with ``cache`` alone the cache's ``viz`` entries render without a model
    (:func:`pgseg_core.viz.run.visualize_cache`; a ``checkpoint`` given must be the cache's).

    Raises:
        ConfigError: neither inputs nor cache, or inputs without a checkpoint. DataError: no readable input;
            a missing cache, one of another checkpoint or without ``viz`` entries. CheckpointError,
            DeviceError: as the loaders.
    """
    from .checkpoint import checkpoint_sha256, load_checkpoint
    from .segment.inputs import resolve_inputs
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
        raise ConfigError("a checkpoint is needed to encode images (a feature cache renders without one)")
    resolved = resolve_inputs(inputs)
    if not resolved.images:
        reasons = "; ".join(f"{item}: {why}" for item, why in resolved.missing)
        raise DataError(f"no images to visualize ({reasons or 'no inputs'})")
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, dev)
    return visualize_model(
        model, info.config, [im.path for im in resolved.images][:max_images], out_dir, device=dev,
        title=f"checkpoint {info.path} ({info.config.name}, step {info.step})",
        checkpoint_sha256=info.sha256 if cache is not None else "", cache=cache, short_side=short_side,
        failed=[{"image": item, "error": why} for item, why in resolved.missing],
        patches_per_prototype=patches_per_prototype, progress=tick,
    )  # fmt: skip
