"""GradCache: the image-text contrastive loss over a batch larger than one forward fits
(Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", 2021;
docs/TRAINING.md §4).

One step over this rank's b samples in c chunks:

1. each chunk runs the training forward without gradient, keeping its image and text embeddings
   ([b/c, D] each) and the torch RNG state it started from (CPU and the CUDA device);
2. L_itc over the whole batch (across ranks: the gathered global batch) is computed from the concatenated
   embeddings, and its gradient with respect to the embeddings and to the logit scale is taken;
3. each chunk runs again with gradient from its saved RNG state (so Gumbel noise and dropout repeat), and
   ``Σ emb · cached grad + (chunk size / b) · (its other loss terms)`` is backpropagated; under DDP the
   gradients are all-reduced once, with the last chunk.

The model's buffers (BatchNorm running statistics, NPR prototype memories) are put back after pass 1, so
pass 3 moves them through the same sequence of chunks.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from ..errors import ConfigError
from ..losses.contrastive import image_text_contrastive

__all__ = ["grad_cache_step", "split_batch"]


def split_batch(captions: list[str], inputs: dict[str, torch.Tensor], chunks: int) -> list[tuple[list, dict]]:
    """``chunks`` consecutive slices of a batch of b samples (b must divide by ``chunks``).

    Raises:
        ConfigError: b is not a multiple of ``chunks``.
    """
    b = len(captions)
    if b % chunks:
        raise ConfigError(
            f"train.grad_cache_chunks ({chunks}) must divide the per-process batch ({b}): choose a divisor"
        )
    n = b // chunks
    return [(captions[i : i + n], {k: v[i : i + n] for k, v in inputs.items()}) for i in range(0, b, n)]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def grad_cache_step(model, forward, captions: list[str], inputs: dict[str, torch.Tensor], chunks: int,
                    autocast: Any = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Accumulate the gradients of one step in ``chunks`` forwards (module docstring); no optimizer step.

    Args:
        model: the PGSeg model (unwrapped).
        forward: its training forward (``model.forward_train`` behind :class:`~.distributed.TrainForward`,
            DDP-wrapped with several processes).
        captions: this rank's b captions; inputs: ``{"images": [b,3,H,W]}`` or ``{"stem_feats": ...}``.
        chunks: c, dividing b.
        autocast: the autocast context of the step (None: none).

    Returns:
        The loss dict of the batch, detached: "loss_itc" over the whole batch, the other terms the mean
        of the chunks' (weighted by chunk size), "loss" their total.

    Raises:
        ConfigError: ``model.multi_label`` > 0 (its prompts span the batch), or b not divisible by c.
    """
    if model.cfg.multi_label > 0:
        raise ConfigError(
            "train.grad_cache_chunks > 1 needs model.multi_label 0 (its prompts span the batch)"
        )
    parts = split_batch(captions, inputs, chunks)
    device = model.logit_scale.device
    amp = autocast if autocast is not None else nullcontext()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    states, img, txt = [], [], []
    with torch.no_grad():
        for caps, inp in parts:  # pass 1: embeddings only
            states.append(_rng_state(device))
            with amp:
                out = model.forward_train(caps, **inp, return_embeddings=True)
            img.append(out["image_emb"].float())
            txt.append(out["text_emb"].float())
    after = _rng_state(device)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    # pass 2: L_itc over the whole batch, its gradient w.r.t. the embeddings and the logit scale
    all_img = torch.cat(img).requires_grad_()
    all_txt = torch.cat(txt).requires_grad_()
    scale = model.logit_scale.detach().clone().requires_grad_()
    itc = image_text_contrastive(all_img, all_txt, scale)
    g_img, g_txt, g_scale = torch.autograd.grad(itc, [all_img, all_txt, scale])
    return _replay(model, forward, parts, states, after, (g_img, g_txt, g_scale), itc.detach(), amp)


def _replay(model, forward, parts, states, after, grads, itc, amp) -> dict[str, torch.Tensor]:
    """Pass 3: each chunk again with gradient from its RNG state; the cached gradients are backpropagated."""
    g_img, g_txt, g_scale = grads
    device = model.logit_scale.device
    b = sum(len(c) for c, _ in parts)
    sums: dict[str, torch.Tensor] = {}
    local_sum = torch.zeros((), device=device)
    start = 0
    for i, ((caps, inp), state) in enumerate(zip(parts, states)):
        last = i == len(parts) - 1
        n = len(caps)
        _set_rng_state(state, device)
        sync = nullcontext() if last or not hasattr(forward, "no_sync") else forward.no_sync()
        with sync:
            with amp:
                out = forward(caps, **inp, return_embeddings=True)
            local = out["loss"] - out["loss_itc"]  # the per-image terms of this chunk (mean over it)
            surrogate = (out["image_emb"].float() * g_img[start : start + n]).sum()
            surrogate = surrogate + (out["text_emb"].float() * g_txt[start : start + n]).sum()
            surrogate = surrogate + (n / b) * local
            if last:  # the logit scale's gradient from pass 2, through the same backward
                surrogate = surrogate + (model.logit_scale * g_scale).sum()
            surrogate.backward()
        local_sum = local_sum + (n / b) * local.detach().float()
        for k, v in out.items():
            if k not in ("image_emb", "text_emb", "loss", "loss_itc"):
                sums[k] = sums.get(k, 0.0) + (n / b) * v.detach().float()
        start += n
    _set_rng_state(after, device)
    return {"loss_itc": itc, **sums, "loss": itc + local_sum}
