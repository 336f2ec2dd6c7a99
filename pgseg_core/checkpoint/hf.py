"""Hugging Face ``GroupViTModel`` (transformers) <-> pgseg names; ``config.json`` <-> :class:`ModelConfig`.

HF names (``vision_model.*``, ``text_model.*``, ``visual_projection.*``, ``text_projection.*``) differ from
ours (:mod:`.formats`) by: separate q/k/v projections instead of the fused ``qkv`` / ``in_proj`` (rows stacked
q, k, v), ``nn.Linear`` projection heads instead of Conv1d k=1, an ``nn.Embedding`` text position table, and
other module names. Everything here is pure tensor renaming/reshaping: no model is built.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..config import ModelConfig, NPRConfig, TextConfig, VisionConfig
from ..errors import CheckpointError
from .formats import OUR_TEXT_MU, strip_prefix

__all__ = ["hf_to_pgseg", "pgseg_to_hf", "config_from_hf", "hf_config_from_model_config"]

# (our template, HF template); {s}/{i} are integers, {p} the rest of the key. First match wins.
_HF_RULES: list[tuple[str, str]] = [
    ("img_encoder.patch_embed.proj.{p}", "vision_model.embeddings.patch_embeddings.projection.{p}"),
    ("img_encoder.patch_embed.norm.{p}", "vision_model.embeddings.layernorm.{p}"),
    ("img_encoder.pos_embed", "vision_model.embeddings.position_embeddings"),
    ("img_encoder.norm.{p}", "vision_model.layernorm.{p}"),
    (
        "img_encoder.layers.{s}.blocks.{i}.norm1.{p}",
        "vision_model.encoder.stages.{s}.layers.{i}.layer_norm1.{p}",
    ),
    (
        "img_encoder.layers.{s}.blocks.{i}.norm2.{p}",
        "vision_model.encoder.stages.{s}.layers.{i}.layer_norm2.{p}",
    ),
    (
        "img_encoder.layers.{s}.blocks.{i}.attn.proj.{p}",
        "vision_model.encoder.stages.{s}.layers.{i}.self_attn.out_proj.{p}",
    ),
    ("img_encoder.layers.{s}.blocks.{i}.mlp.{p}", "vision_model.encoder.stages.{s}.layers.{i}.mlp.{p}"),
    (
        "img_encoder.layers.{s}.downsample.pre_assign_attn.attn.proj.{p}",
        "vision_model.encoder.stages.{s}.downsample.pre_assign_attn.attn.out_proj.{p}",
    ),
    ("img_encoder.layers.{s}.downsample.{p}", "vision_model.encoder.stages.{s}.downsample.{p}"),
    ("img_encoder.layers.{s}.group_token", "vision_model.encoder.stages.{s}.group_token"),
    ("img_encoder.layers.{s}.group_projector.{p}", "vision_model.encoder.stages.{s}.group_projector.{p}"),
    ("text_encoder.token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("text_encoder.positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("text_encoder.transformer.resblocks.{i}.ln_1.{p}", "text_model.encoder.layers.{i}.layer_norm1.{p}"),
    ("text_encoder.transformer.resblocks.{i}.ln_2.{p}", "text_model.encoder.layers.{i}.layer_norm2.{p}"),
    ("text_encoder.transformer.resblocks.{i}.mlp.c_fc.{p}", "text_model.encoder.layers.{i}.mlp.fc1.{p}"),
    ("text_encoder.transformer.resblocks.{i}.mlp.c_proj.{p}", "text_model.encoder.layers.{i}.mlp.fc2.{p}"),
    (
        "text_encoder.transformer.resblocks.{i}.attn.out_proj.{p}",
        "text_model.encoder.layers.{i}.self_attn.out_proj.{p}",
    ),
    ("text_encoder.ln_final.{p}", "text_model.final_layer_norm.{p}"),
    ("img_projector.linear_hidden.0.{p}", "visual_projection.0.{p}"),
    ("img_projector.linear_hidden.1.{p}", "visual_projection.1.{p}"),
    ("img_projector.linear_out.{p}", "visual_projection.3.{p}"),
    ("text_projector.linear_hidden.0.{p}", "text_projection.0.{p}"),
    ("text_projector.linear_hidden.1.{p}", "text_projection.1.{p}"),
    ("text_projector.linear_out.{p}", "text_projection.3.{p}"),
    ("logit_scale", "logit_scale"),
]
# fused q/k/v (rows stacked q, k, v) <-> separate projections
_HF_FUSED: list[tuple[str, str]] = [
    (
        "img_encoder.layers.{s}.blocks.{i}.attn.qkv.{p}",
        "vision_model.encoder.stages.{s}.layers.{i}.self_attn.{x}_proj.{p}",
    ),
    (
        "text_encoder.transformer.resblocks.{i}.attn.in_proj_{p}",
        "text_model.encoder.layers.{i}.self_attn.{x}_proj.{p}",
    ),
]
_CONV1D_PREFIXES = (
    "img_projector.linear_hidden.0.",
    "img_projector.linear_out.",
    "text_projector.linear_hidden.0.",
    "text_projector.linear_out.",
)


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{[a-z]\})", template)
    rx = ""
    for part in parts:
        if part in ("{s}", "{i}"):
            rx += f"(?P<{part[1]}>\\d+)"
        elif part == "{p}":
            rx += r"(?P<p>[A-Za-z0-9_.]+)"
        elif part == "{x}":
            rx += r"(?P<x>[qkv])"
        else:
            rx += re.escape(part)
    return re.compile(rx + "$")


_RULES_OURS = [(_template_regex(a), b) for a, b in _HF_RULES]
_RULES_HF = [(_template_regex(b), a) for a, b in _HF_RULES]
_FUSED_OURS = [(_template_regex(a), b) for a, b in _HF_FUSED]
_FUSED_HF = [(_template_regex(b), a) for a, b in _HF_FUSED]


def _translate(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for rx, target in rules:
        m = rx.match(key)
        if m:
            return target.format(**m.groupdict())
    return None


def hf_to_pgseg(
    state: dict[str, torch.Tensor], cfg: ModelConfig | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a transformers ``GroupViTModel`` state dict to ours.

    q/k/v projections are fused into ``attn.qkv`` / ``attn.in_proj_*`` (rows q, k, v), Linear projection
    weights become Conv1d k=1 (``unsqueeze(-1)``), ``position_ids`` is dropped.

    Args:
        state: HF names (a ``groupvit.`` or ``module.`` prefix is removed).
        cfg: optional target config; only checked (HF heads have two layers, so cfg.proj_layers must be 2).

    Raises:
        CheckpointError: a key that has no counterpart, or an incomplete q/k/v triple.
    """
    state = strip_prefix(dict(state))
    if state and all(k.startswith("groupvit.") for k in state):
        state = {k[len("groupvit.") :]: v for k, v in state.items()}
    if cfg is not None and cfg.proj_layers != 2:
        raise CheckpointError(
            f"HF GroupViT has two-layer projection heads; the target config has proj_layers={cfg.proj_layers}"
        )
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    fused: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.endswith("embeddings.position_ids"):
            continue  # a non-persistent index buffer in current transformers
        hit = None
        for rx, target in _FUSED_HF:
            m = rx.match(key)
            if m:
                g = m.groupdict()
                hit = target.format(**{k: v for k, v in g.items() if k != "x"})
                fused.setdefault(hit, {})[g["x"]] = value
                break
        if hit is not None:
            continue
        ours = _translate(key, _RULES_HF)
        if ours is None:
            unknown.append(key)
            continue
        if ours.startswith(_CONV1D_PREFIXES) and ours.endswith(".weight") and value.ndim == 2:
            value = value.unsqueeze(-1)  # Linear [out, in] -> Conv1d k=1 [out, in, 1]
        out[ours] = value
    if unknown:
        raise CheckpointError(
            f"HF GroupViT state dict has {len(unknown)} keys without a pgseg counterpart "
            f"(e.g. {', '.join(unknown[:3])}); is it a GroupViTModel?"
        )
    for ours, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(
                f"HF GroupViT state dict is incomplete: {ours} needs q, k and v projections, "
                f"found {''.join(sorted(parts))}"
            )
        out[ours] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, notes


def pgseg_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> transformers ``GroupViTModel`` names (inverse of :func:`hf_to_pgseg`).

    Raises:
        CheckpointError: the state holds parts HF GroupViT has no place for (PGSeg's NPR modules, the demo
            hybrid stem, one- or three-layer projection heads): exporting would change the model's outputs.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        hit = False
        for rx, target in _FUSED_OURS:
            m = rx.match(key)
            if m:
                g = m.groupdict()
                for x, chunk in zip("qkv", value.chunk(3, dim=0)):
                    out[target.format(x=x, **g)] = chunk.clone()
                hit = True
                break
        if hit:
            continue
        hf = _translate(key, _RULES_OURS)
        if hf is None or ".downsample_spatial." in key:
            unknown.append(key)
            continue
        if key.startswith(_CONV1D_PREFIXES) and key.endswith(".weight") and value.ndim == 3:
            value = value.squeeze(-1)  # Conv1d k=1 -> Linear
        out[hf] = value
    if unknown:
        npr = any(
            ".downsample_spatial." in k or k in ("img_encoder.logit_scale", OUR_TEXT_MU) for k in unknown
        )
        why = (
            "PGSeg's NPR modules are part of its inference path and HF GroupViT has none"
            if npr
            else "HF GroupViT has no counterpart for them"
        )
        raise CheckpointError(
            f"cannot export to HF GroupViT: {len(unknown)} keys such as {', '.join(unknown[:3])} ({why})"
        )
    return out


# transformers' GroupViT config defaults (configuration_groupvit.py), used for keys a config.json leaves out
_HF_VISION_DEFAULTS = {
    "hidden_size": 384,
    "intermediate_size": 1536,
    "depths": [6, 3, 3],
    "num_group_tokens": [64, 8, 0],
    "num_output_groups": [64, 8, 8],
    "num_attention_heads": 6,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "assign_eps": 1.0,
    "assign_mlp_ratio": [0.5, 4],
}
_HF_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_HF_TOP_DEFAULTS = {
    "projection_dim": 256,
    "projection_intermediate_dim": 4096,
    "logit_scale_init_value": 2.6592,
}


def _pair(v: Any) -> int:
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise CheckpointError(
                f"HF GroupViT config has a non-square size {v}; only square sizes are supported"
            )
        return int(v[0])
    return int(v)


def _hf_config_problems(v: dict[str, Any], t: dict[str, Any]) -> list[str]:
    """Settings of an HF vision (``v``) / text (``t``) config that pgseg's model cannot reproduce."""
    problems = []
    if v["hidden_act"] != "gelu":
        problems.append(f"vision hidden_act {v['hidden_act']!r} (pgseg uses exact GELU)")
    if t["hidden_act"] != "quick_gelu":
        problems.append(f"text hidden_act {t['hidden_act']!r} (pgseg uses QuickGELU)")
    for name, cfg_ in (("vision", v), ("text", t)):
        if abs(float(cfg_["layer_norm_eps"]) - 1e-5) > 1e-12:
            problems.append(f"{name} layer_norm_eps {cfg_['layer_norm_eps']} (pgseg uses 1e-5)")
    ratio = v["assign_mlp_ratio"]
    ratio = list(ratio) if isinstance(ratio, (list, tuple)) else [ratio, ratio]
    if [float(x) for x in ratio] != [0.5, 4.0]:
        problems.append(f"assign_mlp_ratio {ratio} (pgseg uses [0.5, 4])")
    depths = list(v["depths"])
    tokens = list(v["num_group_tokens"])
    outs = list(v["num_output_groups"])
    n = len(depths)
    if len(tokens) != n or len(outs) < n - 1:
        problems.append(f"depths {depths} / num_group_tokens {tokens} / num_output_groups {outs} disagree")
    else:
        if tokens[-1] != 0 or any(x <= 0 for x in tokens[:-1]):
            problems.append(
                f"num_group_tokens {tokens}: pgseg needs group tokens in every stage but the last"
            )
        for i in range(1, n - 1):
            if outs[i - 1] != tokens[i - 1]:
                problems.append(
                    f"stage {i}'s group projector takes {outs[i - 1]} tokens but stage {i - 1} has "
                    f"{tokens[i - 1]} group tokens"
                )
    return problems


def config_from_hf(hf_config: Any) -> ModelConfig:
    """Our :class:`ModelConfig` from a transformers ``GroupViTConfig`` (or its ``config.json`` dict).

    Raises:
        CheckpointError: a setting our model cannot reproduce (another activation, LayerNorm eps, grouping MLP
            ratios, or a group projector fed by a different number of tokens than the previous stage has).
    """
    if hasattr(hf_config, "to_dict"):
        hf_config = hf_config.to_dict()
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"HF GroupViT config must be a mapping, got {type(hf_config).__name__}")
    if hf_config.get("model_type", "groupvit") != "groupvit":
        raise CheckpointError(f"config.json describes a '{hf_config.get('model_type')}' model, not GroupViT")
    v = {**_HF_VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}
    t = {**_HF_TEXT_DEFAULTS, **(hf_config.get("text_config") or {})}
    top = {**_HF_TOP_DEFAULTS, **{k: hf_config[k] for k in _HF_TOP_DEFAULTS if k in hf_config}}
    depths = list(v["depths"])
    tokens = list(v["num_group_tokens"])
    outs = list(v["num_output_groups"])
    n = len(depths)
    problems = _hf_config_problems(v, t)
    if problems:
        raise CheckpointError("HF GroupViT config not supported: " + "; ".join(problems))
    C = int(v["hidden_size"])
    W = int(t["hidden_size"])
    vision = VisionConfig(
        img_size=_pair(v["image_size"]),
        patch_size=_pair(v["patch_size"]),
        in_chans=int(v["num_channels"]),
        embed_dim=C,
        depths=depths,
        num_heads=[int(v["num_attention_heads"])] * n,
        num_group_tokens=tokens,
        num_output_groups=outs[: n - 1],
        mlp_ratio=int(v["intermediate_size"]) / C,
        assign_eps=float(v["assign_eps"]),
    )
    text = TextConfig(
        tower="transformer",
        context_length=int(t["max_position_embeddings"]),
        vocab_size=int(t["vocab_size"]),
        width=W,
        layers=int(t["num_hidden_layers"]),
        heads=int(t["num_attention_heads"]),
        mlp_ratio=int(t["intermediate_size"]) / W,
    )
    return ModelConfig(
        vision=vision,
        text=text,
        npr=NPRConfig(enabled=False),
        embed_dim=int(top["projection_dim"]),
        proj_hidden=int(top["projection_intermediate_dim"]),
        proj_layers=2,
        contrast_temperature=math.exp(-float(top["logit_scale_init_value"])),
    )


def hf_config_from_model_config(cfg: ModelConfig) -> dict[str, Any]:
    """A transformers ``GroupViTConfig`` dict describing ``cfg`` (inverse of :func:`config_from_hf`).

    Raises:
        CheckpointError: PGSeg (NPR), the demo stem or text tower, or projection heads other than two layers.
    """
    v, t = cfg.vision, cfg.text
    if cfg.npr.enabled or v.stem != "patch" or t.tower != "transformer" or cfg.proj_layers != 2:
        raise CheckpointError(
            "only plain GroupViT models (patch stem, transformer text tower, two-layer heads, "
            "no NPR) have an HF GroupViT equivalent"
        )
    if len(set(v.num_heads)) != 1:
        raise CheckpointError(f"HF GroupViT uses one head count for all stages; got {v.num_heads}")
    n = len(v.depths)
    outs = list(v.num_output_groups) + [v.num_output_groups[-1] if v.num_output_groups else 0]
    return {
        "model_type": "groupvit",
        "projection_dim": cfg.embed_dim,
        "projection_intermediate_dim": cfg.proj_hidden,
        "logit_scale_init_value": math.log(1.0 / cfg.contrast_temperature),
        "vision_config": {
            "hidden_size": v.embed_dim,
            "intermediate_size": int(v.embed_dim * v.mlp_ratio),
            "depths": list(v.depths),
            "num_hidden_layers": sum(v.depths),
            "num_group_tokens": list(v.num_group_tokens),
            "num_output_groups": outs[:n],
            "num_attention_heads": v.num_heads[0],
            "image_size": v.img_size,
            "patch_size": v.patch_size,
            "num_channels": v.in_chans,
            "assign_eps": v.assign_eps,
        },
        "text_config": {
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio),
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
        },
    }
