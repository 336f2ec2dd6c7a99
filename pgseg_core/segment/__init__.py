"""``pgseg segment``: the Segmenter facade over the inference core (:mod:`pgseg_core.inference`), input
resolution, output files, the text-embedding cache and the ONNX Runtime encoder."""

from .inputs import InputImage, ResolvedInputs, resolve_inputs
from .runner import SegmentSummary
from .segmenter import SegResult, Segmenter

__all__ = ["InputImage", "ResolvedInputs", "SegResult", "SegmentSummary", "Segmenter", "resolve_inputs"]
