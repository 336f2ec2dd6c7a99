"""AdamW with the released parameter groups and timm's warm-up + cosine schedule (docs/METHOD.md §2.4)."""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler

from ..config import TrainConfig

__all__ = ["param_groups", "build_optimizer", "build_scheduler"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: no decay for 1-d parameters and biases; decay for everything else (incl. pos_embed,
    group tokens and the 0-d logit scales, as the released code does). Frozen parameters are skipped."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8, **kwargs
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> CosineLRScheduler:
    """Per-step schedule: linear warm-up from warmup_lr to lr over warmup_steps, then cosine to min_lr
    evaluated at the absolute step over all steps (timm ``CosineLRScheduler``, ``t_in_epochs=False``)."""
    return CosineLRScheduler(
        optimizer,
        t_initial=max(cfg.steps, 1),
        lr_min=cfg.min_lr,
        warmup_lr_init=cfg.warmup_lr,
        warmup_t=cfg.warmup_steps,
        cycle_limit=1,
        t_in_epochs=False,
        warmup_prefix=False,
    )
