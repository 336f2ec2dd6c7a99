"""Transformer building blocks shared by the GroupViT image encoder.

Legend: B batch, N tokens, S group tokens, C channels. Parameter names follow the released GroupViT
checkpoints (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``norm1`` ...) so conversion is mechanical.
Source: GroupViT (Xu et al., CVPR 2022) §3.1; docs/METHOD.md §1.2-1.3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

__all__ = ["attend", "Attention", "CrossAttention", "Block", "CrossAttnBlock", "MixerMlp", "ProjectMLP"]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + attn_mask) v, with dropout ``dropout_p`` on the attention weights.

    ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels) except when training on the CPU
    (autograd recording and ``q`` needing a gradient): there the explicit matmul + softmax form is used,
    whose forward + backward took 0.73-0.82x the fused CPU kernel's time at GroupViT-S's and the text tower's
    shapes (batch 8, 2 threads, 2026-12-03; the fused backward zero-fills its gradient buffers). Without
    gradients the fused kernel stays: at 860 tokens (about a 448x448 slide window: 784 patches + 64 group
    tokens) it took 0.36x the explicit form's time. Both compute the same attention up to float rounding
    (``tests/test_layers.py``).

    Args:
        q: [B, heads, N, d]; k, v: [B, heads, M, d].
        attn_mask: additive float mask broadcasting to [B, heads, N, M] (``-inf`` = not attended), or None.

    Returns:
        [B, heads, N, d].
    """
    if q.device.type == "cpu" and q.requires_grad and torch.is_grad_enabled():
        weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [B, heads, N, M]
        if attn_mask is not None:
            weights = weights + attn_mask
        weights = weights.softmax(dim=-1)
        if dropout_p > 0:
            weights = F.dropout(weights, dropout_p)
        return weights @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (rows stacked q, k, v).

    Args:
        dim: token width C.
        num_heads: heads; head width C / num_heads, softmax scaled by head_width^-0.5.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C] -> [B, N, C]."""
        B, N, C = x.shape
        # [3, B, heads, N, C/heads] <- [B, N, 3C]
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # one backward (a stack) instead of three zero-filled [3, ...] selects
        out = attend(q, k, v, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class CrossAttention(nn.Module):
    """Multi-head cross-attention with separate q/k/v projections (GroupViT ``pre_assign_attn.attn``)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """query: [B, S, C], key = value: [B, N, C] -> [B, S, C]."""
        B, S, C = query.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, heads, T, C/heads] <- [B, T, C]
            return t.reshape(B, t.shape[1], h, C // h).transpose(1, 2)

        out = attend(
            heads(self.q_proj(query)),
            heads(self.k_proj(key)),
            heads(self.v_proj(key)),
            self.attn_drop if self.training else 0.0,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, S, C)))


class Block(nn.Module):
    """Pre-LN ViT block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C] -> [B, N, C]."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossAttnBlock(nn.Module):
    """Post-norm cross-attention block (GroupViT ``CrossAttnBlock(post_norm=True)``).

    ``out = LN_post(y + MLP(LN2(y)))`` with ``y = query + CrossAttn(query, key)``; query and key are not
    normalised before the attention (the released ``norm_q``/``norm_k`` are identities).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.attn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_post = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """query: [B, S, C], key: [B, N, C] -> [B, S, C]."""
        x = query + self.attn(query, key)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


class MixerMlp(Mlp):
    """Token-mixing MLP: applies the MLP over the token axis. [B, S_out, C] <- [B, S_in, C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ProjectMLP(nn.Module):
    """Projection head: Conv1d(k=1) in->hidden, BatchNorm1d, ReLU, Conv1d(k=1) hidden->out.

    Layer names and weight shapes ([out, in, 1]) match the released ``img_projector`` / ``text_projector`` /
    NPR ``mapping_x``; the forward applies each k=1 convolution as a linear map over the channels.
    Input [B, C_in] or [B, L, C_in]; output keeps the rank with C_out channels.

    ``update_stats=False`` normalises with the current batch statistics but leaves the BatchNorm running
    statistics untouched (used when the head is applied to auxiliary inputs during training).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, num_layers: int = 2):
        super().__init__()
        hidden: list[nn.Module] = []
        for i in range(num_layers - 1):
            hidden += [
                nn.Conv1d(in_dim if i == 0 else hidden_dim, hidden_dim, kernel_size=1),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
        self.linear_hidden = nn.Sequential(*hidden)
        self.linear_out = nn.Conv1d(in_dim if num_layers == 1 else hidden_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        # channels-last throughout: each Conv1d(k=1) is F.linear on its squeezed weight (the same maths; on
        # the CPU, forward + backward of torch's k=1 convolution took 3-5x F.linear's time on pooled [8, C]
        # inputs and 1.2-1.6x on token sequences, 2026-12-03), and BatchNorm1d normalises the B*L rows per
        # channel, as it does over [B, C, L].
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # [B*L, C_in] <- [B, (L,) C_in]
        for layer in self.linear_hidden:
            if isinstance(layer, nn.Conv1d):
                x = F.linear(x, layer.weight.squeeze(-1), layer.bias)
            elif isinstance(layer, (nn.BatchNorm1d, nn.SyncBatchNorm)) and self.training and not update_stats:
                x = _batch_stats_only(layer, x)
            else:
                x = layer(x)
        x = F.linear(x, self.linear_out.weight.squeeze(-1), self.linear_out.bias)  # [B*L, C_out]
        return x.reshape(*lead, x.shape[-1])


def _batch_stats_only(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer`` (BatchNorm1d, or its synchronised forms under DDP: docs/TRAINING.md §3) normalising with the
    current batch's statistics, its running statistics left untouched."""
    saved = layer.track_running_stats
    layer.track_running_stats = False
    try:
        return layer(x)
    finally:
        layer.track_running_stats = saved
