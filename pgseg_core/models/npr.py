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

from ..kernels import npr_em
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
    return npr_em(x, mu, iters, mask)  # the fused kernel on CUDA (docs/KERNELS.md §3)


def _init_prototypes(k: int, dim: int) -> torch.Tensor:
    mu = torch.randn(1, k, dim) * math.sqrt(2.0 / dim)
    return mu / (1e-6 + mu.norm(dim=2, keepdim=True))


@torch.no_grad()
def _global_batch_mean(mu: torch.Tensor) -> torch.Tensor:
    """[B, K, C] -> [1, K, C]: the mean over the global batch (all-reduced over the process group, if any), so
    every rank's buffer update is the one-process run's."""
    batch_mean = mu.mean(dim=0, keepdim=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(batch_mean)
        batch_mean /= torch.distributed.get_world_size()
    return batch_mean


def _ema_unit(buf: torch.Tensor, batch_mean: torch.Tensor, momentum: float) -> None:
    """In place: buf <- normalise(m * buf + (1 - m) * batch_mean) over the last axis (1e-6 as the M-step)."""
    new = buf.float() * momentum + batch_mean.float() * (1 - momentum)
    buf.copy_(new / (1e-6 + new.norm(dim=-1, keepdim=True)))


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
        momentum: EMA factor m for ``mu <- normalise(m * mu + (1 - m) * mean_B(prototypes))``.
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
        """mu_buf <- normalise(m * mu_buf + (1 - m) * mean over the batch of ``mu`` [B, K, C]).

        Each prototype is L2-normalised after the EMA (``/ (1e-6 + ‖·‖₂)``, as the M-step), so the buffer
        stays on the unit sphere like its initialisation: docs/METHOD.md §3.2.
        """
        _ema_unit(self.mu, _global_batch_mean(mu.float()), self.momentum)


class TextNPR(nn.Module):
    """Text-side prototypes (T-NPR).

    Args:
        num_prototypes: K (8 in the paper).
        dim: prototype width: 1 in released-code mode, D (joint embedding width) otherwise.
        em_iters: T.
        momentum: EMA factor; the buffer is updated on every training forward and re-normalised per
            prototype (in released-code mode on every forward, without re-normalisation, as released).
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
                # each channel normalised across the K scalar prototypes
                mu, _ = npr_em(x, mu, self.em_iters, normalize="prototypes")
            else:
                mu, _ = em_prototypes(tokens.detach(), self.mu.expand(B, -1, -1), self.em_iters, mask)
            if self.released_code:  # the released EMA, without re-normalisation, on every forward
                batch_mean = _global_batch_mean(mu)
                self.mu.mul_(self.momentum).add_(batch_mean.to(self.mu.dtype), alpha=1 - self.momentum)
            elif self.training:  # unit-norm EMA, as the image buffers (docs/METHOD.md §3.2)
                _ema_unit(self.mu, _global_batch_mean(mu), self.momentum)
        return mu
