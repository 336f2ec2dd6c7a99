"""Seen / unseen class splits of zero-shot segmentation, shipped as files (docs/MVP_SEG.md §5)."""

from .registry import ZeroShotSplit, apply_split, default_split, load_split, seen_unseen_miou, split_names

__all__ = ["ZeroShotSplit", "apply_split", "default_split", "load_split", "seen_unseen_miou", "split_names"]
