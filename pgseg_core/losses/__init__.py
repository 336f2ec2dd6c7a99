"""Training losses: image-text InfoNCE and PGSeg's prototype-group terms."""

from .contrastive import image_text_contrastive
from .prototype import hrs_mask, hungarian_match, prototype_group_loss

__all__ = ["image_text_contrastive", "hungarian_match", "hrs_mask", "prototype_group_loss"]
