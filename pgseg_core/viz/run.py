"""``visualize-prototypes`` runs: encode image files with a model, or render what a feature cache holds.

Both end in :func:`pgseg_core.viz.prototype_report.render_states` (PNGs, JSON and ``index.html`` under
``out_dir``). With a cache, each image's encoder trace goes into (and later comes from) the ``viz`` section of
the HDF5 feature cache (:mod:`pgseg_core.viz.prototype_cache`, docs/FEATURE_CACHE.md), a file
``segment --cache`` may share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .prototype_cache import VIZ_SECTION, states_from_cache
from .prototype_report import render_states, states_from_files

__all__ = ["visualize_model", "visualize_cache"]

ProgressFn = Callable[[int, int | None], None]


def visualize_model(
    model: Any,
    cfg: Any,
    paths: list[Path],
    out_dir: str | Path,
    *,
    device: torch.device,
    title: str,
    checkpoint_sha256: str,
    failed: list[dict[str, str]],
    cache: str | Path | None = None,
    short_side: int | None = None,
    patches_per_prototype: int = 8,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Encode each image with ``model`` and render it (see :mod:`pgseg_core.viz.prototype_report`).

    Args:
        model: a PGSeg-contract model on ``device``; put in eval mode.
        cfg: its run config (``eval.short_side`` / ``eval.max_long`` resize; model section for the cache key).
        paths: image files, rendered in this order.
        out_dir: output folder.
        device: the model's device.
        title: the page title (``" ; images at short side N px"`` is appended).
        checkpoint_sha256: identity of the model's checkpoint, recorded in a new cache.
        failed: ``{"image", "error"}`` records of inputs that could not be used; unreadable images are added.
        cache: HDF5 feature cache path, or None.
        short_side: resize so the short side has this many pixels (default ``cfg.eval.short_side``; the long
            side stays within ``cfg.eval.max_long``).
        patches_per_prototype: patches shown per prototype in the nearest-patch grids.
        progress: ``callback(done, total)``.

    Returns:
        :func:`render_states`' summary plus, with ``cache``, ``"feature_cache": {"path", "images_encoded",
        "images_from_cache"}``.

    Raises:
        DataError: a cache written for another checkpoint.
    """
    from ..cache.features import CacheMeta, FeatureCache, feature_config_hash

    model.eval()
    short = int(short_side or cfg.eval.short_side)
    max_long = max(int(cfg.eval.max_long), short)
    fc = None
    if cache is not None:
        # the meta segment --cache would write for this short side, so one file serves both; an existing file
        # only has to come from the same checkpoint (the viz section records its own resize)
        eval_cfg = dataclasses.replace(cfg.eval, short_side=short)
        meta = CacheMeta(checkpoint_sha256, feature_config_hash(cfg.model, eval_cfg), "checkpoint", "segment")
        fc = FeatureCache.open(cache, meta, check=("checkpoint_sha256",))
    counts: dict[str, int] = {}
    try:
        states = states_from_files(model, paths, short, max_long, device, failed, cache=fc, counts=counts)
        summary = render_states(
            states,
            out_dir,
            total=len(paths),
            npr=bool(model.cfg.npr.enabled),
            released_code=bool(model.cfg.npr.released_code),
            patches_per_prototype=int(patches_per_prototype),
            failed=failed,
            title=f"{title}; images at short side {short} px",
            progress=progress,
        )
    finally:
        if fc is not None:
            fc.close()
    if fc is not None:
        summary["feature_cache"] = {"path": str(cache), **counts}
    return summary


def visualize_cache(
    cache: str | Path,
    out_dir: str | Path,
    *,
    checkpoint_sha256: str = "",
    checkpoint_name: str = "",
    max_images: int | None = None,
    patches_per_prototype: int = 8,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Render every encoder trace the cache's ``viz`` section holds, without a model.

    Args:
        cache: an existing HDF5 feature cache.
        out_dir: output folder.
        checkpoint_sha256: when given, the cache must have been written with this checkpoint.
        checkpoint_name: how to name that checkpoint in the error.
        max_images: render at most this many cached images (in key order).
        patches_per_prototype, progress: as :func:`visualize_model`.

    Raises:
        DataError: a missing file or not a feature cache, another checkpoint's cache, no ``viz`` entries.
    """
    from ..cache.features import FeatureCache

    with FeatureCache.open(cache, readonly=True) as fc:
        have = str(fc.attrs.get("checkpoint_sha256", ""))
        if checkpoint_sha256 and have and checkpoint_sha256 != have:
            raise DataError(
                f"feature cache {cache} was written with another checkpoint (sha256 {have[:12]}…, "
                f"{checkpoint_name} is {checkpoint_sha256[:12]}…): use that checkpoint or another cache"
            )
        keys = fc.section_keys(VIZ_SECTION)
        if not keys:
            raise DataError(
                f"feature cache {cache} holds no visualize-prototypes data (segment and eval write only "
                "inference features): run visualize-prototypes on images with this cache first"
            )
        keys = keys[: int(max_images)] if max_images is not None else keys
        first = fc.section_attrs(VIZ_SECTION, keys[0])
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
            progress=progress,
        )
    summary["feature_cache"] = {"path": str(cache), "images_encoded": 0, "images_from_cache": len(keys)}
    return summary
