"""open_clip models as frozen MaskCLIP-style dense backbones (Zhou et al., ECCV 2022; docs/MVP_SEG.md §1).

Legend: B images, W tower width, D joint width, h×w patch / feature grid.

- ViT: the last block keeps only its value path: ``x_L = out_proj(v(ln_1(x_{L-1})))`` (no query-key
  attention, no residual, no MLP), then ``ln_post`` and ``proj`` on every patch token.
- ResNet (ModifiedResNet): the attention pool's value and output projections applied as 1×1 convolutions
  on the last feature map, ``F = c_proj(v_proj(X))``.

Images arrive ImageNet-normalised (the project's preprocessing) and are re-normalised with CLIP's mean / std.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, DependencyError
from ..utils.hashing import file_sha256
from .base import FrozenBackbone
from .text import ClipCausalText

__all__ = ["OpenClipBackbone", "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_IN_MEAN = (0.485, 0.456, 0.406)
_IN_STD = (0.229, 0.224, 0.225)


def _create(model_name: str, weights: str):
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - core dependency
        raise DependencyError("open_clip backbones need open_clip_torch: pip install open_clip_torch") from e
    if model_name.endswith(".json"):  # a local model config: registered under its file stem
        open_clip.add_model_config(model_name)
        model_name = Path(model_name).stem
    if model_name not in open_clip.list_models():
        raise ConfigError(
            f"unknown open_clip model '{model_name}': see open_clip.list_models() or pass a config .json"
        )
    model = open_clip.create_model(model_name, pretrained=None)
    if not Path(weights).is_file():
        raise CheckpointError(
            f"open_clip weights '{weights}' not found: give a local state_dict .pt / .bin file"
        )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{weights} does not fit open_clip model {model_name}: {str(e).splitlines()[0]}"
        ) from e
    return model, open_clip.get_tokenizer(model_name)


class OpenClipBackbone(FrozenBackbone):
    """``open_clip:MODEL:WEIGHTS`` (MODEL an open_clip name or a config .json; WEIGHTS a local state dict)."""

    def __init__(self, model_name: str, weights: str) -> None:
        super().__init__()
        model, tokenizer = _create(model_name, weights)
        self.reference = f"open_clip:{model_name}:{weights}"
        self.identity = file_sha256(weights)
        self.clip = model
        self.logit_scale = float(model.logit_scale.detach().exp().clamp(max=100.0))
        visual = model.visual
        self.is_vit = hasattr(visual, "conv1") and hasattr(visual, "class_embedding")
        if self.is_vit:
            patch = visual.conv1.kernel_size
            self.stride = int(patch[0] if isinstance(patch, tuple) else patch)
        elif hasattr(visual, "attnpool"):
            self.stride = 32
        else:
            raise ConfigError(
                f"open_clip model {model_name}: only ViT and ModifiedResNet towers have a dense readout"
            )
        scale = torch.tensor(_IN_STD) / torch.tensor(CLIP_STD)
        shift = (torch.tensor(_IN_MEAN) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
        self.register_buffer("_scale", scale[None, :, None, None], persistent=False)
        self.register_buffer("_shift", shift[None, :, None, None], persistent=False)
        self.text = ClipCausalText(
            model.token_embedding,
            model.positional_embedding,
            self._run_text_blocks,
            model.ln_final,
            self._project_text,
            lambda texts, n: tokenizer(texts, context_length=n),
        )
        self.freeze()

    def _run_text_blocks(self, x: torch.Tensor) -> torch.Tensor:
        t = self.clip.transformer
        mask = self.clip.attn_mask[: x.shape[1], : x.shape[1]]
        if not getattr(t, "batch_first", True):
            return t(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        return t(x, attn_mask=mask)

    def _project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.clip.text_projection
        return proj(pooled) if isinstance(proj, torch.nn.Module) else pooled @ proj

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self._scale + self._shift
        feats = self._vit_dense(x) if self.is_vit else self._resnet_dense(x)
        return F.normalize(feats.float(), dim=1)

    def _vit_dense(self, x: torch.Tensor) -> torch.Tensor:
        v = self.clip.visual
        x = v.conv1(x)  # [B, W, h, w]
        b, width, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = v.positional_embedding
        g = math.isqrt(int(pos.shape[0]) - 1)
        grid_pos = pos[1:].reshape(1, g, g, width).permute(0, 3, 1, 2)
        if (g, g) != (h, w):
            grid_pos = F.interpolate(grid_pos, size=(h, w), mode="bicubic", align_corners=False)
        grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, h * w, width)
        cls = v.class_embedding.reshape(1, 1, width).expand(b, -1, -1)
        x = torch.cat([cls + pos[:1], x + grid_pos], dim=1)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        batch_first = getattr(v.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for blk in blocks[:-1]:
            x = blk(x)
        x = x if batch_first else x.transpose(0, 1)
        last = blocks[-1]
        if not hasattr(last, "attn") or not hasattr(last.attn, "in_proj_weight"):
            raise ConfigError("this open_clip ViT's last block has no fused value projection (custom block)")
        y = last.ln_1(x)
        wv = last.attn.in_proj_weight[2 * width :]
        bv = last.attn.in_proj_bias[2 * width :] if last.attn.in_proj_bias is not None else None
        y = last.attn.out_proj(F.linear(y, wv, bv))
        y = getattr(last, "ls_1", torch.nn.Identity())(y)
        y = v.ln_post(y[:, 1:])
        if v.proj is not None:
            y = y @ v.proj
        return y.transpose(1, 2).reshape(b, -1, h, w)

    def _resnet_dense(self, x: torch.Tensor) -> torch.Tensor:
        v = self.clip.visual
        x = v.stem(x)
        for layer in (v.layer1, v.layer2, v.layer3, v.layer4):
            x = layer(x)
        pool = v.attnpool
        x = F.conv2d(x, pool.v_proj.weight[:, :, None, None], pool.v_proj.bias)
        return F.conv2d(x, pool.c_proj.weight[:, :, None, None], pool.c_proj.bias)
