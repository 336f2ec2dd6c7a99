"""Grouping: assign image tokens to group tokens (GroupViT, Xu et al. CVPR 2022 §3.1; docs/METHOD.md §1.3).

Legend: B batch, N input tokens, S_1 incoming group tokens, S_2 output groups, C channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import Mlp
from torch import nn

from ..kernels import assign_attention
from ..kernels.assign_attention import gumbel_softmax, hard_softmax
from .layers import CrossAttnBlock

__all__ = ["hard_softmax", "gumbel_softmax", "AssignAttention", "GroupingBlock", "GroupingOutput"]


class AssignAttention(nn.Module):
    """Single-head assignment of N tokens to S groups; softmax is over the *group* axis.

    Training with ``hard`` and ``gumbel``: Gumbel-softmax hard one-hot (straight-through). Eval with
    ``hard``: argmax one-hot (straight-through). Otherwise: plain softmax over groups. The assignment
    is divided by (tokens per group + ``assign_eps``) so each group takes the mean of its tokens.
    """

    def __init__(
        self,
        dim: int,
        qkv_bias: bool = True,
        hard: bool = True,
        gumbel: bool = True,
        gumbel_tau: float = 1.0,
        assign_eps: float = 1.0,
    ):
        super().__init__()
        self.scale = dim**-0.5
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.hard = hard
        self.gumbel = gumbel
        self.gumbel_tau = gumbel_tau
        self.assign_eps = assign_eps

    def extra_repr(self) -> str:
        return (
            f"hard={self.hard}, gumbel={self.gumbel}, gumbel_tau={self.gumbel_tau}, "
            f"assign_eps={self.assign_eps}"
        )

    def forward(
        self, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Assign tokens to groups.

        Args:
            query: group tokens [B, S, C].
            key: image tokens [B, N, C] (also the values).

        Returns:
            out [B, S, C] (projected mean of assigned values), hard [B, S, N] (the assignment used,
            one-hot when hard), soft [B, S, N] (noise-free softmax over groups), logits [B, S, N].
        """
        logits = (self.q_proj(query) @ self.k_proj(key).transpose(1, 2)) * self.scale  # [B, S, N]
        gumbel = self.hard and self.gumbel and self.training
        attn, soft, weights = assign_attention(logits, self.hard, gumbel, self.gumbel_tau, self.assign_eps)
        out = self.proj(weights @ self.v_proj(key))  # [B, S, C] <- [B, S, N] @ [B, N, C]
        return out, attn, soft, logits


@dataclass
class GroupingOutput:
    tokens: torch.Tensor  # [B, S_2, C] new segment tokens
    centres: torch.Tensor  # [B, S_2, C] group centres (output of pre_assign_attn; PGSeg's "ori_center")
    hard: torch.Tensor  # [B, S_2, N] assignment used (one-hot when hard)
    soft: torch.Tensor  # [B, S_2, N] softmax over groups, no noise
    logits: torch.Tensor  # [B, S_2, N]


class GroupingBlock(nn.Module):
    """GroupingBlock: merge N image tokens into S_2 segment tokens.

    1. LN both inputs; mix the S_1 group tokens into S_2 with a token MLP (S_1 -> C/2 -> S_2) and LN.
    2. ``pre_assign_attn``: group tokens cross-attend to the image tokens (post-norm) -> group centres.
    3. ``assign``: hard/Gumbel assignment of tokens to centres, mean of assigned values, + centres.
    4. ``x + MLP(LN(x))`` over channels.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_group_token: int,
        num_output_group: int,
        mlp_ratio: tuple[float, float] = (0.5, 4.0),
        hard: bool = True,
        gumbel: bool = True,
        gumbel_tau: float = 1.0,
        assign_eps: float = 1.0,
    ):
        super().__init__()
        self.num_output_group = num_output_group
        self.norm_tokens = nn.LayerNorm(dim)
        self.mlp_inter = Mlp(num_group_token, int(mlp_ratio[0] * dim), num_output_group)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, mlp_ratio=4.0, qkv_bias=True)
        self.assign = AssignAttention(
            dim, qkv_bias=True, hard=hard, gumbel=gumbel, gumbel_tau=gumbel_tau, assign_eps=assign_eps
        )
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, int(mlp_ratio[1] * dim), dim)

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor) -> GroupingOutput:
        """x: image tokens [B, N, C]; group_tokens: [B, S_1, C] -> GroupingOutput with S_2 groups."""
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        # [B, S_2, C] <- [B, S_1, C] (MLP over the token axis)
        projected = self.norm_post_tokens(self.mlp_inter(group_tokens.transpose(1, 2)).transpose(1, 2))
        centres = self.pre_assign_attn(projected, x)
        out, hard, soft, logits = self.assign(centres, x)
        new = out + centres
        new = new + self.mlp_channels(self.norm_new_x(new))
        return GroupingOutput(tokens=new, centres=centres, hard=hard, soft=soft, logits=logits)
