"""BatchNorm over the global batch for several processes (docs/TRAINING.md §3).

On CUDA the model's ``BatchNorm1d`` layers become ``torch.nn.SyncBatchNorm`` (NCCL). PyTorch's SyncBatchNorm
runs on GPUs only, so on the CPU (gloo) they become :class:`GlobalBatchNorm1d`: the same maths from
``torch.distributed.nn.functional.all_reduce`` (differentiable), in two passes: per channel the sums and
counts of every rank are added, mean = Σx / n, then the centred squares, biased var = Σ(x - mean)² / n; the
running statistics
get the unbiased var (n / (n - 1)) with the layer's momentum, as ``BatchNorm1d`` does over one batch of n.
Its backward adds the gradients of every rank's loss with respect to the shared statistics, so W processes
of b samples compute the gradients of one process with W·b samples (up to float rounding: the sums are
added in another order).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GlobalBatchNorm1d", "convert_batchnorm"]


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the global batch (input ``[B, C]`` or
    ``[B, C, L]``); in eval mode, or with one process, exactly ``BatchNorm1d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = torch.distributed
        if not (
            self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, C] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.full((1,), float(x.numel() // C), device=x.device)
        sums = all_reduce(torch.cat([xf.sum(dims), count]))  # [C + 1], summed over ranks
        n = sums[-1]
        mean = sums[:C] / n
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n  # two passes: no cancellation
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=m)
                self.num_batches_tracked.add_(1)
        return y.to(x.dtype)


def convert_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every ``BatchNorm1d`` of ``model`` in place -> ``nn.SyncBatchNorm`` (CUDA) or
    :class:`GlobalBatchNorm1d` (CPU), with its weights, running statistics and settings."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm1d:
            new = GlobalBatchNorm1d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            ).to(device)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new)
        else:
            convert_batchnorm(child, device)
    return model
