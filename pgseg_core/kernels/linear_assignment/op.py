"""``linear_assignment``: the public op and its ``torch.library`` registrations (no gradient)."""

from __future__ import annotations

import torch

from ..select import use_triton
from .reference import linear_assignment_reference

__all__ = ["linear_assignment"]


@torch.library.custom_op("pgseg::linear_assignment", mutates_args=())
def _assignment_op(cost: torch.Tensor, maximize: bool) -> torch.Tensor:
    from .kernel import assignment_forward

    return assignment_forward(cost, maximize)


@torch.library.custom_op("pgseg::linear_assignment_scipy", mutates_args=())
def _assignment_scipy_op(cost: torch.Tensor, maximize: bool) -> torch.Tensor:
    return linear_assignment_reference(cost, maximize)


@_assignment_op.register_fake
def _(cost, maximize):
    return cost.new_empty(cost.shape[:2], dtype=torch.int64)


@_assignment_scipy_op.register_fake
def _(cost, maximize):
    return cost.new_empty(cost.shape[:2], dtype=torch.int64)


def linear_assignment(cost: torch.Tensor, maximize: bool = False, backend: str | None = None) -> torch.Tensor:
    """Optimal one-to-one assignment of rows to columns of every matrix (docs/KERNELS.md §2).

    Args:
        cost: [B, K, K] finite costs, any float dtype, K >= 0 (1..256 is what the kernel is tested for).
        maximize: maximise the total instead of minimising it.
        backend: auto | torch | triton, overriding ``PGSEG_KERNELS`` (docs/KERNELS.md §1). The torch
            backend runs scipy's ``linear_sum_assignment`` per matrix on the host; the Triton kernel runs on
            the device without a host synchronisation.

    Returns:
        int64 [B, K] on ``cost``'s device: ``out[b, i]`` is the column assigned to row i. The total cost is
        optimal (equal to scipy's); among tied optima another permutation may be chosen.

    Raises:
        ValueError: ``cost`` is not [B, K, K].
        DependencyError / DeviceError: triton asked for where it cannot run.
    """
    if cost.dim() != 3 or cost.shape[1] != cost.shape[2]:
        raise ValueError(f"linear_assignment needs square matrices [B, K, K], got {list(cost.shape)}")
    cost = cost.detach()
    if not use_triton(cost, backend):
        return _assignment_scipy_op(cost, maximize)
    return _assignment_op(cost.contiguous(), maximize)
