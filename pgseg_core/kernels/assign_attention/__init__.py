"""GroupViT's assignment attention: Triton kernel (``kernel.py``), torch reference (``reference.py``)."""

from .op import Assignment, assign_attention
from .reference import assign_attention_reference, gumbel_noise, gumbel_softmax, hard_softmax

__all__ = [
    "Assignment",
    "assign_attention",
    "assign_attention_reference",
    "gumbel_noise",
    "gumbel_softmax",
    "hard_softmax",
]
