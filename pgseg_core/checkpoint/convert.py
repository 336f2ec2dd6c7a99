"""``pgseg convert``: any supported checkpoint -> a pgseg pair ``DST.safetensors`` + ``DST.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..models.factory import create_model
from ..utils.io import atomic_write, atomic_write_json
from ..version import __version__
from .formats import CHECKPOINT_FORMAT, CHECKPOINT_SCHEMA
from .io import check_weights_fit, fit_pos_embed, load_weights, read_any_checkpoint, trainable_state_dict

__all__ = ["convert_checkpoint"]


def convert_checkpoint(src: str | Path, dst: str | Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Convert any supported checkpoint to pgseg's safetensors pair ``DST.safetensors`` + ``DST.json``.

    The weights are validated by loading them into the model their config describes. Official PGSeg's unused
    ``mapping_text`` head is dropped.

    Args:
        src: any format :func:`.io.load_checkpoint` reads, plus pickles that need code when ``trust_pickle``.
        dst: output stem (a ``.safetensors`` or ``.json`` suffix is stripped).
        trust_pickle: allow ``torch.load(weights_only=False)`` (runs the file's pickled code) for pickles
            that need code (the official ``.pth`` releases load without it: their OmegaConf config is read
            as inert data).

    Returns:
        ``{"weights", "config", "source_format", "tensors", "parameters", "notes"}``.

    Raises:
        CheckpointError: as :func:`.io.load_checkpoint`.
    """
    from safetensors.torch import save_file

    loaded = read_any_checkpoint(src, trust_pickle=trust_pickle)
    model = create_model(loaded.config.model, load_frozen=False)
    notes = list(loaded.notes)
    state = fit_pos_embed(loaded.state, model, notes)
    missing, unexpected = load_weights(model, state, os.fspath(src))
    check_weights_fit(
        src,
        loaded.source_format,
        missing,
        unexpected,
        notes,
        against="their config",
        explain_unexpected=False,
    )
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in trainable_state_dict(model).items()}
    dst = Path(dst)
    if dst.suffix in (".safetensors", ".json"):
        dst = dst.with_suffix("")
    dst.parent.mkdir(parents=True, exist_ok=True)
    weights, meta_path = Path(f"{dst}.safetensors"), Path(f"{dst}.json")
    meta = {
        "format": CHECKPOINT_FORMAT,
        "schema": CHECKPOINT_SCHEMA,
        "pgseg_version": __version__,
        "torch_version": str(torch.__version__),
        "weights": weights.name,
        "config": loaded.config.to_dict(),
        "frozen_prefixes": model.frozen_prefixes(),
        "step": loaded.step,
        "metrics": loaded.metrics,
        "source_format": loaded.source_format,
        "source": os.fspath(src),
        "notes": notes,
    }
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_json(meta_path, meta)
    params = sum(v.numel() for k, v in model.named_parameters() if k in tensors)
    return {
        "weights": os.fspath(weights),
        "config": os.fspath(meta_path),
        "source_format": loaded.source_format,
        "tensors": len(tensors),
        "parameters": params,
        "notes": notes,
    }
