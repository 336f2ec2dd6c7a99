"""One library entry point per pipeline stage; the CLI commands are thin wrappers around these.

Each function takes plain Python values, does the whole stage (load, run, write), and returns a
JSON-serialisable summary. Long stages accept ``progress(phase, done, total, info)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig, apply_overrides, load_config
from .errors import ConfigError, DataError, DependencyError
from .utils.io import atomic_write_json

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
            mapping, see :func:`pgseg_core.data.coco_object.convert_coco_object`).
        out_dir: shard directory; gets ``*.tar`` shards and ``index.json`` (not used by "coco-object").
        images / captions: folder source only (see :func:`pgseg_core.data.shards.write_folder_shards`).
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
                "--source coco-object needs --coco-root DIR (the coco_stuff164k folder with "
                "annotations/val2017/*.png)"
            )
        from .data.coco_object import convert_coco_object

        return convert_coco_object(
            coco_root, coco_splits or None, workers=workers, progress=_phase_cb(progress, "label maps")
        )
    if out_dir is None:
        raise ConfigError(f"--source {source} needs --out DIR (the shard directory to write)")
    if source == "demo":
        from .data.demo import build_demo_shards

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
            from .data.demo import export_demo_photos

            summary["photos"] = export_demo_photos(photos_dir)
        return summary
    if source == "folder":
        if images is None:
            raise ConfigError("--source folder needs --images DIR (a folder of images with captions)")
        from .data.shards import write_folder_shards

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


def _eval_config(cfg: RunConfig, overrides: dict[str, Any] | None):
    if not overrides:
        return cfg.eval
    prefixed = {(k if k.startswith("eval.") else f"eval.{k}"): v for k, v in overrides.items()}
    return apply_overrides(cfg, prefixed).eval


def _open_dataset(name: str, root: str | Path, split: str) -> Any:
    """``pgseg_core.data.benchmarks.open_dataset`` (imported here so tests can substitute a fake)."""
    try:
        from .data.benchmarks import open_dataset
    except ImportError as e:
        raise DependencyError(
            f"benchmark dataset readers are missing from this build ({e}): reinstall pgseg "
            "or evaluate demo shards with --data"
        ) from e
    return open_dataset(name, root, split=split)


def _checkpoint_hash(path: str | Path) -> str:
    from .checkpoint import checkpoint_sha256

    try:
        return checkpoint_sha256(path)
    except (FileNotFoundError, OSError) as e:
        _log.warning("cannot hash checkpoint %s: %s", path, e)
        return ""


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
) -> dict[str, Any]:
    """Evaluate a checkpoint on validation shards or on a benchmark dataset (mIoU, mAcc, aAcc, per class).

    Args:
        checkpoint: any checkpoint :func:`pgseg_core.checkpoint.load_checkpoint` reads.
        data: shard directory / index.json holding the validation splits (demo shards), or
        dataset: a benchmark dataset name (``voc21``, ``pc60``, ``coco-object``, ...) read from ``data_root``.
        protocol: protocol preset (``groupvit``, ``sclip``; default ``groupvit`` for a dataset, the
            checkpoint's own eval settings for shards). The bg_thresh column follows the checkpoint family
            (PGSeg when the model has NPR, else GroupViT).
        cache: HDF5 feature cache path (:mod:`pgseg_core.cache.features`); created, resumed, or read.
        sweep: ``KEY=START:STOP:STEP`` of a class-dependent key (bg_thresh, prob_thresh, top_k, logit_scale).
        splits: shard split names (default: every split with a class list); for a dataset, the first entry
            is the dataset split (default ``val``).
        eval_overrides: EvalConfig fields, e.g. ``{"bg_thresh": 0.5}``, applied last.
        out: write the result as JSON here (default: ``metrics.json`` beside the checkpoint for shards,
            ``metrics_<dataset>_<protocol>.json`` for a dataset).

    Returns:
        The metrics dict (also written to ``out``) with ``protocol``, ``checkpoint`` (path, sha256),
        ``config_hash``, ``dataset`` counts and, with a cache, ``cache`` (images encoded / read).

    Raises:
        ConfigError: neither or both of ``data`` / ``dataset``, unknown protocol / eval key / sweep.
        DataError: bad data, or a feature cache from another checkpoint or config.
        CheckpointError, DeviceError, DependencyError: see the loaders.
    """
    from .cache.features import CacheMeta, FeatureCache, feature_config_hash
    from .config import config_hash
    from .eval.evaluate import evaluate, evaluate_dataset
    from .eval.protocol import model_family, resolve_protocol
    from .eval.sweep import parse_sweep
    from .checkpoint import load_checkpoint
    from .utils.device import resolve_device

    if (data is None) == (dataset is None):
        raise ConfigError("give either --data SHARDS (demo shards) or --dataset NAME --data-root DIR")
    if dataset is not None and data_root is None:
        raise ConfigError(f"--dataset {dataset} needs --data-root DIR (the dataset's mmseg-layout folder)")
    sweep_spec = parse_sweep(sweep) if sweep else None
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, dev)
    family = model_family(info.config.model)
    resolved = None
    if dataset is not None or protocol is not None:
        resolved = resolve_protocol(protocol or "groupvit", dataset or "", family, eval_overrides)
        eval_cfg = resolved.eval_cfg
        for note in resolved.notes:
            _log.info("protocol %s: %s", resolved.name, note)
    else:
        eval_cfg = _eval_config(info.config, eval_overrides)
    protocol_name = resolved.name if resolved is not None else "checkpoint"
    ck_hash = _checkpoint_hash(info.path)
    feat_hash = feature_config_hash(info.config.model, eval_cfg)
    ds_obj = None
    split = (splits or ["val"])[0]
    if dataset is not None:
        ds_obj = _open_dataset(dataset, data_root, split)
        cache_ds = f"{dataset}/{split}"
    else:
        cache_ds = f"shards:{Path(str(data)).resolve()}"
    fc = None
    if cache is not None:
        fc = FeatureCache.open(cache, CacheMeta(ck_hash, feat_hash, protocol_name, cache_ds))
    try:
        if ds_obj is not None:
            result = evaluate_dataset(
                model,
                ds_obj,
                class_names=resolved.class_names,
                eval_cfg=eval_cfg,
                device=dev,
                split_name=split,
                max_images=max_images,
                progress=_phase_cb(progress, "eval"),
                cache=fc,
                sweep=sweep_spec,
            )
        else:
            result = evaluate(
                model,
                str(data),
                splits=splits,
                eval_cfg=eval_cfg,
                device=dev,
                max_images=max_images,
                progress=_phase_cb(progress, "eval"),
                cache=fc,
                sweep=sweep_spec,
            )
        cache_info = None
        if fc is not None:
            cache_info = {"path": str(cache), "images": len(fc), "dropped_incomplete": fc.dropped}
    finally:
        if fc is not None:
            fc.close()
    metrics = json.loads(result.to_json())
    metrics["protocol"] = (
        resolved.to_dict()
        if resolved is not None
        else {"name": "checkpoint", "family": family, "notes": ["the checkpoint's eval settings"]}
    )
    metrics["checkpoint"] = {
        "path": info.path,
        "step": info.step,
        "model": info.config.name,
        "source_format": info.source_format,
        "family": family,
        "sha256": ck_hash,
        "sha256_16": ck_hash[:16],
    }
    metrics["config_hash"] = config_hash(info.config)
    metrics["feature_config_hash"] = feat_hash
    metrics["device"] = str(dev)
    if dataset is None:
        metrics["data"] = str(data)
        metrics["dataset"] = {
            "name": "shards",
            "path": str(data),
            "splits": {k: v["num_images"] for k, v in metrics["splits"].items()},
        }
    if cache_info is not None:
        cache_info["images_encoded"] = sum(
            int(m.get("images_encoded", 0)) for m in metrics["splits"].values()
        )
        cache_info["images_from_cache"] = sum(
            int(m.get("images_from_cache", 0)) for m in metrics["splits"].values()
        )
        metrics["cache"] = cache_info
    if out is None:
        ck = Path(info.path)
        base = ck if ck.is_dir() else ck.parent
        out = base / ("metrics.json" if dataset is None else f"metrics_{dataset}_{protocol_name}.json")
    atomic_write_json(out, metrics)
    metrics["written_to"] = str(out)
    return metrics


def resolve_inputs(inputs: list[str], *, recursive: bool = False, stdin: Iterable[str] | None = None):
    """Expand files, directories (``recursive``), glob patterns and ``-`` (paths on ``stdin``).

    Returns:
        :class:`pgseg_core.segment.inputs.ResolvedInputs`: ``images`` (path + output-relative path, duplicates
        removed) and ``missing`` (item, reason) pairs; never raises for a bad item.
    """
    from .segment.inputs import resolve_inputs as _resolve

    return _resolve(inputs, recursive=recursive, stdin=stdin)


def _read_templates(templates: list[str] | None, templates_file: str | Path | None) -> list[str] | None:
    found = [t for t in (templates or []) if t.strip()]
    if templates_file:
        path = Path(templates_file)
        if not path.is_file():
            raise DataError(f"templates file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read templates file {path}: {e}") from e
        found += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not found:
            raise ConfigError(
                f"templates file {path} holds no template: one per line, e.g. 'a photo of a {{}}.'"
            )
    for tpl in found:
        if tpl.count("{}") != 1:
            raise ConfigError(f"template {tpl!r} must contain exactly one '{{}}' where the class name goes")
    return found or None


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
) -> dict[str, Any]:
    """Segment image files into the named classes and write label PNGs, overlays, JSON and/or COCO RLE.

    Args:
        inputs: files, directories, glob patterns, ``-`` (paths on ``stdin``); see
            :mod:`pgseg_core.segment.inputs`. Outputs mirror the inputs' sub-folders under ``out_dir``.
        checkpoint: any checkpoint :func:`pgseg_core.checkpoint.load_checkpoint` reads.
        classes / classes_file / bg_words: the vocabulary (:func:`pgseg_core.segment.classes.parse_class_spec`;
            a class scores the max over its synonyms, a pixel won by a background word is background).
        templates / templates_file: prompt templates (default: the checkpoint's eval templates).
        eval_overrides: EvalConfig fields such as ``{"bg_thresh": 0.5, "top_k": 3, "short_side": 448}``.
        device: ``auto | cpu | cuda | cuda:N`` (bf16 autocast on CUDA unless ``bf16=False``).
        formats: ``"png,overlay,json,coco-rle"`` subset (default png, overlay, json).
        skip_existing: skip images whose requested outputs all exist (no decode, no inference; the model is
            not even loaded when every image is done).
        batch_size / num_workers: images per encoder batch; DataLoader decode processes.
        backend: ``torch`` or ``onnx`` (image encoder through ONNX Runtime on the CPU, from ``onnx_path``
            written by :func:`export_onnx`; text embeddings still come from ``checkpoint``).
        text_cache: True = ``out_dir/.pgseg_cache``; a path = that folder; False/None = off.
        export_onnx_to: first export the checkpoint's image encoder to this ``.onnx`` file (as
            :func:`export_onnx`), then segment with it through ONNX Runtime (``backend`` becomes ``onnx``).
        feature_cache: HDF5 feature cache (docs/FEATURE_CACHE.md, the schema ``eval --cache`` writes): images
            it holds (keyed by the SHA-256 of their bytes) skip the image encoder, so a rerun with other
            classes, templates, bg_thresh or top-k only re-scores. torch backend only.
        on_record: receives one JSON record per image (status ok / skipped / failed).
        progress: ``progress("segment", done, total, {"images_per_s": float})``.

    Returns:
        Summary: ``out_dir, classes, formats, total, processed, skipped, failed [{image, error}], num_failed,
        seconds, images_per_s, backend, device, text_cache`` ("hit", "miss", "off" or "unused").

    Raises:
        ConfigError: bad classes / templates / formats / settings. DataError: a bad class or templates file.
        CheckpointError, DeviceError, DependencyError: as the loaders. Bad images never raise: they are
        counted in ``failed``.
    """
    from .segment.classes import parse_class_spec
    from .segment.outputs import parse_formats, plan_outputs
    from .segment.segmenter import segment_images
    from .utils.device import resolve_device

    spec = parse_class_spec(classes, classes_file, bg_words)
    fmts = parse_formats(formats)
    tpls = _read_templates(templates, templates_file)
    if export_onnx_to is not None:
        if backend == "onnx" and onnx_path is not None:
            raise ConfigError("give either --export-onnx FILE (export, then use it) or --onnx FILE, not both")
        backend, onnx_path = "onnx", export_onnx_to
    if backend not in ("torch", "onnx"):
        raise ConfigError(f"unknown backend '{backend}': use torch or onnx")
    if backend == "onnx" and onnx_path is None:
        raise ConfigError("--backend onnx needs --onnx MODEL.onnx (write it with 'pgseg export-onnx')")
    if int(batch_size) < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if feature_cache is not None and backend != "torch":
        raise ConfigError("--cache works with the torch backend only: drop --cache or --backend onnx")
    overrides = dict(eval_overrides or {})
    if "bg_thresh" in overrides and not 0.0 <= float(overrides["bg_thresh"]) <= 1.0:
        raise ConfigError(f"--bg-thresh must lie in [0, 1], got {overrides['bg_thresh']}")
    if backend == "onnx":
        if device not in ("auto", "cpu"):
            raise ConfigError(
                f"--backend onnx runs on the CPU; drop --device {device} (or use --backend torch)"
            )
        device = "cpu"
    dev = resolve_device(device)
    if export_onnx_to is not None:
        export_onnx(checkpoint, export_onnx_to)
    resolved = resolve_inputs(inputs, recursive=recursive, stdin=stdin)
    out_dir = Path(out_dir)
    plans = plan_outputs([im.rel for im in resolved.images], out_dir, fmts)
    pending = [not (skip_existing and p.all_exist()) for p in plans]

    encoder = class_emb = None
    logit_scale, cache_state = 0.0, "unused"
    eval_cfg = None
    if any(pending):
        from .checkpoint import checkpoint_sha256, load_checkpoint
        from .segment.batch import TorchEncoder
        from .segment.text_cache import cached_class_embeddings

        model, info = load_checkpoint(checkpoint, dev)
        eval_cfg = _eval_config(info.config, overrides)
        if tpls:
            eval_cfg = dataclasses.replace(eval_cfg, templates=list(tpls))
        digest = None
        if text_cache or backend == "onnx":
            try:
                digest = checkpoint_sha256(info.path)[:16]
            except OSError as e:  # e.g. weights that are not plain files: run without the cache
                _log.warning("cannot hash %s (%s): text-embedding cache off", info.path, e)
        cache_dir = None
        if text_cache:
            cache_dir = out_dir / ".pgseg_cache" if text_cache is True else Path(text_cache)
        class_emb, hit = cached_class_embeddings(
            model, spec, list(eval_cfg.templates), dev, digest=digest, cache_dir=cache_dir
        )
        cache_state = "off" if cache_dir is None else ("hit" if hit else "miss")
        logit_scale = float(model.logit_scale_value())
        if backend == "onnx":
            from .segment.onnx_export import OnnxEncoder

            encoder = OnnxEncoder(onnx_path, checkpoint_digest=digest)
        else:
            encoder = TorchEncoder(model, dev, bf16=bf16)
    else:
        from .config import EvalConfig

        eval_cfg = EvalConfig()  # nothing to run: every image is done
    if not resolved.images and not resolved.missing:
        _log.warning("no input images: nothing to segment")
    fc = None
    if feature_cache is not None and any(pending):
        from .cache.features import CacheMeta, FeatureCache, feature_config_hash

        fc = FeatureCache.open(
            feature_cache,
            CacheMeta(
                _checkpoint_hash(info.path),
                feature_config_hash(info.config.model, eval_cfg),
                "checkpoint",
                "segment",
            ),
        )
    try:
        summary = segment_images(
            encoder,
            resolved.images,
            class_emb,
            spec.names,
            logit_scale,
            out_dir,
            eval_cfg,
            dev,
            formats=fmts,
            skip_existing=skip_existing,
            batch_size=batch_size,
            num_workers=num_workers,
            missing=resolved.missing,
            on_record=on_record,
            feature_cache=fc,
            model=model if fc is not None else None,
            progress=(lambda d, t, info: progress("segment", d, t, info)) if progress else None,
        )
    finally:
        if fc is not None:
            fc.close()
    summary.update(
        {"backend": backend, "device": str(dev), "text_cache": cache_state, "class_spec": spec.to_dict()}
    )
    return summary


def export_onnx(checkpoint: str | Path, out: str | Path, *, size: int = 448) -> dict[str, Any]:
    """Export a checkpoint's image encoder to ONNX (``pgseg export-onnx``), with a ``.json`` sidecar.

    Args:
        checkpoint: any checkpoint :func:`pgseg_core.checkpoint.load_checkpoint` reads.
        out: the ``.onnx`` file.
        size: square tracing size in pixels, a multiple of 16 (inputs of any multiple of 16 work later).

    Returns:
        The sidecar dict plus ``"path"`` and ``"sidecar"``.

    Raises:
        ConfigError: a bad size. CheckpointError, DependencyError: unreadable checkpoint, onnx missing.
    """
    from .checkpoint import checkpoint_sha256, load_checkpoint
    from .segment.onnx_export import export_onnx as _export, onnx_sidecar_path

    if size <= 0 or size % 16:
        raise ConfigError(f"--size must be a positive multiple of 16 pixels, got {size}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out must name a .onnx file, got {out}")
    model, info = load_checkpoint(checkpoint, "cpu")
    meta = _export(
        model,
        out,
        size=size,
        config=info.config.to_dict(),
        checkpoint=str(info.path),
        checkpoint_digest=checkpoint_sha256(info.path)[:16],
    )
    return {**meta, "path": str(out), "sidecar": str(onnx_sidecar_path(out))}


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
    """Render what the image encoder does with each image: group maps per grouping stage, NPR prototype maps,
    the Hungarian group <-> prototype matching with its HRS-kept pairs (PGSeg §3.2-3.4), and across the
    images the patches nearest to every prototype; writes PNGs, JSON and a static ``index.html``.

    Two sources:

    * images (``inputs``) and a ``checkpoint``: the encoder runs on each image. With ``cache``, each image's
      encoder trace is stored in (and on later runs read from) the ``viz`` section of that HDF5 feature cache
      (:mod:`pgseg_core.viz.prototype_cache`; the file may be shared with ``segment --cache``);
    * ``cache`` alone (no inputs): every image the cache's ``viz`` section holds is rendered from the file,
      without a model. A ``checkpoint``, if given, must be the one the cache was written with.

    Args:
        inputs: image files and folders (see :func:`resolve_inputs`); empty to render from ``cache``.
        checkpoint: any checkpoint :func:`pgseg_core.checkpoint.load_checkpoint` reads (required with
            ``inputs``). A GroupViT without NPR renders group maps only.
        out_dir: output folder (layout in :mod:`pgseg_core.viz.prototype_report`).
        cache: HDF5 feature cache path (docs/FEATURE_CACHE.md).
        max_images: use at most this many inputs (in sorted order) or cached entries.
        short_side: resize images so the short side has this many pixels (default: the checkpoint's
            ``eval.short_side``; the long side stays within ``eval.max_long``).
        patches_per_prototype: patches shown per prototype in the nearest-patch grids.
        device: auto, cpu, cuda or cuda:N.

    Returns:
        Summary (see :func:`pgseg_core.viz.prototype_report.render_states`) plus, with ``cache``,
        ``"feature_cache": {"path", "images_encoded", "images_from_cache"}``; unreadable images are skipped
        and listed in ``failed``.

    Raises:
        ConfigError: neither inputs nor cache, inputs without a checkpoint, non-positive ``max_images``,
            ``short_side`` or ``patches_per_prototype``. DataError: missing inputs or no images; a cache that
            is missing, not a feature cache, written for another checkpoint, or without ``viz`` entries.
        CheckpointError: unreadable checkpoint. DeviceError: missing device.
    """
    from .cache.features import CacheMeta, FeatureCache, feature_config_hash
    from .checkpoint import load_checkpoint
    from .utils.device import resolve_device
    from .viz.prototype_report import render_states, states_from_files

    for name, value in (
        ("--max-images", max_images),
        ("--short-side", short_side),
        ("--patches", patches_per_prototype),
    ):
        if value is not None and int(value) < 1:
            raise ConfigError(f"{name} must be a positive number, got {value}")
    if not inputs:
        if cache is None:
            raise ConfigError(
                "nothing to visualize: give image files or folders, or --cache FILE to render the "
                "images a feature cache holds"
            )
        return _visualize_from_cache(cache, checkpoint, out_dir, max_images, patches_per_prototype, progress)
    if checkpoint is None:
        raise ConfigError(
            "--checkpoint is required to encode images (or give only --cache FILE to render "
            "from a feature cache)"
        )
    resolved = resolve_inputs(inputs)
    if not resolved.images:
        reasons = "; ".join(f"{item}: {why}" for item, why in resolved.missing)
        raise DataError(f"no images to visualize ({reasons or 'no inputs'})")
    paths = [im.path for im in resolved.images]
    if max_images is not None:
        paths = paths[: int(max_images)]
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, dev)
    model.eval()
    short = int(short_side or info.config.eval.short_side)
    max_long = max(int(info.config.eval.max_long), short)
    failed: list[dict[str, str]] = [{"image": item, "error": why} for item, why in resolved.missing]
    title = f"checkpoint {info.path} ({info.config.name}, step {info.step}); images at short side {short} px"
    fc = None
    if cache is not None:
        # the meta segment --cache would write for this short side, so one file serves both; an existing file
        # only has to come from the same checkpoint (the viz section records its own resize)
        eval_cfg = dataclasses.replace(info.config.eval, short_side=short)
        meta = CacheMeta(
            _checkpoint_hash(info.path),
            feature_config_hash(info.config.model, eval_cfg),
            "checkpoint",
            "segment",
        )
        fc = FeatureCache.open(cache, meta, check=("checkpoint_sha256",))
    counts: dict[str, int] = {}
    try:
        states = states_from_files(model, paths, short, max_long, dev, failed, cache=fc, counts=counts)
        summary = render_states(
            states,
            out_dir,
            total=len(paths),
            npr=bool(model.cfg.npr.enabled),
            released_code=bool(model.cfg.npr.released_code),
            patches_per_prototype=int(patches_per_prototype),
            failed=failed,
            title=title,
            progress=_phase_cb(progress, "visualize"),
        )
    finally:
        if fc is not None:
            fc.close()
    if fc is not None:
        summary["feature_cache"] = {"path": str(cache), **counts}
    return summary


def _visualize_from_cache(
    cache: str | Path,
    checkpoint: str | Path | None,
    out_dir: str | Path,
    max_images: int | None,
    patches_per_prototype: int,
    progress: Progress | None,
) -> dict[str, Any]:
    """``visualize-prototypes --cache FILE`` without images: render every cached trace, no model."""
    from .cache.features import FeatureCache
    from .viz.prototype_cache import VIZ_SECTION as section
    from .viz.prototype_cache import states_from_cache
    from .viz.prototype_report import render_states

    with FeatureCache.open(cache, readonly=True) as fc:
        have = str(fc.attrs.get("checkpoint_sha256", ""))
        if checkpoint is not None:
            want = _checkpoint_hash(checkpoint)
            if want and have and want != have:
                raise DataError(
                    f"feature cache {cache} was written with another checkpoint (sha256 {have[:12]}…, "
                    f"{checkpoint} is {want[:12]}…): pass that checkpoint or another --cache"
                )
        keys = fc.section_keys(section)
        if not keys:
            raise DataError(
                f"feature cache {cache} holds no visualize-prototypes data (segment/eval write only "
                f"inference features): run pgseg visualize-prototypes IMAGES --checkpoint CKPT "
                f"--cache {cache} first"
            )
        if max_images is not None:
            keys = keys[: int(max_images)]
        first = fc.section_attrs(section, keys[0])
        title = (
            f"feature cache {cache} (checkpoint sha256 {have[:12]}); {len(keys)} cached image(s) at short "
            f"side {int(first['short_side'])} px"
        )
        summary = render_states(
            states_from_cache(fc, keys),
            out_dir,
            total=len(keys),
            npr=bool(int(first["npr"])),
            released_code=bool(int(first["released_code"])),
            patches_per_prototype=int(patches_per_prototype),
            failed=[],
            title=title,
            progress=_phase_cb(progress, "visualize"),
        )
    summary["feature_cache"] = {"path": str(cache), "images_encoded": 0, "images_from_cache": len(keys)}
    return summary
