"""One library entry point per pipeline stage; the CLI commands are thin wrappers around these.

Each function takes plain Python values, does the whole stage (load, run, write), and returns a
JSON-serialisable summary. Long stages accept ``progress(phase, done, total, info)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig, apply_overrides, load_config
from .errors import ConfigError, DataError
from .utils.io import atomic_write_json

__all__ = ["prep_shards", "train", "evaluate_checkpoint", "segment_files", "resolve_inputs",
           "parse_class_list", "visualize_prototypes"]

_log = logging.getLogger("pgseg.api")

Progress = Callable[[str, int, int, dict[str, Any]], None]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _phase_cb(progress: Progress | None, phase: str) -> Callable[[int, int | None], None] | None:
    if progress is None:
        return None
    return lambda done, total=None: progress(phase, done, total or 0, {})


def prep_shards(source: str, out_dir: str | Path | None, *, images: str | Path | None = None,
                captions: str | Path | None = None, seed: int = 0, n_train: int = 8000, n_val: int = 200,
                img_size: int = 224, shard_size: int = 1000, photos_dir: str | Path | None = None,
                coco_root: str | Path | None = None, coco_splits: list[str] | None = None, workers: int = 0,
                progress: Progress | None = None) -> dict[str, Any]:
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
            raise ConfigError("--source coco-object needs --coco-root DIR (the coco_stuff164k folder with "
                              "annotations/val2017/*.png)")
        from .data.coco_object import convert_coco_object

        return convert_coco_object(coco_root, coco_splits or None, workers=workers,
                                   progress=_phase_cb(progress, "label maps"))
    if out_dir is None:
        raise ConfigError(f"--source {source} needs --out DIR (the shard directory to write)")
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
    raise ConfigError(f"unknown source '{source}': use 'demo', 'folder' or 'coco-object'")


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


def _file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _eval_config(cfg: RunConfig, overrides: dict[str, Any] | None):
    if not overrides:
        return cfg.eval
    prefixed = {(k if k.startswith("eval.") else f"eval.{k}"): v for k, v in overrides.items()}
    return apply_overrides(cfg, prefixed).eval


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, *, splits: list[str] | None = None,
                        eval_overrides: dict[str, Any] | None = None, device: str = "auto",
                        max_images: int | None = None, out: str | Path | None = None,
                        progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on validation shards (mIoU per split, seen/unseen hIoU).

    Args:
        checkpoint: pgseg checkpoint (or a run directory with ``last.pt``).
        data: shard directory / index.json holding the validation splits.
        splits: split names (default: every split that has a class list).
        eval_overrides: EvalConfig fields, e.g. ``{"bg_thresh": 0.5}``, applied over the checkpoint's.
        out: write the result as JSON here (default: ``metrics.json`` beside the checkpoint).

    Returns:
        The metrics dict (also written to ``out``).
    """
    from .eval.evaluate import evaluate
    from .models.factory import load_checkpoint
    from .utils.device import resolve_device

    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, dev)
    eval_cfg = _eval_config(info.config, eval_overrides)
    result = evaluate(model, str(data), splits=splits, eval_cfg=eval_cfg, device=dev, max_images=max_images,
                      progress=_phase_cb(progress, "eval"))
    metrics = json.loads(result.to_json())
    metrics["checkpoint"] = {"path": info.path, "step": info.step, "model": info.config.name,
                             "sha256_16": _file_sha256(Path(info.path) if Path(info.path).is_file()
                                                       else Path(info.path) / "last.pt")}
    metrics["data"] = str(data)
    if out is None:
        ck = Path(info.path)
        out = (ck if ck.is_dir() else ck.parent) / "metrics.json"
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



def visualize_prototypes(inputs: list[str], checkpoint: str | Path, out_dir: str | Path, *,
                         max_images: int | None = None, short_side: int | None = None,
                         patches_per_prototype: int = 8, device: str = "auto",
                         progress: Progress | None = None) -> dict[str, Any]:
    """Render what the image encoder does with each image: group maps per grouping stage, NPR prototype maps,
    the Hungarian group <-> prototype matching with its HRS-kept pairs (PGSeg §3.2-3.4), and across the
    images the patches nearest to every prototype; writes PNGs, JSON and a static ``index.html``.

    Args:
        inputs: image files and folders (see :func:`resolve_inputs`).
        checkpoint: any checkpoint :func:`pgseg_core.models.factory.load_checkpoint` reads. A GroupViT without
            NPR renders group maps only.
        out_dir: output folder (layout in :mod:`pgseg_core.viz.prototype_report`).
        max_images: use at most this many inputs (in sorted order).
        short_side: resize images so the short side has this many pixels (default: the checkpoint's
            ``eval.short_side``; the long side stays within ``eval.max_long``).
        patches_per_prototype: patches shown per prototype in the nearest-patch grids.
        device: auto, cpu, cuda or cuda:N.

    Returns:
        Summary (see :func:`pgseg_core.viz.prototype_report.visualize_samples`); unreadable images are skipped
        and listed in ``failed``.

    Raises:
        DataError: missing inputs or no images. CheckpointError: unreadable checkpoint. DeviceError: missing
        device. ConfigError: non-positive ``max_images``, ``short_side`` or ``patches_per_prototype``.
    """
    from .models.factory import load_checkpoint
    from .utils.device import resolve_device
    from .viz.prototype_report import samples_from_files, visualize_samples

    for name, value in (("--max-images", max_images), ("--short-side", short_side),
                        ("--patches", patches_per_prototype)):
        if value is not None and int(value) < 1:
            raise ConfigError(f"{name} must be a positive number, got {value}")
    paths = resolve_inputs(inputs)
    if max_images is not None:
        paths = paths[: int(max_images)]
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, dev)
    model.eval()
    short = int(short_side or info.config.eval.short_side)
    failed: list[dict[str, str]] = []
    samples = samples_from_files(paths, short, max(int(info.config.eval.max_long), short), failed)
    title = f"checkpoint {info.path} ({info.config.name}, step {info.step}); images at short side {short} px"
    return visualize_samples(model, samples, out_dir, total=len(paths), device=dev,
                             patches_per_prototype=int(patches_per_prototype), failed=failed, title=title,
                             progress=_phase_cb(progress, "visualize"))
