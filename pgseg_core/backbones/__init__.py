"""Frozen image-text backbones with a dense readout (MVP-SEG and its training-free baseline)."""

from .base import FrozenBackbone
from .spec import load_backbone, parse_backbone

__all__ = ["FrozenBackbone", "load_backbone", "parse_backbone"]
