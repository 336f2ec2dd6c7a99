"""Visualisation: the fixed label palette, palette PNGs and overlays with a legend."""

from .overlay import render_overlay
from .palette import PALETTE, colorize, label_to_palette_png

__all__ = ["PALETTE", "colorize", "label_to_palette_png", "render_overlay"]
