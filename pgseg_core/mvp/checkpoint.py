"""MVP-SEG checkpoints and the training-free baseline reference (docs/MVP_SEG.md §6).

File (``torch.save``, read with ``weights_only=True``)::

    {"format": "pgseg-mvp-checkpoint", "schema": 1, "method": "mvp-seg", "backbone": "open_clip:...",
     "backbone_sha256": "...", "config": {MVPConfig}, "state": {"prompts.ctx": [P,T,W], "log_tau1": [],
     "log_tau2": []}, "seen_classes": [...], "step": N, "pgseg_version": "..."}

The backbone is referenced, never copied: loading rebuilds it from the reference and refuses weights whose
sha256 differs. ``baseline:BACKBONE`` names the training-free baseline wherever a checkpoint is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backbones import load_backbone
from ..errors import CheckpointError
from ..utils.io import atomic_torch_save
from ..version import __version__
from .config import MVPConfig
from .model import MVPSeg
from .predict import DensePredictor
from .templates import template_set

__all__ = ["is_mvp_reference", "save_mvp_checkpoint", "load_predictor", "LoadedMethod", "FORMAT", "RUN_FILE"]

FORMAT = "pgseg-mvp-checkpoint"
RUN_FILE = "mvp.pt"
BASELINE_PREFIX = "baseline:"


def _file(path: str | Path) -> Path:
    p = Path(path)
    return p / RUN_FILE if p.is_dir() else p


def _read(path: str | Path) -> dict[str, Any] | None:
    p = _file(path)
    if not p.is_file() or p.suffix not in (".pt", ".pth"):
        return None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint of ours: some other format
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == FORMAT else None


def is_mvp_reference(reference: str | Path) -> bool:
    """``baseline:BACKBONE``, an MVP-SEG checkpoint file, or a run folder holding ``mvp.pt``."""
    return str(reference).startswith(BASELINE_PREFIX) or _read(reference) is not None


def save_mvp_checkpoint(path: str | Path, model: MVPSeg, seen_classes: list[str], step: int) -> Path:
    """Write the prompts, scales, config and backbone reference atomically."""
    obj = {
        "format": FORMAT,
        "schema": 1,
        "method": "mvp-seg",
        "backbone": model.backbone.reference,
        "backbone_sha256": model.backbone.identity,
        "config": model.cfg.to_dict(),
        "state": model.trainable_state(),
        "seen_classes": list(seen_classes),
        "step": int(step),
        "pgseg_version": __version__,
    }
    return atomic_torch_save(path, obj)


@dataclass
class LoadedMethod:
    """A ready predictor and where it came from: ``method`` "mvp-seg" or "baseline", ``path``, ``sha256``
    (of the checkpoint file, or of the backbone weights for the baseline), ``step``, ``config``."""

    predictor: DensePredictor
    method: str
    path: str
    sha256: str
    step: int | None
    config: MVPConfig
    raw: dict[str, Any] | None = None


def load_predictor(
    reference: str | Path, device: torch.device | str = "cpu", overrides: dict[str, Any] | None = None
) -> LoadedMethod:
    """Rebuild a predictor from ``baseline:BACKBONE`` or an MVP-SEG checkpoint.

    Args:
        overrides: MVPConfig keys (``templates``, ``short_side``, ``max_long``, ``gpr``...) applied on top.

    Raises:
        CheckpointError: not an MVP-SEG checkpoint, or backbone weights that changed since training.
        ConfigError: a bad override or backbone reference.
    """
    from ..utils.hashing import file_sha256

    ref = str(reference)
    if ref.startswith(BASELINE_PREFIX):
        cfg = MVPConfig().with_overrides(overrides or {})
        backbone = load_backbone(ref[len(BASELINE_PREFIX) :], device)
        pred = DensePredictor(
            backbone, None, template_set(cfg.templates), cfg.short_side, cfg.max_long, cfg.bg_thresh
        )
        return LoadedMethod(pred, "baseline", ref, backbone.identity, None, cfg)
    obj = _read(reference)
    if obj is None:
        raise CheckpointError(
            f"{reference} is not an MVP-SEG checkpoint: train one with pgseg train --method mvp-seg"
        )
    cfg = MVPConfig.from_dict(obj["config"]).with_overrides(overrides or {})
    backbone = load_backbone(obj["backbone"], device)
    if obj.get("backbone_sha256") and backbone.identity != obj["backbone_sha256"]:
        raise CheckpointError(
            f"{reference}: the backbone weights of {obj['backbone']} changed since training (sha256 "
            "differs); point the checkpoint at the original weights"
        )
    model = MVPSeg(backbone, cfg)
    model.load_trainable_state(obj["state"])
    model.eval()
    pred = DensePredictor(
        backbone, model, template_set(cfg.templates), cfg.short_side, cfg.max_long, cfg.bg_thresh
    )
    path = _file(reference)
    return LoadedMethod(pred, "mvp-seg", str(path), file_sha256(path), int(obj.get("step", 0)), cfg, obj)
