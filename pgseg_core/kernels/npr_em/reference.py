"""Plain torch reference of NPR's EM (docs/METHOD.md §3.2, §3.5): the test oracle of the fused kernel.

Legend: B batch, N tokens, K prototypes, C channels.
"""

from __future__ import annotations

import torch

__all__ = ["NORMALIZE", "npr_em_reference"]

#: How the M-step normalises the prototypes: "channels" (each prototype to unit L2 norm over C, the
#: paper and the image NPR) or "prototypes" (each channel to unit norm over the K prototypes, the released
#: code's 1-d text NPR, docs/METHOD.md §3.5).
NORMALIZE = ("channels", "prototypes")


@torch.no_grad()
def npr_em_reference(
    x: torch.Tensor,
    mu: torch.Tensor,
    iters: int,
    mask: torch.Tensor | None = None,
    normalize: str = "channels",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``iters`` EM iterations of NPR's soft k-means in float32 (no gradient).

    E-step ``Z = softmax_K(X Muᵀ)`` (times ``mask``), then ``Z[:, n, k] /= 1e-6 + Σ_n Z[:, n, k]``;
    M-step ``Mu = Zᵀ X``, then ``Mu /= 1e-6 + ‖Mu‖₂`` over C (``normalize="channels"``) or over K
    (``"prototypes"``).

    Args:
        x: tokens [B, N, C], any float dtype. mu: initial prototypes [B, K, C]. iters: T >= 1.
        mask: optional [B, N] bool, False for padding tokens (their responsibilities are zeroed).
        normalize: "channels" or "prototypes".

    Returns:
        mu [B, K, C] and z [B, N, K] (the column-normalised responsibilities of the last E-step), float32.

    Raises:
        ValueError: ``iters`` < 1 or an unknown ``normalize``.
    """
    if iters < 1:
        raise ValueError(f"EM needs at least one iteration, got {iters}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    norm_dim = 2 if normalize == "channels" else 1
    x = x.float()
    mu = mu.float()
    z = x.new_zeros(x.shape[0], x.shape[1], mu.shape[1])
    for _ in range(iters):
        z = torch.softmax(x @ mu.transpose(1, 2), dim=2)  # [B, N, K]
        if mask is not None:
            z = z * mask.unsqueeze(-1).to(z.dtype)
        z = z / (1e-6 + z.sum(dim=1, keepdim=True))
        mu = z.transpose(1, 2) @ x  # [B, K, C]
        mu = mu / (1e-6 + mu.norm(dim=norm_dim, keepdim=True))
    return mu, z
