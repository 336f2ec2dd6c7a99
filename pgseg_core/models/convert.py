"""Checkpoint interoperability: NVlabs GroupViT / Ferenas PGSeg ``.pth`` and Hugging Face GroupViT.

Three naming schemes are understood (docs/METHOD.md §5.2-5.3):

* **ours** (``pgseg``): the released names almost everywhere (``img_encoder.*``, ``text_encoder.*``,
  ``img_projector.*`` as Conv1d k=1 ...), plus ``text_npr.mu`` for the text prototypes.
* **official** (``nvlabs-groupvit`` / ``nvlabs-pgseg``): the same names, except the text prototype buffer
  ``text_encoder.Atten.mu`` (PGSeg), the unused ``img_encoder.mapping_text.*`` head (PGSeg) and
  ``multi_label_logit_scale`` (GroupViT trained with the multi-label loss).
* **HF** (``hf-groupvit``): transformers' ``GroupViTModel`` (``vision_model.*``, ``text_model.*``,
  ``visual_projection.*``, ``text_projection.*``): separate q/k/v projections instead of the fused ``qkv`` /
  ``in_proj`` (rows stacked q, k, v), ``nn.Linear`` projection heads instead of Conv1d k=1, an
  ``nn.Embedding`` text position table, and other module names.

Everything here is pure tensor renaming/reshaping: no model is built. :mod:`.factory` uses it to load any
of these formats.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..config import ModelConfig, NPRConfig, TextConfig, VisionConfig
from ..errors import CheckpointError

__all__ = [
    "FORMATS",
    "detect_format",
    "state_dict_of",
    "official_to_pgseg",
    "pgseg_to_official",
    "hf_to_pgseg",
    "pgseg_to_hf",
    "config_from_official",
    "config_from_hf",
    "config_from_state",
    "hf_config_from_model_config",
    "convert_state",
]

PGSEG_FORMAT_TAG = "pgseg-checkpoint"  # same value as factory.CHECKPOINT_FORMAT (kept here to avoid a cycle)
FORMATS = ("pgseg", "nvlabs-groupvit", "nvlabs-pgseg", "hf-groupvit")

_OFFICIAL_TEXT_MU = "text_encoder.Atten.mu"
_OUR_TEXT_MU = "text_npr.mu"


# ----------------------------------------------------------------------------------------------------------
# detection


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = sorted(map(str, obj))
        more = f" (+{len(keys) - 6} more)" if len(keys) > 6 else ""
        return f"a dict with keys {', '.join(keys[:6]) or '(none)'}{more}"
    return f"a {type(obj).__name__}"


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop a DistributedDataParallel ``module.`` prefix present on every key."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    """The weights of a loaded checkpoint object: ``obj["model"]`` (NVlabs / pgseg layout), ``obj["state_dict"]``,
    or ``obj`` itself when it is a flat name -> tensor mapping; ``None`` when there is none."""
    if not isinstance(obj, dict):
        return None
    for key in ("model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return _strip_prefix(dict(inner))
    if (
        obj
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        return _strip_prefix(dict(obj))
    return None


def _is_hf(keys: list[str]) -> bool:
    keys = [k[len("groupvit.") :] if k.startswith("groupvit.") else k for k in keys]
    return any(k.startswith("vision_model.") for k in keys) and (
        any(k.startswith(("text_model.", "visual_projection.")) for k in keys)
    )


def _is_official(keys: list[str]) -> bool:
    return any(k.startswith("img_encoder.") for k in keys) and any(
        k.startswith(("text_encoder.", "img_projector.", "text_projector.")) or k == "logit_scale"
        for k in keys
    )


def _has_npr(keys: list[str]) -> bool:
    return any(
        ".downsample_spatial." in k or k in ("img_encoder.logit_scale", _OFFICIAL_TEXT_MU, _OUR_TEXT_MU)
        for k in keys
    )


def detect_format(obj: Any) -> str:
    """Name the format of a loaded checkpoint object.

    Returns:
        ``"pgseg"`` (a dict with ``format == "pgseg-checkpoint"``), ``"nvlabs-groupvit"`` (official names, no
        NPR keys), ``"nvlabs-pgseg"`` (official names plus ``downsample_spatial`` / ``img_encoder.logit_scale``
        / ``text_encoder.Atten.mu``) or ``"hf-groupvit"`` (a transformers ``GroupViTModel`` state dict).

    Raises:
        CheckpointError: none of these; the message names what was found.
    """
    if isinstance(obj, dict) and obj.get("format") == PGSEG_FORMAT_TAG:
        return "pgseg"
    state = state_dict_of(obj)
    if state:
        keys = list(state)
        if _is_hf(keys):
            return "hf-groupvit"
        if _is_official(keys):
            return "nvlabs-pgseg" if _has_npr(keys) else "nvlabs-groupvit"
        found = f"{_describe(obj)}; its weights are named like {', '.join(sorted(keys)[:3])}"
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        found = f"{_describe(obj)}; 'model' holds {len(obj['model'])} entries and no GroupViT weights"
    else:
        found = _describe(obj)
    raise CheckpointError(
        f"not a pgseg checkpoint, nor an NVlabs GroupViT / PGSeg or Hugging Face GroupViT one (found {found})"
    )


# ----------------------------------------------------------------------------------------------------------
# official (NVlabs / Ferenas) <-> ours


def official_to_pgseg(
    state: dict[str, torch.Tensor], *, keep_mapping_text: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official GroupViT / PGSeg state dict (``checkpoint["model"]``) to ours.

    Args:
        state: official names (a ``module.`` prefix is removed).
        keep_mapping_text: keep the released, unused ``img_encoder.mapping_text.*`` head (for a model built
            with ``model.npr.with_mapping_text``); otherwise it is dropped with a note.

    Returns:
        (state dict in our names, notes about dropped or renamed keys).
    """
    state = _strip_prefix(dict(state))
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    dropped_mt: list[str] = []
    for key, value in state.items():
        if key == _OFFICIAL_TEXT_MU:
            out[_OUR_TEXT_MU] = value
            if value.shape[-1] == 1:
                notes.append(
                    "text_encoder.Atten.mu -> text_npr.mu (the released 1-d text prototypes; needs "
                    "model.npr.released_code=true)"
                )
        elif key.startswith("img_encoder.mapping_text."):
            if keep_mapping_text:
                out[key] = value
            else:
                dropped_mt.append(key)
        elif key == "multi_label_logit_scale":
            notes.append(
                "dropped multi_label_logit_scale (a training-only scale of the multi-label loss; "
                "inference does not use it; set model.multi_label to train with that loss)"
            )
        elif key == "text_encoder.attn_mask":
            pass  # the causal mask is rebuilt, never stored
        else:
            out[key] = value
    if dropped_mt:
        n = sum(state[k].numel() for k in dropped_mt)
        notes.append(
            f"dropped img_encoder.mapping_text.* ({len(dropped_mt)} tensors, {n:,} values): the released "
            "PGSeg builds this head but never uses it"
        )
    return out, notes


def pgseg_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`official_to_pgseg`: our names -> official names (lossless).

    ``text_npr.mu`` becomes ``text_encoder.Atten.mu`` (released shape [1, K, 1] in released-code mode; a
    default-mode [1, K, D] buffer is kept as is so the round trip stays lossless).
    """
    return {(_OFFICIAL_TEXT_MU if k == _OUR_TEXT_MU else k): v for k, v in state.items()}


# ----------------------------------------------------------------------------------------------------------
# Hugging Face GroupViTModel <-> ours

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
    state = _strip_prefix(dict(state))
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
            ".downsample_spatial." in k or k in ("img_encoder.logit_scale", _OUR_TEXT_MU) for k in unknown
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


# ----------------------------------------------------------------------------------------------------------
# configs


def _count(state: dict[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state for m in [rx.match(k)] if m})


def _projector_dims(state: dict[str, torch.Tensor], prefix: str) -> tuple[int, int, int]:
    """(hidden, out, layers) of a ProjectMLP stored under ``prefix``."""
    rx = re.compile(re.escape(prefix) + r"\.linear_hidden\.(\d+)\.weight$")
    convs = sorted(int(m.group(1)) for k, v in state.items() for m in [rx.match(k)] if m and v.ndim == 3)
    out_w = state[f"{prefix}.linear_out.weight"]
    hidden = state[f"{prefix}.linear_hidden.0.weight"].shape[0] if convs else out_w.shape[1]
    return int(hidden), int(out_w.shape[0]), len(convs) + 1


def config_from_state(
    state: dict[str, torch.Tensor],
    notes: list[str] | None = None,
    num_heads: list[int] | None = None,
    text_heads: int | None = None,
) -> ModelConfig:
    """Infer a :class:`ModelConfig` from the shapes of a state dict in *our* names.

    Head counts are not stored in weights: unless given, vision heads are C / 64 (GroupViT-S: 6) and text
    heads W / 64 (the released rule). NPR is enabled when NPR keys are present; a 1-d text prototype buffer
    ([1, K, 1]) selects ``released_code``. Unknowable training-only values keep their defaults.

    Raises:
        CheckpointError: the weights are not a GroupViT-style image + text model.
    """
    try:
        pos = state["img_encoder.pos_embed"]
        C = int(pos.shape[-1])
        n = int(pos.shape[1])
        grid = math.isqrt(n)
        if grid * grid != n:
            raise CheckpointError(
                f"img_encoder.pos_embed has {n} positions, not a square grid; cannot infer the image size"
            )
        stages = _count(state, r"img_encoder\.layers\.(\d+)\.")
        depths = [_count(state, rf"img_encoder\.layers\.{s}\.blocks\.(\d+)\.") for s in range(stages)]
        group_tokens = [
            int(state[f"img_encoder.layers.{s}.group_token"].shape[1])
            if f"img_encoder.layers.{s}.group_token" in state
            else 0
            for s in range(stages)
        ]
        out_groups = [
            int(state[f"img_encoder.layers.{s}.downsample.mlp_inter.fc2.weight"].shape[0])
            for s in range(stages - 1)
        ]
        fc1 = state["img_encoder.layers.0.blocks.0.mlp.fc1.weight"]
        hybrid = any(k.startswith("img_encoder.hybrid.") for k in state)
        if hybrid:
            stem, patch, in_chans = "efficientnet_lite0", 16, 3
        else:
            proj = state["img_encoder.patch_embed.proj.weight"]
            stem, patch, in_chans = "patch", int(proj.shape[-1]), int(proj.shape[1])
        if num_heads is None:
            num_heads = [max(1, C // 64)] * stages
            if C != 384 and notes is not None:
                notes.append(
                    "vision heads are not stored in the weights; assumed head width 64 "
                    f"({num_heads[0]} heads)"
                )
        vision = VisionConfig(
            stem=stem,
            img_size=grid * patch,
            patch_size=patch,
            in_chans=in_chans,
            embed_dim=C,
            depths=depths,
            num_heads=list(num_heads),
            num_group_tokens=group_tokens,
            num_output_groups=out_groups,
            mlp_ratio=fc1.shape[0] / C,
            qkv_bias="img_encoder.layers.0.blocks.0.attn.qkv.bias" in state,
        )
        if "text_encoder.token_embedding.weight" in state:
            tok = state["text_encoder.token_embedding.weight"]
            W = int(tok.shape[1])
            layers = _count(state, r"text_encoder\.transformer\.resblocks\.(\d+)\.")
            c_fc = state["text_encoder.transformer.resblocks.0.mlp.c_fc.weight"]
            ctx = int(state["text_encoder.positional_embedding"].shape[0])
            text = TextConfig(
                tower="transformer",
                context_length=ctx,
                vocab_size=int(tok.shape[0]),
                width=W,
                layers=layers,
                heads=text_heads or max(1, W // 64),
                mlp_ratio=c_fc.shape[0] / W,
            )
        else:
            text = TextConfig(tower="minilm")
        hidden, D, proj_layers = _projector_dims(state, "img_projector")
        npr = NPRConfig(enabled=False)
        if _has_npr(list(state)):
            mapping = state.get("img_encoder.layers.0.downsample_spatial.mapping_x.linear_hidden.0.weight")
            mu_t = state.get(_OUR_TEXT_MU)
            npr = NPRConfig(
                enabled=True,
                mapping_hidden=int(mapping.shape[0]) if mapping is not None else 4096,
                text_prototypes=int(mu_t.shape[1]) if mu_t is not None else 8,
                released_code=mu_t is None or int(mu_t.shape[-1]) == 1,
                with_mapping_text=any(k.startswith("img_encoder.mapping_text.") for k in state),
            )
    except KeyError as e:
        raise CheckpointError(f"weights lack {e.args[0]}; not a GroupViT / PGSeg model") from e
    return ModelConfig(
        vision=vision, text=text, npr=npr, embed_dim=D, proj_hidden=hidden, proj_layers=proj_layers
    )


def config_from_official(state: dict[str, torch.Tensor], notes: list[str] | None = None) -> ModelConfig:
    """Infer our :class:`ModelConfig` from an official GroupViT / PGSeg state dict (official or our names).

    Official PGSeg weights (NPR keys present) give ``npr.enabled`` with ``released_code=True``: their text
    prototype buffer is 1-d. Vision heads: C / 64 (6 for GroupViT-S); text heads: W / 64 as released.
    """
    ours, _ = official_to_pgseg(state, keep_mapping_text=True)
    cfg = config_from_state(ours, notes)
    if cfg.npr.enabled:
        cfg.npr.released_code = True
        if _OUR_TEXT_MU in ours and ours[_OUR_TEXT_MU].shape[-1] != 1:
            cfg.npr.released_code = False  # a pgseg default-mode model saved in official names
    return cfg


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


def convert_state(
    obj: Any, fmt: str, *, keep_mapping_text: bool = False, hf_config: dict | None = None
) -> tuple[dict[str, torch.Tensor], ModelConfig | None, list[str]]:
    """Weights of a detected foreign checkpoint in our names, the inferred config and notes.

    For ``fmt == "pgseg"`` the config is ``None`` (the checkpoint carries its own).
    """
    notes: list[str] = []
    state = state_dict_of(obj)
    if state is None:
        raise CheckpointError("checkpoint holds no weights")
    if fmt == "pgseg":
        return state, None, notes
    if fmt in ("nvlabs-groupvit", "nvlabs-pgseg"):
        ours, notes = official_to_pgseg(state, keep_mapping_text=keep_mapping_text)
        cfg = config_from_official(ours, notes)
        has_mt = any(k.startswith("img_encoder.mapping_text.") for k in ours)
        cfg.npr.with_mapping_text = keep_mapping_text and has_mt
        return ours, cfg, notes
    if fmt == "hf-groupvit":
        ours, notes = hf_to_pgseg(state)
        if hf_config is not None:
            cfg = config_from_hf(hf_config)
        else:
            cfg = config_from_state(ours, notes)
            notes.append("no config.json next to the weights: the config was inferred from tensor shapes")
        return ours, cfg, notes
    raise CheckpointError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(FORMATS)}")
