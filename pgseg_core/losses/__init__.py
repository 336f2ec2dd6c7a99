"""Training losses: image-text InfoNCE, GroupViT's multi-label loss and PGSeg's prototype-group terms."""

from .contrastive import image_text_contrastive
from .multi_label import multi_label_contrastive
from .prototype import hrs_kept_fraction, hrs_mask, hungarian_match, prototype_group_loss

__all__ = [
    "image_text_contrastive",
    "multi_label_contrastive",
    "hungarian_match",
    "hrs_mask",
    "hrs_kept_fraction",
    "prototype_group_loss",
]
