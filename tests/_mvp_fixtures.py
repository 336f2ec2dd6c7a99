"""Tiny open_clip models with random weights, saved locally (nothing downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_RN = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_open_clip(tmp: Path, name: str = "pgseg-test-vit", cfg: dict | None = None, seed: int = 0) -> str:
    """Write a model config and random weights under ``tmp``; returns the backbone reference."""
    import open_clip

    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / f"{name}.json"
    config.write_text(json.dumps(cfg or TINY_VIT))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    weights = tmp / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    return f"open_clip:{config}:{weights}"
