"""Zero-shot segmentation: the GroupViT inference rule, slide inference and the Segmenter facade."""

from .inference import (
    CropFeatures,
    compute_class_embeddings,
    crop_scores,
    extract_features,
    group_probabilities,
    predict,
    resize_short_side,
    slide_windows,
)
from .segmenter import SegResult, Segmenter, segment_images

__all__ = [
    "CropFeatures",
    "SegResult",
    "Segmenter",
    "compute_class_embeddings",
    "crop_scores",
    "extract_features",
    "group_probabilities",
    "predict",
    "resize_short_side",
    "segment_images",
    "slide_windows",
]
