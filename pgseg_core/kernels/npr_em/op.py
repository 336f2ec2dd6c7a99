"""``npr_em``: the public op and its ``torch.library`` registration (forward only; no gradient)."""

from __future__ import annotations

import torch

from ..select import use_triton
from .reference import NORMALIZE, npr_em_reference

__all__ = ["npr_em"]


@torch.library.custom_op("pgseg::npr_em", mutates_args=())
def _npr_em_op(
    x: torch.Tensor, mu0: torch.Tensor, iters: int, mask: torch.Tensor | None, normalize: str
) -> tuple[torch.Tensor, torch.Tensor]:
    from .kernel import npr_em_forward

    return npr_em_forward(x, mu0, iters, mask, normalize)


@_npr_em_op.register_fake
def _(x, mu0, iters, mask, normalize):
    B, N, C = x.shape
    K = mu0.shape[1]
    return x.new_empty(B, K, C, dtype=torch.float32), x.new_empty(B, N, K, dtype=torch.float32)


def npr_em(
    x: torch.Tensor,
    mu0: torch.Tensor,
    iters: int,
    mask: torch.Tensor | None = None,
    normalize: str = "channels",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NPR's EM, all ``iters`` iterations (docs/METHOD.md §3.2, docs/KERNELS.md §3); no gradient.

    Args:
        x: tokens [B, N, C], any float dtype. mu0: initial prototypes [B, K, C] (an expanded buffer is fine).
        iters: T >= 1. mask: optional [B, N] bool, False for padding tokens.
        normalize: "channels" (paper / image NPR) or "prototypes" (released-code 1-d text NPR).
        backend: auto | torch | triton, overriding ``PGSEG_KERNELS`` (docs/KERNELS.md §1).

    Returns:
        mu [B, K, C] and z [B, N, K] (column-normalised responsibilities of the last E-step), float32.

    Raises:
        ValueError: ``iters`` < 1 or an unknown ``normalize``.
        DependencyError / DeviceError: triton asked for where it cannot run.
    """
    if not use_triton(x, backend):
        return npr_em_reference(x, mu0, iters, mask, normalize)
    if iters < 1:
        raise ValueError(f"EM needs at least one iteration, got {iters}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    return _npr_em_op(x.detach(), mu0.detach(), int(iters), mask, normalize)
