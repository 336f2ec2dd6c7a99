"""NPR's EM: fused Triton kernel (``kernel.py``), torch reference (``reference.py``)."""

from .op import npr_em
from .reference import NORMALIZE, npr_em_reference

__all__ = ["NORMALIZE", "npr_em", "npr_em_reference"]
