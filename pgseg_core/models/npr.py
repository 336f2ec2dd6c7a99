"""Non-learnable Prototypical Regularization (NPR): prototypes by no-grad EM (docs/METHOD.md §3.2, §3.5).

Legend: B batch, N tokens, K prototypes, C channels, D joint embedding width.

Image NPR (one per grouping stage): soft k-means over the stage's *input* tokens, started from a
prototype buffer, run for T iterations without gradient:

    E-step   Z = softmax_K(X Muᵀ),  then Z[:, n, k] /= (1e-6 + Σ_n Z[:, n, k])   (column normalisation)
    M-step   Mu = Zᵀ X,             then Mu_k /= (1e-6 + ‖Mu_k‖₂)

The reconstruction ``Z Mu`` (last Z, last Mu; both constants) goes through a trainable MLP and is added
to the tokens before the grouping block, in training and at inference (docs/METHOD.md §3.1-3.2).

Text NPR (docs/METHOD.md §3.5): in released-code mode the caption's EOT feature [B, W] is viewed as W
one-dimensional tokens [B, W, 1] with K scalar prototypes. In the default mode the EM runs over the caption's
token features in the joint embedding space [B, L, D], giving K prototypes of width D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .layers import ProjectMLP

__all__ = ["em_prototypes", "NPR", "NPROutput", "TextNPR"]


@torch.no_grad()
def em_prototypes(
    x: torch.Tensor, mu: torch.Tensor, iters: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``iters`` EM iterations of NPR's soft k-means (no gradient).

    Args:
        x: tokens [B, N, C], not normalised.
        mu: initial prototypes [B, K, C] (unit norm).
        iters: T >= 1.
        mask: optional [B, N] bool, False for padding tokens (their responsibilities are zeroed).

    Returns:
        mu [B, K, C] (L2-normalised) and z [B, N, K], the column-normalised responsibilities of the last
        E-step (the ones the M-step used).
    """
    if iters < 1:
        raise ValueError(f"EM needs at least one iteration, got {iters}")
    x = x.float()
    mu = mu.float()
    z = x.new_zeros(x.shape[0], x.shape[1], mu.shape[1])
    for _ in range(iters):
        z = torch.softmax(x @ mu.transpose(1, 2), dim=2)  # [B, N, K]
        if mask is not None:
            z = z * mask.unsqueeze(-1).to(z.dtype)
        z = z / (1e-6 + z.sum(dim=1, keepdim=True))
        mu = z.transpose(1, 2) @ x  # [B, K, C]
        mu = mu / (1e-6 + mu.norm(dim=2, keepdim=True))
    return mu, z


def _init_prototypes(k: int, dim: int) -> torch.Tensor:
    mu = torch.randn(1, k, dim) * math.sqrt(2.0 / dim)
    return mu / (1e-6 + mu.norm(dim=2, keepdim=True))


@dataclass
class NPROutput:
    prototypes: torch.Tensor  # [B, K, C] EM prototypes of each image (no grad)
    recon: torch.Tensor  # [B, N, C] mapping_x(Z Mu), added to the tokens before grouping
    assign: torch.Tensor  # [B, N, K] column-normalised responsibilities of the last E-step


class NPR(nn.Module):
    """Image-side prototype estimator of one grouping stage.

    Args:
        dim: token width C.
        num_prototypes: K (the stage's number of output groups).
        em_iters: T.
        momentum: EMA factor m for ``mu <- m * mu + (1 - m) * mean_B(prototypes)``.
        update_buffer: apply that EMA in training (the released code never does: quirk 3).
        mapping_hidden: hidden width of the trainable reconstruction MLP.
        zero_init_mapping: zero the MLP's output layer so the reconstruction starts switched off.
    """

    def __init__(
        self,
        dim: int,
        num_prototypes: int,
        em_iters: int = 10,
        momentum: float = 0.9,
        update_buffer: bool = True,
        mapping_hidden: int = 4096,
        zero_init_mapping: bool = False,
    ):
        super().__init__()
        self.em_iters = em_iters
        self.momentum = momentum
        self.update_buffer = update_buffer
        self.register_buffer("mu", _init_prototypes(num_prototypes, dim))
        self.mapping_x = ProjectMLP(dim, mapping_hidden, dim)
        if zero_init_mapping:
            nn.init.zeros_(self.mapping_x.linear_out.weight)
            nn.init.zeros_(self.mapping_x.linear_out.bias)

    def extra_repr(self) -> str:
        return f"K={self.mu.shape[1]}, em_iters={self.em_iters}, update_buffer={self.update_buffer}"

    def forward(self, x: torch.Tensor) -> NPROutput:
        """x: the stage's input tokens [B, N, C] -> NPROutput."""
        B = x.shape[0]
        with torch.autocast(device_type=x.device.type, enabled=False):
            mu, z = em_prototypes(x.detach(), self.mu.expand(B, -1, -1), self.em_iters)
            recon = z @ mu  # [B, N, C] <- [B, N, K] @ [B, K, C]
        if self.training and self.update_buffer:
            self.momentum_update(mu)
        return NPROutput(prototypes=mu, recon=self.mapping_x(recon.to(x.dtype)), assign=z)

    @torch.no_grad()
    def momentum_update(self, mu: torch.Tensor) -> None:
        """mu_buf <- m * mu_buf + (1 - m) * mean over the batch of ``mu`` [B, K, C]."""
        batch_mean = mu.float().mean(dim=0, keepdim=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_mean)
            batch_mean /= torch.distributed.get_world_size()
        self.mu.mul_(self.momentum).add_(batch_mean.to(self.mu.dtype), alpha=1 - self.momentum)


class TextNPR(nn.Module):
    """Text-side prototypes (T-NPR).

    Args:
        num_prototypes: K (8 in the paper).
        dim: prototype width: 1 in released-code mode, D (joint embedding width) otherwise.
        em_iters: T.
        momentum: EMA factor; the buffer is updated on every training forward (and, in released-code
            mode, on every forward, as the released code does).
        released_code: reproduce the released 1-d formulation.
    """

    def __init__(
        self,
        num_prototypes: int,
        dim: int,
        em_iters: int = 10,
        momentum: float = 0.9,
        released_code: bool = False,
    ):
        super().__init__()
        self.em_iters = em_iters
        self.momentum = momentum
        self.released_code = released_code
        if released_code:
            mu = torch.randn(1, num_prototypes, 1) * math.sqrt(2.0 / num_prototypes)
            mu = mu / (1e-6 + mu.norm(dim=1, keepdim=True))  # unit norm across the K scalars
        else:
            mu = _init_prototypes(num_prototypes, dim)
        self.register_buffer("mu", mu)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Estimate text prototypes.

        Args:
            tokens: released mode: the detached EOT feature [B, W]; default mode: token features in the
                joint space [B, L, D].
            mask: default mode only, [B, L] bool of valid tokens.

        Returns:
            prototypes [B, K, 1] (released) or [B, K, D] (default), no gradient.
        """
        with torch.no_grad(), torch.autocast(device_type=tokens.device.type, enabled=False):
            B = tokens.shape[0]
            if self.released_code:
                x = tokens.detach().float().unsqueeze(-1)  # [B, W, 1] <- [B, W]
                mu = self.mu.expand(B, -1, -1).float()
                for _ in range(self.em_iters):
                    z = torch.softmax(x @ mu.transpose(1, 2), dim=2)
                    z = z / (1e-6 + z.sum(dim=1, keepdim=True))
                    mu = z.transpose(1, 2) @ x
                    mu = mu / (1e-6 + mu.norm(dim=1, keepdim=True))  # across the K scalar prototypes
            else:
                mu, _ = em_prototypes(tokens.detach(), self.mu.expand(B, -1, -1), self.em_iters, mask)
            if self.training or self.released_code:
                batch_mean = mu.mean(dim=0, keepdim=True)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.all_reduce(batch_mean)  # the global batch's mean on every rank
                    batch_mean /= torch.distributed.get_world_size()
                self.mu.mul_(self.momentum).add_(batch_mean.to(self.mu.dtype), alpha=1 - self.momentum)
        return mu
