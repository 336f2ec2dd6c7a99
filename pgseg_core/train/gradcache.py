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

With GroupViT's multi-label loss (``model.multi_label`` > 0) the step's prompts are built once, before
pass 1, from all b captions (across ranks: gathered and merged, this rank keeps its share, as in the
direct step); chunk k encodes the k-th slice of them next to its captions, pass 2 adds L_ml over the
whole step (image or group embeddings against every prompt) and takes its gradients too (the prompt
embeddings, the image-side embeddings and the multi-label logit scale).

The model's buffers (BatchNorm running statistics, NPR prototype memories) are put back after pass 1, so
pass 3 moves them through the same sequence of chunks.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from ..errors import ConfigError
from ..losses.contrastive import image_text_contrastive
from ..losses.multi_label import multi_label_contrastive, share_slices

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


_EMB = ("image_emb", "text_emb", "ml_side", "prompt_emb")  # the loss inputs cached in pass 1


def _step_prompts(
    model, captions: list[str], chunks: int
) -> tuple[list[list[str]] | None, torch.Tensor | None]:
    """Multi-label: the step's prompts (this rank's share) in ``chunks`` slices, and the global targets
    [G, P]; (None, None) without the multi-label loss."""
    if model.cfg.multi_label <= 0:
        return None, None
    mine, targets = model.rank_prompts(captions)
    return [mine[part] for part in share_slices(len(mine), chunks)], targets


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
        The loss dict of the batch, detached: "loss_itc" (and "loss_multi_label") over the whole batch,
        the other terms the mean of the chunks' (weighted by chunk size), "loss" their total.

    Raises:
        ConfigError: b not divisible by c.
    """
    parts = split_batch(captions, inputs, chunks)
    prompts, targets = _step_prompts(model, captions, chunks)
    device = model.logit_scale.device
    amp = autocast if autocast is not None else nullcontext()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    states, cached = [], {key: [] for key in _EMB}
    with torch.no_grad():
        for k, (caps, inp) in enumerate(parts):  # pass 1: embeddings only
            states.append(_rng_state(device))
            with amp:
                out = model.forward_train(caps, **inp, return_embeddings=True, **_ml_kwargs(prompts, k))
            for key in _EMB:
                if key in out:
                    cached[key].append(out[key].float())
    after = _rng_state(device)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    # pass 2: the contrastive losses over the whole batch, their gradients w.r.t. the embeddings and scales
    leaves = {key: torch.cat(v).requires_grad_() for key, v in cached.items() if v}
    scales = {"logit_scale": model.logit_scale.detach().clone().requires_grad_()}
    itc = image_text_contrastive(leaves["image_emb"], leaves["text_emb"], scales["logit_scale"])
    losses = {"loss_itc": itc}
    total = itc
    if targets is not None:
        scales["multi_label_logit_scale"] = model.multi_label_logit_scale.detach().clone().requires_grad_()
        ml = multi_label_contrastive(
            leaves["ml_side"], leaves["prompt_emb"], targets, scales["multi_label_logit_scale"]
        )
        losses["loss_multi_label"] = ml
        total = total + model.cfg.multi_label_weight * ml
    grads = torch.autograd.grad(total, [*leaves.values(), *scales.values()])
    g_emb = {key: _split(g, [t.shape[0] for t in cached[key]]) for key, g in zip(leaves, grads)}
    g_scale = dict(zip(scales, grads[len(leaves) :]))
    ctx = (states, after, amp, prompts)
    out = _replay(model, forward, parts, ctx, g_emb, g_scale)
    whole = {k: v.detach() for k, v in losses.items()}
    return {**whole, **out["sums"], "loss": total.detach() + out["local"]}


def _ml_kwargs(prompts: list[list[str]] | None, k: int) -> dict:
    return {} if prompts is None else {"ml_prompts": prompts[k]}


def _split(g: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(g, sizes))


def _replay(model, forward, parts, ctx, g_emb, g_scale) -> dict[str, Any]:
    """Pass 3: each chunk again with gradient from its RNG state; the cached gradients are backpropagated."""
    states, after, amp, prompts = ctx
    device = model.logit_scale.device
    b = sum(len(c) for c, _ in parts)
    sums: dict[str, torch.Tensor] = {}
    local_sum = torch.zeros((), device=device)
    for i, ((caps, inp), state) in enumerate(zip(parts, states)):
        last = i == len(parts) - 1
        n = len(caps)
        _set_rng_state(state, device)
        sync = nullcontext() if last or not hasattr(forward, "no_sync") else forward.no_sync()
        with sync:
            with amp:
                out = forward(caps, **inp, return_embeddings=True, **_ml_kwargs(prompts, i))
            local = out["loss"] - out["loss_itc"]  # the per-image terms of this chunk (mean over it)
            surrogate = (n / b) * local
            for key, chunks in g_emb.items():
                surrogate = surrogate + (out[key].float() * chunks[i]).sum()
            if last:  # the scales' gradients from pass 2, through the same backward
                for name, g in g_scale.items():
                    surrogate = surrogate + (getattr(model, name) * g).sum()
            surrogate.backward()
        local_sum = local_sum + (n / b) * local.detach().float()
        for k, v in out.items():
            if k not in (*_EMB, "loss", "loss_itc"):
                sums[k] = sums.get(k, 0.0) + (n / b) * v.detach().float()
    _set_rng_state(after, device)
    return {"sums": sums, "local": local_sum}
