"""Batched linear assignment: Triton Hungarian kernel (``kernel.py``), scipy reference (``reference.py``)."""

from .op import linear_assignment
from .reference import linear_assignment_reference

__all__ = ["linear_assignment", "linear_assignment_reference"]
