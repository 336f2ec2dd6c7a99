"""Inputs of the default-mode text term L_T: real caption tokens, frozen-head centres (docs/METHOD.md §3.5).

Legend: B captions (= images), L token positions, W text width, S final groups, C token width, D joint width.

In the default ("paper intent") mode the text prototypes are estimated by EM over the caption's token
features projected into the joint space, and matched to the projected final group centres. Three choices
make that sound (docs/METHOD.md §3.5, "pgseg default"):

- only real tokens count: padding never enters the text head's BatchNorm statistics nor the EM, and in the
  causal CLIP tower the SOT position (identical for every caption: it attends only to itself) is left out;
- the text side is a constant (no gradient), as the released code's EOT-based text prototypes are;
- L_T's gradient reaches the group centres (and through them the image encoder) but not the image head:
  the head is applied with detached weights, so the 0.01-weighted auxiliary term does not reshape the
  joint space that L_itc trains. The released code's text term also reaches only the centres.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from .layers import ProjectMLP

__all__ = ["text_npr_mask", "project_valid_tokens", "project_frozen"]


def text_npr_mask(mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Tokens the text EM may use.

    Args:
        mask: [B, L] bool, True for real tokens (SOT..EOT, or a bidirectional tower's tokens).
        causal: the tower is the causal CLIP transformer, whose position 0 (SOT) carries no caption
            information; it is then left out. The EOT token always stays in.

    Returns:
        [B, L] bool (a new tensor).
    """
    out = mask.clone()
    if causal and out.shape[1] > 1:
        out[:, 0] = False
    return out


@torch.no_grad()
def project_valid_tokens(head: ProjectMLP, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The text head applied to the real tokens only (no gradient).

    In training the head's BatchNorm normalises with the statistics of the M real tokens of the batch
    (``mask.sum()``), padding excluded, and its running statistics are left untouched; in eval it uses the
    running statistics, as for any input.

    Args:
        head: the text projection head (W -> D).
        tokens: [B, L, W] token features (any values at padding positions).
        mask: [B, L] bool, True for the tokens to project; at least 2 in training (BatchNorm).

    Returns:
        [B, L, D] projected tokens, exactly 0 at masked positions; detached.
    """
    valid = tokens.detach()[mask]  # [M, W]
    projected = head(valid, update_stats=False)  # [M, D]
    out = projected.new_zeros(tokens.shape[0], tokens.shape[1], projected.shape[-1])
    out[mask] = projected
    return out


def project_frozen(head: ProjectMLP, x: torch.Tensor) -> torch.Tensor:
    """``head(x)`` with the head's weights treated as constants (gradient flows to ``x`` only).

    BatchNorm in training uses the statistics of ``x`` ([B, S, C]: B·S positions, all real) without
    updating the running statistics; in eval the running statistics.

    Args:
        head: a projection head (C -> D).
        x: [B, S, C].

    Returns:
        [B, S, D].
    """
    frozen = {name: p.detach() for name, p in head.named_parameters()}
    return functional_call(head, frozen, (x,), {"update_stats": False})
