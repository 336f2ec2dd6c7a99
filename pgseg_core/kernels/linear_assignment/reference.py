"""Reference linear assignment: scipy's ``linear_sum_assignment`` per matrix (test oracle, CPU path)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["linear_assignment_reference"]


def linear_assignment_reference(cost: torch.Tensor, maximize: bool = False) -> torch.Tensor:
    """Optimal assignment of every square matrix of ``cost`` [B, K, K] (float64 on the host).

    Returns:
        int64 [B, K] on ``cost``'s device: ``out[b, i]`` is the column assigned to row i.

    Raises:
        ValueError: a matrix with no finite assignment (scipy's "cost matrix is infeasible").
    """
    mats = cost.detach().to(device="cpu", dtype=torch.float64).numpy()
    cols = np.stack([linear_sum_assignment(m, maximize=maximize)[1] for m in mats]) if len(mats) else None
    if cols is None:
        return torch.empty(cost.shape[:2], dtype=torch.long, device=cost.device)
    return torch.from_numpy(cols.astype(np.int64)).to(cost.device)
