"""Backbone references: the strings that name a frozen backbone (stored in MVP-SEG checkpoints).

- ``open_clip:MODEL:WEIGHTS``: an open_clip model (a registered name such as ``ViT-B-16`` or ``RN50``, or a
  model config ``.json``) with its weights from the local file WEIGHTS (nothing downloads);
- ``pgseg:CHECKPOINT``: a GroupViT / PGSeg checkpoint of this project (any format ``pgseg eval`` reads).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import FrozenBackbone

__all__ = ["load_backbone", "parse_backbone"]

_KINDS = ("open_clip", "pgseg")


def parse_backbone(spec: str) -> tuple[str, list[str]]:
    """``(kind, args)`` of a reference.

    Raises:
        ConfigError: an unknown kind or a wrong number of parts.
    """
    kind, _, rest = str(spec).partition(":")
    if kind not in _KINDS or not rest:
        raise ConfigError(
            f"backbone '{spec}' is not open_clip:MODEL:WEIGHTS or pgseg:CHECKPOINT: name one of these forms"
        )
    if kind == "open_clip":
        model, sep, weights = rest.partition(":")
        if not sep or not model or not weights:
            raise ConfigError(
                f"backbone '{spec}': open_clip needs MODEL and a local WEIGHTS file, "
                "e.g. open_clip:ViT-B-16:/path/weights.pt"
            )
        return kind, [model, weights]
    return kind, [rest]


def load_backbone(spec: str, device: torch.device | str = "cpu") -> FrozenBackbone:
    """Build the frozen backbone ``spec`` names, on ``device`` (eval mode, no gradients).

    Raises:
        ConfigError: a malformed reference. CheckpointError: missing / mismatched weights.
    """
    kind, args = parse_backbone(spec)
    if kind == "open_clip":
        from .open_clip_dense import OpenClipBackbone

        backbone: FrozenBackbone = OpenClipBackbone(*args)
    else:
        from .pgseg_dense import PGSegBackbone

        backbone = PGSegBackbone(*args)
    return backbone.to(device)
