"""Accelerated ops, each a Triton kernel beside the plain torch reference it is tested against
(docs/KERNELS.md). Models and losses call the ops below, never a kernel directly; the backend comes from
``PGSEG_KERNELS=auto|torch|triton`` or the ``train.kernels`` config key (:mod:`.select`).

- :func:`linear_assignment` (``linear_assignment/``): batched optimal assignment (L_PG's matching).
- :func:`npr_em` (``npr_em/``): NPR's EM, all iterations fused.
- :func:`assign_attention` (``assign_attention/``): GroupViT's hard / Gumbel assignment with its backward.

Triton is optional (``pip install 'pgseg[kernels]'``); nothing here imports it until a kernel runs.
"""

from .assign_attention import Assignment, assign_attention
from .linear_assignment import linear_assignment
from .npr_em import npr_em
from .select import BACKENDS, configure, requested_backend, use_triton

__all__ = [
    "BACKENDS",
    "Assignment",
    "assign_attention",
    "configure",
    "linear_assignment",
    "npr_em",
    "requested_backend",
    "use_triton",
]
