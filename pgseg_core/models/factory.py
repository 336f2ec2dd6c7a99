"""Model construction and checkpoint loading.

A pgseg checkpoint is a ``torch.save`` dict that describes itself::

    {"format": "pgseg-checkpoint", "schema": 1, "pgseg_version": str, "torch_version": str,
     "config": RunConfig as a dict, "model": state dict (package-shipped frozen weights excluded),
     "frozen_prefixes": [...], "step": int, "optimizer": ..., "scheduler": ..., "metrics": {...}}

It loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, RunConfig, from_dict, load_config
from ..errors import CheckpointError
from .pgseg import PGSeg

__all__ = ["create_model", "load_checkpoint", "CheckpointInfo", "CHECKPOINT_FORMAT", "CHECKPOINT_SCHEMA",
           "read_checkpoint_file", "trainable_state_dict"]

_log = logging.getLogger("pgseg.models.factory")

CHECKPOINT_FORMAT = "pgseg-checkpoint"
CHECKPOINT_SCHEMA = 1


def create_model(cfg: ModelConfig | RunConfig | str, *, load_frozen: bool = True) -> PGSeg:
    """Build a model from a model config, a run config, or a preset name.

    Args:
        cfg: :class:`ModelConfig`, :class:`RunConfig`, or a preset name such as ``"pgseg-s"``.
        load_frozen: load package-shipped frozen weights of the demo variant (EfficientNet-Lite0 stem).

    Raises:
        ConfigError: unknown preset. DependencyError: demo weights not installed.
    """
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    if isinstance(cfg, RunConfig):
        cfg = cfg.model
    model = PGSeg(cfg)
    if load_frozen:
        model.load_frozen_weights()
    return model


def trainable_state_dict(model: PGSeg) -> dict[str, torch.Tensor]:
    """State dict without the package-shipped frozen weights."""
    prefixes = tuple(model.frozen_prefixes())
    return {k: v for k, v in model.state_dict().items() if not (prefixes and k.startswith(prefixes))}


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``).

    Raises:
        CheckpointError: missing, truncated/corrupt, or a pickle that needs code to load.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        for name in ("last.pt", "checkpoint.pt"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a directory without last.pt; pass the checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in msg or "Unsupported global" in str(e):
            raise CheckpointError(f"{path} needs arbitrary code to unpickle and was refused (weights_only=True); "
                                  "re-save it as a plain state dict") from e
        raise CheckpointError(f"cannot read checkpoint {path}: file is truncated or corrupt ({msg})") from e
    except Exception as e:  # pickle errors from weights_only come in several types
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path} needs arbitrary code to unpickle and was refused (weights_only=True); "
                                  "re-save it as a plain state dict") from e
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from e


@dataclass
class CheckpointInfo:
    path: str
    config: RunConfig
    step: int = 0
    source_format: str = CHECKPOINT_FORMAT
    pgseg_version: str = ""
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[PGSeg, CheckpointInfo]:
    """Rebuild the model stored in a pgseg checkpoint, in eval mode.

    Args:
        path: checkpoint file (or a run directory containing ``last.pt``).
        device: where to put the model.

    Returns:
        (model, info) with ``info.config`` the full run config stored in the checkpoint.

    Raises:
        CheckpointError: unreadable file, not a pgseg checkpoint, or weights that do not fit the config.
    """
    ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        keys = ", ".join(sorted(map(str, ckpt))[:6]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a pgseg checkpoint (top-level keys: {keys}); "
                              "train one with 'pgseg train'")
    if ckpt.get("schema", 0) > CHECKPOINT_SCHEMA:
        raise CheckpointError(f"{path} has checkpoint schema {ckpt.get('schema')}, newer than this pgseg "
                              f"supports ({CHECKPOINT_SCHEMA}); upgrade pgseg")
    try:
        cfg = from_dict(RunConfig, ckpt["config"])
    except Exception as e:
        raise CheckpointError(f"{path}: stored config is invalid ({e})") from e
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no model weights (no 'model' state dict); it is not usable")
    model = create_model(cfg.model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise CheckpointError(f"{path}: weights do not match the stored config ({first})") from e
    frozen = tuple(model.frozen_prefixes())
    missing = [k for k in missing if not (frozen and k.startswith(frozen))]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the stored config ({len(missing)} missing, e.g. "
                              f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    model.to(device).eval()
    info = CheckpointInfo(path=os.fspath(path), config=cfg, step=int(ckpt.get("step", 0)),
                          pgseg_version=str(ckpt.get("pgseg_version", "")), metrics=ckpt.get("metrics", {}) or {})
    return model, info
