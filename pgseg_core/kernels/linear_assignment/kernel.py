"""Triton kernel of the linear assignment: the shortest-augmenting-path Hungarian method (Kuhn-Munkres with
potentials, O(K³)), one program per matrix, every vector over the K + 1 columns held in registers.

Legend: B batch, K rows = columns. Index 0 of every column vector is the virtual column the search starts
from; columns and rows 1..K are the matrix's. ``p[j]`` is the row holding column j (0: none), ``u`` / ``v``
the row / column potentials, ``minv[j]`` the smallest reduced cost reaching free column j and ``way[j]`` the
column it was reached from. Potentials and reduced costs are float64; see docs/KERNELS.md §2 for why the
result is optimal.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["assignment_forward"]


@triton.jit
def _at(vec, idx, j):
    """vec[j] for a scalar j (a masked sum: registers cannot be indexed)."""
    return tl.sum(tl.where(idx == j, vec, 0), axis=0)


@triton.jit
def _hungarian(cost_ptr, out_ptr, K, sign, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    base = cost_ptr + b * K * K
    idx = tl.arange(0, BLOCK)
    real = (idx >= 1) & (idx <= K)
    inf = float("inf")
    u = tl.zeros([BLOCK], dtype=tl.float64)
    v = tl.zeros([BLOCK], dtype=tl.float64)
    p = tl.zeros([BLOCK], dtype=tl.int32)
    way = tl.zeros([BLOCK], dtype=tl.int32)
    for i in range(1, K + 1):
        p = tl.where(idx == 0, i, p)
        j0 = tl.zeros([], dtype=tl.int32)
        minv = tl.full([BLOCK], inf, dtype=tl.float64)
        used = idx < 0
        rows_in_tree = idx < 0
        searching = tl.full([], 1, dtype=tl.int32)
        while searching != 0:
            used = used | (idx == j0)
            i0 = _at(p, idx, j0)
            rows_in_tree = rows_in_tree | (idx == i0)
            u_i0 = _at(u, idx, i0)
            row = tl.load(base + (i0 - 1) * K + (idx - 1), mask=real, other=0.0).to(tl.float64) * sign
            cur = row - u_i0 - v
            free = real & (~used)
            better = free & (cur < minv)
            minv = tl.where(better, cur, minv)
            way = tl.where(better, j0, way)
            cand = tl.where(free, minv, inf)
            delta = tl.min(cand, axis=0)
            j1 = tl.argmin(cand, axis=0).to(tl.int32)
            u = tl.where(rows_in_tree, u + delta, u)
            v = tl.where(used, v - delta, v)
            minv = tl.where(free, minv - delta, minv)
            j0 = j1
            searching = (_at(p, idx, j0) != 0).to(tl.int32)
        while j0 != 0:  # augment along the alternating path back to the virtual column
            j1 = _at(way, idx, j0)
            p = tl.where(idx == j0, _at(p, idx, j1), p)
            j0 = j1
    tl.store(out_ptr + b * K + (p - 1).to(tl.int64), (idx - 1).to(tl.int64), mask=real)


def assignment_forward(cost: torch.Tensor, maximize: bool) -> torch.Tensor:
    """cost [B, K, K] contiguous -> int64 [B, K], the column of each row (optimal; see the module doc)."""
    B, K, _ = cost.shape
    out = torch.empty(B, K, dtype=torch.int64, device=cost.device)
    if B == 0 or K == 0:
        return out
    block = max(2, triton.next_power_of_2(K + 1))
    warps = 1 if block <= 128 else (2 if block <= 256 else 4)
    _hungarian[(B,)](cost, out, K, -1.0 if maximize else 1.0, BLOCK=block, num_warps=warps)
    return out
