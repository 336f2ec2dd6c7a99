"""Zero-shot segmentation inference, shared by segment, eval, viz and the feature cache.

- :mod:`.preprocess`: resize and normalise an image into the model-ready tensor, padding to the token stride;
- :mod:`.windows`: sliding windows and the one window accumulator (average, resize, argmax);
- :mod:`.rules`: the GroupViT and prob scoring rules and the one place that picks one (``eval.rule``);
- :mod:`.features`: class-independent image features (what the feature cache stores), scoring them, and
  :func:`predict` for one image;
- :mod:`.batch`: :func:`predict_batch`, several images with same-size crops through one encoder forward;
- :mod:`.classes`: class vocabularies (synonyms, background words) and their text embeddings.
"""

from .batch import Encoder, TorchEncoder, predict_batch
from .classes import (
    CLASS_FILE_SUFFIXES,
    ClassEmbeddings,
    ClassSpec,
    as_class_embeddings,
    compute_class_embeddings,
    embed_classes,
    parse_class_lines,
    parse_class_spec,
    read_class_file,
    read_templates,
)
from .features import (
    CropFeatures,
    ImageFeatures,
    encode_crops,
    extract_features,
    extract_image_features,
    iter_score_maps,
    predict,
    scores_from_features,
)
from .preprocess import (
    TOKEN_STRIDE,
    PreparedImage,
    check_image,
    image_to_tensor,
    pad_to_stride,
    prepare_image,
    rescale_size,
    resize_short_side,
)
from .rules import (
    RULES,
    ScoringRule,
    check_eval_config,
    crop_probabilities,
    crop_scores,
    group_probabilities,
    pixel_groups,
    select_rule,
)
from .windows import Window, WindowAccumulator, channel_argmax, image_windows, resize_scores, slide_windows

__all__ = [
    "CLASS_FILE_SUFFIXES",
    "RULES",
    "TOKEN_STRIDE",
    "ClassEmbeddings",
    "ClassSpec",
    "CropFeatures",
    "Encoder",
    "ImageFeatures",
    "PreparedImage",
    "ScoringRule",
    "TorchEncoder",
    "Window",
    "WindowAccumulator",
    "as_class_embeddings",
    "channel_argmax",
    "check_eval_config",
    "check_image",
    "compute_class_embeddings",
    "crop_probabilities",
    "crop_scores",
    "embed_classes",
    "encode_crops",
    "extract_features",
    "extract_image_features",
    "group_probabilities",
    "image_to_tensor",
    "image_windows",
    "iter_score_maps",
    "pad_to_stride",
    "parse_class_lines",
    "parse_class_spec",
    "pixel_groups",
    "predict",
    "predict_batch",
    "prepare_image",
    "read_class_file",
    "read_templates",
    "rescale_size",
    "resize_scores",
    "resize_short_side",
    "scores_from_features",
    "select_rule",
    "slide_windows",
]
