"""The settings of one ``pgseg segment`` run, as one typed value (:func:`pgseg_core.api.segment_files`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .outputs import DEFAULT_FORMATS

__all__ = ["SegmentOptions"]


@dataclass
class SegmentOptions:
    """How to segment: device, encoder backend, caches, outputs and batching.

    Attributes:
        eval_overrides: EvalConfig fields over the checkpoint's, e.g. ``{"bg_thresh": 0.5, "top_k": 3,
            "short_side": 448}``.
        device: ``auto | cpu | cuda | cuda:N`` (bf16 autocast on CUDA unless ``bf16`` is False).
        formats: a subset of ``png, overlay, json, coco-rle`` (a comma-separated string or a list).
        recursive: descend into sub-folders of directory inputs (outputs mirror them).
        skip_existing: skip images whose requested outputs all exist (no decode, no model load when all do).
        batch_size: images whose same-size crops share one encoder forward (>= 1).
        num_workers: decode processes (0 = decode in the calling process).
        backend: ``torch``, or ``onnx`` (the image encoder through ONNX Runtime on the CPU, from
            ``onnx_path``; text embeddings still come from the checkpoint).
        onnx_path: an ONNX model written by :func:`pgseg_core.api.export_onnx` (backend ``onnx``).
        export_onnx_to: export the checkpoint's image encoder to this ``.onnx`` file first, then use it.
        text_cache: True = ``OUT/.pgseg_cache``; a folder; False / None = off (text embeddings of
            the vocabulary, keyed by checkpoint identity, classes and templates).
        feature_cache: HDF5 feature cache (docs/FEATURE_CACHE.md): images it holds skip the image encoder.
        bf16: bf16 autocast of the torch encoder on CUDA.
    """

    eval_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    formats: str | list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))
    recursive: bool = False
    skip_existing: bool = False
    batch_size: int = 1
    num_workers: int = 0
    backend: str = "torch"
    onnx_path: str | Path | None = None
    export_onnx_to: str | Path | None = None
    text_cache: str | Path | bool | None = True
    feature_cache: str | Path | None = None
    bf16: bool = True

    def text_cache_dir(self, out_dir: Path) -> Path | None:
        """The text-embedding cache folder for outputs under ``out_dir`` (None when off)."""
        if not self.text_cache:
            return None
        return out_dir / ".pgseg_cache" if self.text_cache is True else Path(self.text_cache)
