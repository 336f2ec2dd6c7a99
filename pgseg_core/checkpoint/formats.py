"""Checkpoint formats: what a loaded checkpoint object is, and official NVlabs / Ferenas names <-> ours.

Three naming schemes are understood (docs/METHOD.md §5.2-5.3):

* **ours** (``pgseg``): the released names almost everywhere (``img_encoder.*``, ``text_encoder.*``,
  ``img_projector.*`` as Conv1d k=1 ...), plus ``text_npr.mu`` for the text prototypes.
* **official** (``nvlabs-groupvit`` / ``nvlabs-pgseg``): the same names, except the text prototype buffer
  ``text_encoder.Atten.mu`` (PGSeg), the unused ``img_encoder.mapping_text.*`` head (PGSeg) and
  ``multi_label_logit_scale`` (GroupViT trained with the multi-label loss).
* **HF** (``hf-groupvit``): transformers' ``GroupViTModel``, mapped in :mod:`.hf`.

Everything here is pure tensor renaming/reshaping: no model is built. :mod:`.io` uses it to load any of these
formats; configs of foreign weights are inferred from their shapes (:func:`config_from_state`).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..config import ModelConfig, NPRConfig, TextConfig, VisionConfig
from ..errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_SCHEMA",
    "FORMATS",
    "OUR_TEXT_MU",
    "detect_format",
    "state_dict_of",
    "strip_prefix",
    "official_to_pgseg",
    "pgseg_to_official",
    "config_from_official",
    "config_from_state",
    "convert_state",
]

CHECKPOINT_FORMAT = "pgseg-checkpoint"  # the "format" tag of a pgseg checkpoint (torch file or convert pair)
CHECKPOINT_SCHEMA = 1  # the newest checkpoint schema this pgseg reads and the one it writes
FORMATS = ("pgseg", "nvlabs-groupvit", "nvlabs-pgseg", "hf-groupvit")

_OFFICIAL_TEXT_MU = "text_encoder.Atten.mu"
OUR_TEXT_MU = "text_npr.mu"  # our name of PGSeg's text prototype buffer


# ----------------------------------------------------------------------------------------------------------
# detection


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = sorted(map(str, obj))
        more = f" (+{len(keys) - 6} more)" if len(keys) > 6 else ""
        return f"a dict with keys {', '.join(keys[:6]) or '(none)'}{more}"
    return f"a {type(obj).__name__}"


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop a DistributedDataParallel ``module.`` prefix present on every key."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    """The weights of a loaded checkpoint object: ``obj["model"]`` (NVlabs / pgseg layout),
    ``obj["state_dict"]``, or ``obj`` itself when it is a flat name -> tensor mapping; ``None`` when there is
    none."""
    if not isinstance(obj, dict):
        return None
    for key in ("model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return strip_prefix(dict(inner))
    if (
        obj
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        return strip_prefix(dict(obj))
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
        ".downsample_spatial." in k or k in ("img_encoder.logit_scale", _OFFICIAL_TEXT_MU, OUR_TEXT_MU)
        for k in keys
    )


def detect_format(obj: Any) -> str:
    """Name the format of a loaded checkpoint object.

    Returns:
        ``"pgseg"`` (a dict with ``format == "pgseg-checkpoint"``), ``"nvlabs-groupvit"`` (official names, no
        NPR keys), ``"nvlabs-pgseg"`` (official names plus ``downsample_spatial`` /
        ``img_encoder.logit_scale`` / ``text_encoder.Atten.mu``) or ``"hf-groupvit"`` (a transformers
        ``GroupViTModel`` state dict).

    Raises:
        CheckpointError: none of these; the message names what was found.
    """
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
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
    state = strip_prefix(dict(state))
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    dropped_mt: list[str] = []
    for key, value in state.items():
        if key == _OFFICIAL_TEXT_MU:
            out[OUR_TEXT_MU] = value
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
    return {(_OFFICIAL_TEXT_MU if k == OUR_TEXT_MU else k): v for k, v in state.items()}


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


def _vision_from_state(
    state: dict[str, torch.Tensor], notes: list[str] | None, num_heads: list[int] | None
) -> VisionConfig:
    """The vision tower of :func:`config_from_state` (KeyError: a required tensor is missing)."""
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
                f"vision heads are not stored in the weights; assumed head width 64 ({num_heads[0]} heads)"
            )
    return VisionConfig(
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


def _text_from_state(state: dict[str, torch.Tensor], text_heads: int | None) -> TextConfig:
    """The text tower of :func:`config_from_state`: the transformer's shapes, else the MiniLM tower."""
    if "text_encoder.token_embedding.weight" not in state:
        return TextConfig(tower="minilm")
    tok = state["text_encoder.token_embedding.weight"]
    W = int(tok.shape[1])
    layers = _count(state, r"text_encoder\.transformer\.resblocks\.(\d+)\.")
    c_fc = state["text_encoder.transformer.resblocks.0.mlp.c_fc.weight"]
    ctx = int(state["text_encoder.positional_embedding"].shape[0])
    return TextConfig(
        tower="transformer",
        context_length=ctx,
        vocab_size=int(tok.shape[0]),
        width=W,
        layers=layers,
        heads=text_heads or max(1, W // 64),
        mlp_ratio=c_fc.shape[0] / W,
    )


def _npr_from_state(state: dict[str, torch.Tensor]) -> NPRConfig:
    """NPR settings of :func:`config_from_state`: enabled when NPR keys are present."""
    if not _has_npr(list(state)):
        return NPRConfig(enabled=False)
    mapping = state.get("img_encoder.layers.0.downsample_spatial.mapping_x.linear_hidden.0.weight")
    mu_t = state.get(OUR_TEXT_MU)
    return NPRConfig(
        enabled=True,
        mapping_hidden=int(mapping.shape[0]) if mapping is not None else 4096,
        text_prototypes=int(mu_t.shape[1]) if mu_t is not None else 8,
        released_code=mu_t is None or int(mu_t.shape[-1]) == 1,
        with_mapping_text=any(k.startswith("img_encoder.mapping_text.") for k in state),
    )


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
        vision = _vision_from_state(state, notes, num_heads)
        text = _text_from_state(state, text_heads)
        hidden, D, proj_layers = _projector_dims(state, "img_projector")
        npr = _npr_from_state(state)
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
        if OUR_TEXT_MU in ours and ours[OUR_TEXT_MU].shape[-1] != 1:
            cfg.npr.released_code = False  # a pgseg default-mode model saved in official names
    return cfg


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
        from .hf import config_from_hf, hf_to_pgseg  # function level: hf imports this module

        ours, notes = hf_to_pgseg(state)
        if hf_config is not None:
            cfg = config_from_hf(hf_config)
        else:
            cfg = config_from_state(ours, notes)
            notes.append("no config.json next to the weights: the config was inferred from tensor shapes")
        return ours, cfg, notes
    raise CheckpointError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(FORMATS)}")
