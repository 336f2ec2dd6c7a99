"""One library entry point per pipeline stage; the CLI commands are thin wrappers around these.

Each function takes plain Python values, does the whole stage (load, run, write), and returns a
JSON-serialisable summary. Long stages accept ``progress(phase, done, total, info)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig, apply_overrides, load_config
from .errors import ConfigError, DataError, DependencyError
from .utils.io import atomic_write_json

__all__ = ["prep_shards", "train", "evaluate_checkpoint", "segment_files", "resolve_inputs", "parse_class_list"]

_log = logging.getLogger("pgseg.api")

Progress = Callable[[str, int, int, dict[str, Any]], None]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _phase_cb(progress: Progress | None, phase: str) -> Callable[[int, int | None], None] | None:
    if progress is None:
        return None
    return lambda done, total=None: progress(phase, done, total or 0, {})


def prep_shards(source: str, out_dir: str | Path, *, images: str | Path | None = None,
                captions: str | Path | None = None, seed: int = 0, n_train: int = 8000, n_val: int = 200,
                img_size: int = 224, shard_size: int = 1000, photos_dir: str | Path | None = None,
                progress: Progress | None = None) -> dict[str, Any]:
    """Build training/validation shards.

    Args:
        source: ``"demo"`` (built-in composites from real photos, cutouts, clip art and emoji) or
            ``"folder"`` (a folder of images with captions, given by ``images``).
        out_dir: shard directory; gets ``*.tar`` shards and ``index.json``.
        images / captions: folder source only (see :func:`pgseg_core.data.shards.write_folder_shards`).
        seed, n_train, n_val, img_size, shard_size: demo source sizes (n_val per validation split).
        photos_dir: demo source only: also export the bundled real photos (for ``pgseg segment``) here.

    Raises:
        ConfigError: unknown source or missing ``images``. DataError: missing sources or bad files.
    """
    if source == "demo":
        from .data.demo import build_demo_shards

        summary = build_demo_shards(out_dir, seed=seed, n_train=n_train, n_val=n_val, img_size=img_size,
                                    shard_size=shard_size, progress=_phase_cb(progress, "composites"))
        if photos_dir is not None:
            from .data.demo import export_demo_photos

            summary["photos"] = export_demo_photos(photos_dir)
        return summary
    if source == "folder":
        if images is None:
            raise ConfigError("--source folder needs --images DIR (a folder of images with captions)")
        from .data.shards import write_folder_shards

        return write_folder_shards(images, out_dir, captions=captions, shard_size=shard_size,
                                   progress=_phase_cb(progress, "images"))
    raise ConfigError(f"unknown source '{source}': use 'demo' or 'folder'")


def train(model: str, data: str, out_dir: str | Path, *, overrides: dict[str, Any] | None = None,
          resume: bool = False, init_checkpoint: str | None = None, device: str | None = None,
          progress: Progress | None = None) -> dict[str, Any]:
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
    return {"out_dir": result.out_dir, "checkpoint": result.checkpoint, "steps": result.steps,
            "device": result.device, "seconds": round(result.seconds, 1), "final": result.final,
            "stopped_early": result.stopped_early}


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
        raise DependencyError(f"benchmark dataset readers are missing from this build ({e}): reinstall pgseg "
                              "or evaluate demo shards with --data") from e
    return open_dataset(name, root, split=split)


def _checkpoint_hash(path: str | Path) -> str:
    from .utils.hashing import checkpoint_sha256

    try:
        return checkpoint_sha256(path)
    except (FileNotFoundError, OSError) as e:
        _log.warning("cannot hash checkpoint %s: %s", path, e)
        return ""


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | None = None, *,
                        dataset: str | None = None, data_root: str | Path | None = None,
                        protocol: str | None = None, cache: str | Path | None = None,
                        sweep: str | None = None, splits: list[str] | None = None,
                        eval_overrides: dict[str, Any] | None = None, device: str = "auto",
                        max_images: int | None = None, out: str | Path | None = None,
                        progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on validation shards or on a benchmark dataset (mIoU, mAcc, aAcc, per class).

    Args:
        checkpoint: any checkpoint :func:`pgseg_core.models.factory.load_checkpoint` reads.
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
    from .models.factory import load_checkpoint
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
            result = evaluate_dataset(model, ds_obj, class_names=resolved.class_names, eval_cfg=eval_cfg,
                                      device=dev, split_name=split, max_images=max_images,
                                      progress=_phase_cb(progress, "eval"), cache=fc, sweep=sweep_spec)
        else:
            result = evaluate(model, str(data), splits=splits, eval_cfg=eval_cfg, device=dev,
                              max_images=max_images, progress=_phase_cb(progress, "eval"), cache=fc,
                              sweep=sweep_spec)
        cache_info = None
        if fc is not None:
            cache_info = {"path": str(cache), "images": len(fc), "dropped_incomplete": fc.dropped}
    finally:
        if fc is not None:
            fc.close()
    metrics = json.loads(result.to_json())
    metrics["protocol"] = (resolved.to_dict() if resolved is not None
                           else {"name": "checkpoint", "family": family, "notes": ["the checkpoint's eval settings"]})
    metrics["checkpoint"] = {"path": info.path, "step": info.step, "model": info.config.name,
                             "source_format": info.source_format, "family": family, "sha256": ck_hash,
                             "sha256_16": ck_hash[:16]}
    metrics["config_hash"] = config_hash(info.config)
    metrics["feature_config_hash"] = feat_hash
    metrics["device"] = str(dev)
    if dataset is None:
        metrics["data"] = str(data)
        metrics["dataset"] = {"name": "shards", "path": str(data),
                              "splits": {k: v["num_images"] for k, v in metrics["splits"].items()}}
    if cache_info is not None:
        cache_info["images_encoded"] = sum(int(m.get("images_encoded", 0)) for m in metrics["splits"].values())
        cache_info["images_from_cache"] = sum(int(m.get("images_from_cache", 0)) for m in metrics["splits"].values())
        metrics["cache"] = cache_info
    if out is None:
        ck = Path(info.path)
        base = ck if ck.is_dir() else ck.parent
        out = base / ("metrics.json" if dataset is None else f"metrics_{dataset}_{protocol_name}.json")
    atomic_write_json(out, metrics)
    metrics["written_to"] = str(out)
    return metrics


def parse_class_list(classes: str | None, classes_file: str | Path | None = None) -> list[str]:
    """Class names from ``"cat,dog"`` or a text file with one class per line (``#`` comments allowed).

    Raises:
        ConfigError: no classes given, an empty name, or duplicates. DataError: unreadable file.
    """
    names: list[str] = []
    if classes:
        names += [c.strip() for c in classes.split(",")]
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise DataError(f"class file not found: {path}")
        if path.suffix.lower() not in ("", ".txt", ".csv", ".lst"):
            raise DataError(f"unknown class-file format '{path.suffix}' for {path}: use a .txt file with one "
                            "class per line")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line)
    if not names:
        raise ConfigError("no classes given: pass --classes 'cat,dog' or --classes-file FILE")
    if any(n == "" for n in names):
        raise ConfigError(f"empty class name in --classes '{classes}'")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"duplicate class names: {', '.join(dupes)}")
    return names


def resolve_inputs(inputs: list[str]) -> list[Path]:
    """Expand image files and directories (non-recursive) into a sorted list of image paths.

    Raises:
        DataError: a path that does not exist, or nothing to segment.
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            paths.append(p)
        else:
            raise DataError(f"input not found: {p}")
    if not paths:
        raise DataError(f"no images found in {', '.join(inputs)}")
    return paths


def segment_files(inputs: list[str], classes: list[str], checkpoint: str | Path, out_dir: str | Path, *,
                  eval_overrides: dict[str, Any] | None = None, device: str = "auto",
                  progress: Progress | None = None) -> dict[str, Any]:
    """Segment image files with the named classes; write label PNG, overlay and JSON per image.

    Returns:
        Summary with ``processed``, ``outputs`` and ``failed`` (bad files are skipped and listed).
    """
    from .models.factory import load_checkpoint
    from .segment.segmenter import segment_images
    from .utils.device import resolve_device

    paths = resolve_inputs(inputs)
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, dev)
    eval_cfg = _eval_config(info.config, eval_overrides)
    return segment_images(model, paths, classes, Path(out_dir), eval_cfg, dev,
                          progress=_phase_cb(progress, "segment"))

