"""Zero-shot segmentation: the GroupViT inference rule, slide inference, batching and the Segmenter facade."""

from .batch import PreparedImage, TorchEncoder, predict_batch, prepare_image
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
from .inputs import InputImage, ResolvedInputs, resolve_inputs
from .segmenter import SegResult, Segmenter, segment_images

__all__ = [
    "CropFeatures",
    "InputImage",
    "PreparedImage",
    "ResolvedInputs",
    "SegResult",
    "Segmenter",
    "TorchEncoder",
    "compute_class_embeddings",
    "crop_scores",
    "extract_features",
    "group_probabilities",
    "predict",
    "predict_batch",
    "prepare_image",
    "resize_short_side",
    "resolve_inputs",
    "segment_images",
    "slide_windows",
]
