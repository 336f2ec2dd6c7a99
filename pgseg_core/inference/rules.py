"""The class-dependent scoring rules of inference and the one place that picks one (docs/METHOD.md §4.3).

Symbols: B batch (crops), N image tokens (h·w), S groups, C classes (no background), C' = C (+1 for a
background-word column), M text rows (synonyms and background words), D joint embedding width, h×w token
grid, H×W pixels.

- ``groupvit`` (:func:`crop_scores`): group-class affinity with the image-level top-k filter, background
  where the best affinity is below ``bg_thresh``;
- ``prob`` (SCLIP family, docs/METHOD.md §4.4; :func:`crop_probabilities`): per-pixel softmax over classes
  (and background words) of ``logit_scale`` · group embedding · tᵀ; on datasets with background a pixel whose
  maximum probability is below ``prob_thresh`` (or that a background word wins) is background.

:func:`select_rule` reads ``eval_cfg.rule`` and returns a :class:`ScoringRule`, which every inference path
(one image, batches of images, cached features) uses for its per-window maps and its final labels;
:func:`check_eval_config` validates every eval setting of inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..config import check_ranges
from ..errors import ConfigError
from .classes import ClassEmbeddings, as_class_embeddings
from .postprocess import area_filter, pamr
from .windows import channel_argmax

if TYPE_CHECKING:
    from .features import CropFeatures

__all__ = [
    "RULES",
    "ScoringRule",
    "check_eval_config",
    "crop_probabilities",
    "crop_scores",
    "group_probabilities",
    "pixel_groups",
    "select_rule",
]

RULES = ("groupvit", "prob")


def check_eval_config(eval_cfg: Any) -> None:
    """Validate the eval settings inference reads (resize, windows, rule and its thresholds).

    ``eval_cfg`` may be any object with the :class:`~pgseg_core.config.EvalConfig` attributes; the numeric
    ranges are the config's own (:func:`pgseg_core.config.check_ranges`, section ``eval``).

    Raises:
        ConfigError: ``mode`` not slide / whole; a non-positive ``short_side``, ``max_long``, ``crop`` or
            ``stride``; ``bg_thresh`` or ``prob_thresh`` outside [0, 1]; an unknown ``rule``; a negative
            ``top_k`` or ``logit_scale``.
    """
    if eval_cfg.mode not in ("slide", "whole"):
        raise ConfigError(f"eval.mode must be 'slide' or 'whole', got {eval_cfg.mode!r}")
    check_ranges(eval_cfg, "eval")
    rule = getattr(eval_cfg, "rule", "groupvit")
    if rule not in RULES:
        raise ConfigError(f"eval.rule must be one of {', '.join(RULES)}, got {rule!r}")


# ----------------------------------------------------------------------------------------------------------
# step 1: pixel -> group


def group_probabilities(assign_soft: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Chain the soft assignments of all grouping stages into per-token group probabilities.

    Stage 0 assigns the N = h·w tokens to S_0 groups (``A_0 [B,S_0,N]``), stage i assigns the S_{i-1}
    segments to S_i groups (``A_i [B,S_i,S_{i-1}]``). The token-to-final-group probability is the matrix
    product ``A_0ᵀ · A_1ᵀ · ...`` ([N,S_0]·[S_0,S_1] -> [N,S_last]), docs/METHOD.md §4.3 step 1.

    Args:
        assign_soft: per-stage softmax-over-groups assignments, each [B,S_i,N_i].
        grid: stage-0 token grid (h, w) with h·w = N_0.

    Returns:
        [B,S_last,h,w] float; every token's column sums to 1 when each stage's does.

    Raises:
        ValueError: an empty list, or stage shapes that do not chain (N_0 != h·w, N_i != S_{i-1}).
    """
    if not assign_soft:
        raise ValueError("assign_soft is empty: the encoder returned no grouping stage")
    h, w = int(grid[0]), int(grid[1])
    first = assign_soft[0]
    if first.dim() != 3 or first.shape[2] != h * w:
        raise ValueError(
            f"stage-0 assignment must be [B,S_0,{h * w}] for grid {(h, w)}, got {tuple(first.shape)}"
        )
    probs = first.transpose(1, 2)  # [B,N,S_0] <- [B,S_0,N]
    for i, stage in enumerate(assign_soft[1:], start=1):
        if stage.dim() != 3 or stage.shape[2] != probs.shape[2] or stage.shape[0] != probs.shape[0]:
            raise ValueError(
                f"stage-{i} assignment {tuple(stage.shape)} does not chain onto the "
                f"{probs.shape[2]} groups of stage {i - 1}"
            )
        probs = torch.bmm(probs, stage.transpose(1, 2))  # [B,N,S_i] <- [B,N,S_{i-1}] @ [B,S_{i-1},S_i]
    b, _, s = probs.shape
    return probs.transpose(1, 2).reshape(b, s, h, w)  # [B,S_last,h,w]


def pixel_groups(group_probs: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Step 1 of the rules: the group of every pixel, argmax over groups of the token-grid probabilities
    bilinearly resized (align_corners=False) to ``out_size``.

    Args:
        group_probs: [B,S,h,w] chained soft token-to-group probabilities (:func:`group_probabilities`).
        out_size: (H, W) pixels.

    Returns:
        [B,H,W] int64 group indices in [0, S).
    """
    probs = F.interpolate(
        group_probs, size=(int(out_size[0]), int(out_size[1])), mode="bilinear", align_corners=False
    )  # [B,S,H,W]
    if probs.shape[0] == 0:
        return probs.argmax(dim=1)
    return torch.stack([channel_argmax(p) for p in probs])  # = probs.argmax(dim=1), channels-last blocks


def _text_rows(
    feats: CropFeatures, class_emb: torch.Tensor | ClassEmbeddings
) -> tuple[ClassEmbeddings, torch.Tensor]:
    """(class embeddings, their [M,D] rows in the group embeddings' device and dtype), shapes checked."""
    g, probs = feats.group_emb, feats.group_probs
    ce = class_emb if isinstance(class_emb, ClassEmbeddings) else ClassEmbeddings.plain(class_emb)
    t = ce.emb.to(device=g.device, dtype=g.dtype)
    if t.dim() != 2 or t.shape[1] != g.shape[-1]:
        raise ValueError(f"class embeddings must be [C,{g.shape[-1]}], got {tuple(t.shape)}")
    if probs.shape[1] != g.shape[1]:
        raise ValueError(f"{probs.shape[1]} group masks but {g.shape[1]} group embeddings")
    return ce, t


# ----------------------------------------------------------------------------------------------------------
# groupvit rule


def _top_k_affinity(
    feats: CropFeatures, ce: ClassEmbeddings, t: torch.Tensor, logit_scale: float, top_k: int
) -> torch.Tensor:
    """Step 3: ``Aff = softmax_C'(masked s·g·tᵀ) ⊙ softmax_C'(s·g·tᵀ)`` [B,S,C'], classes outside the
    image-level top-min(k, C') of ``softmax_C'(s·a·tᵀ)`` masked to ``-inf`` before the first softmax."""
    g, a = feats.group_emb, feats.image_emb
    b = g.shape[0]
    aff = ce.reduce(logit_scale * torch.einsum("bsd,md->bsm", g, t))  # [B,S,C'] <- max over synonyms [B,S,M]
    c = aff.shape[-1]  # C' = C (+1 background-word column, last)
    pre = aff.softmax(dim=-1)
    k = c if top_k <= 0 else min(top_k, c)
    img_prob = ce.reduce(logit_scale * a @ t.t()).softmax(dim=-1)  # [B,C']
    keep = torch.zeros(b, c, dtype=torch.bool, device=g.device)
    keep.scatter_(1, img_prob.topk(k, dim=-1).indices, True)
    aff = aff.masked_fill(~keep[:, None, :], float("-inf"))
    return aff.softmax(dim=-1) * pre  # [B,S,C']


def crop_scores(
    feats: CropFeatures,
    class_emb: torch.Tensor | ClassEmbeddings,
    logit_scale: float,
    bg_thresh: float,
    top_k: int,
    out_size: tuple[int, int],
    with_background: bool = True,
    *,
    group_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """GroupViT per-crop class scores (docs/METHOD.md §4.3 steps 1, 3, 4).

    1. ``group_probs`` is bilinearly resized (align_corners=False) to ``out_size``; the argmax over
       groups gives each pixel exactly one group (one-hot M [B,S,H,W]).
    2. ``Aff = s·g·tᵀ`` [B,S,C]; ``pre = softmax_C(Aff)``; the top-min(k, C) classes of
       ``softmax_C(s·a·tᵀ)`` are kept (``top_k`` 0 keeps all), the others get ``-inf``;
       ``Aff = softmax_C(Aff) ⊙ pre``.
    3. Class maps ``M·Aff`` [B,C,H,W] (many groups may take the same class).
    4. Background (channel 0): ``thr = min(bg_thresh, max(Aff))`` per crop, and the channel is 1 where
       ``max_c (M·Aff) < thr``, else 0.

    Args:
        feats: per-crop features from :func:`~pgseg_core.inference.features.extract_features`.
        class_emb: [C,D] L2-normalised class text embeddings, or :class:`ClassEmbeddings` with synonyms
            (a class scores the max over its synonyms' logits) and background words (their column takes
            part in the softmax and top-k like a class; a pixel it wins is background).
        logit_scale: s = min(exp(logit_scale), 100), the image-text scale.
        bg_thresh: background threshold in [0, 1].
        top_k: number of image-level classes kept; 0 (or less) keeps all.
        out_size: (H, W) pixels of the score maps.
        with_background: prepend the background channel.
        group_idx: [B,H,W] per-pixel group of step 1 (:func:`pixel_groups`), when already computed.

    Returns:
        [B,C+1,H,W] scores in [0, 1] (background channel 0 then the C classes), or [B,C,H,W] without
        background.

    Raises:
        ValueError: embedding widths or group counts that do not match.
    """
    ce, t = _text_rows(feats, class_emb)
    b = feats.group_emb.shape[0]
    if group_idx is None:  # step 1: pixel -> group
        group_idx = pixel_groups(feats.group_probs, (int(out_size[0]), int(out_size[1])))  # [B,H,W]
    aff = _top_k_affinity(feats, ce, t, logit_scale, top_k)  # step 3, [B,S,C']
    # With one-hot M every map value is a function of the pixel's group, background included: a pixel's
    # max over classes of M·Aff is its group's row max. So the [B,S,K] table of each group's channel values
    # is built first and one gather places it (exact: the same values as per-pixel maxima).
    bg_words = None
    if ce.has_background_words:
        bg_words, aff = aff[..., -1], aff[..., :-1]  # [B,S], [B,S,C]
    table = aff
    if with_background:
        thr = torch.clamp(aff.amax(dim=(1, 2)), max=bg_thresh)  # [B]
        background = (aff.amax(dim=2) < thr[:, None]).to(aff.dtype)  # [B,S]
        if bg_words is not None:  # a pixel whose background word beats every class is background
            background = torch.maximum(background, bg_words)
        table = torch.cat([background[..., None], aff], dim=2)  # [B,S,C+1]
    # step 4: class maps M·Aff, a gather of each pixel's group row in channel-first layout:
    # [B,K,S] -> [B,K,H·W] (exact, no transposed copy)
    k = table.shape[-1]
    pix = group_idx.reshape(b, 1, -1).expand(b, k, -1)
    return torch.gather(table.transpose(1, 2), 2, pix).reshape(b, k, *group_idx.shape[1:])  # [B,K,H,W]


# ----------------------------------------------------------------------------------------------------------
# prob rule


def crop_probabilities(
    feats: CropFeatures,
    class_emb: torch.Tensor | ClassEmbeddings,
    logit_scale: float,
    out_size: tuple[int, int],
    *,
    group_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel class probabilities of the ``prob`` rule (the training-free SCLIP-family protocol,
    docs/METHOD.md §4.4), applied to group embeddings.

    SCLIP and its successors score dense per-patch CLIP features; our model has no dense per-patch
    features in the joint space, only the S final group embeddings, so each pixel takes the embedding of
    the group it is assigned to (the argmax of the resized chained soft assignment, as in
    :func:`crop_scores` step 1) and its probabilities are ``softmax_C'(s·g·tᵀ)`` with the logits
    max-pooled over each class's synonyms; background words form one extra class column (last) that
    competes in the softmax.

    Args:
        feats: per-crop features from :func:`~pgseg_core.inference.features.extract_features`.
        class_emb: [C,D] L2-normalised class embeddings or :class:`ClassEmbeddings`.
        logit_scale: s, the softmax temperature (SCLIP family: 40; 65 VOC21, 50 PC60 / COCO-Object).
        out_size: (H, W) pixels of the maps.
        group_idx: [B,H,W] per-pixel group (:func:`pixel_groups`), when already computed.

    Returns:
        [B,C',H,W] probabilities in [0, 1] summing to 1 over C' = C (+1 background-word column, last).

    Raises:
        ValueError: embedding widths or group counts that do not match.
    """
    ce, t = _text_rows(feats, class_emb)
    g = feats.group_emb
    b = g.shape[0]
    if group_idx is None:
        group_idx = pixel_groups(feats.group_probs, out_size)  # [B,H,W]
    group_prob = ce.reduce(logit_scale * torch.einsum("bsd,md->bsm", g, t)).softmax(dim=-1)  # [B,S,C']
    k = group_prob.shape[-1]
    pix = group_idx.reshape(b, 1, -1).expand(b, k, -1)  # each pixel's group row, channel-first
    return torch.gather(group_prob.transpose(1, 2), 2, pix).reshape(b, k, *group_idx.shape[1:])  # [B,C',H,W]


# ----------------------------------------------------------------------------------------------------------
# rule selection


@dataclass(frozen=True)
class ScoringRule:
    """One scoring rule with its settings, as :func:`select_rule` picks it from an eval config.

    Attributes:
        name: ``"groupvit"`` or ``"prob"``.
        class_emb: the vocabulary's :class:`ClassEmbeddings`.
        logit_scale: s of the rule: the model's for ``groupvit``; ``eval.logit_scale`` (0 = the model's)
            for ``prob``.
        bg_thresh / top_k: ``groupvit`` settings.
        prob_thresh: ``prob`` setting.
        with_background: the label map has a background class (label 0, classes 1 + c).
        area_thresh: ``prob`` with background: SCLIP's area threshold (:func:`.postprocess.area_filter`).
        pamr_iters / pamr_dilations: PAMR of the window-averaged maps (:meth:`refine`).
    """

    name: str
    class_emb: ClassEmbeddings
    logit_scale: float
    bg_thresh: float
    top_k: int
    prob_thresh: float
    with_background: bool
    area_thresh: float = 0.0
    pamr_iters: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)

    @property
    def channels(self) -> int:
        """K, channels of the per-window maps: C+1 / C (groupvit with / without background) or C' (prob)."""
        ce = self.class_emb
        if self.name == "prob":
            return ce.num_classes + int(ce.has_background_words)
        return ce.num_classes + int(self.with_background)

    def crop_maps(
        self, feats: CropFeatures, out_size: tuple[int, int], group_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B,K,H,W] per-crop maps (:func:`crop_probabilities` or :func:`crop_scores`) at ``out_size``."""
        if self.name == "prob":
            return crop_probabilities(feats, self.class_emb, self.logit_scale, out_size, group_idx=group_idx)
        return crop_scores(
            feats,
            self.class_emb,
            self.logit_scale,
            self.bg_thresh,
            self.top_k,
            out_size=out_size,
            with_background=self.with_background,
            group_idx=group_idx,
        )

    def refine(self, maps: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """PAMR of window-averaged maps [K,H,W] with the resized, normalised image [3,H,W] (docs/EVAL.md);
        ``maps`` itself when ``pamr_iters`` is 0.

        Raises:
            ConfigError: PAMR asked for without the image.
        """
        if self.pamr_iters <= 0:
            return maps
        if image is None:
            raise ConfigError("eval.pamr_iters needs the image: score with it, or set eval.pamr_iters 0")
        return pamr(image.to(maps.device), maps, self.pamr_iters, self.pamr_dilations)

    def label(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels of window-averaged maps [K,H0,W0] at the original size.

        Returns:
            ``(label, scores)``: label int64 [H0,W0] and scores [C+1,H0,W0] (background channel 0) or
            [C,H0,W0] without background. The ``prob`` rule with background moves the background-word
            column (or zeros) to channel 0 and labels background where the maximum probability is below
            ``prob_thresh`` (after SCLIP's area threshold, when set, has zeroed the small classes).
        """
        if self.name == "prob" and self.with_background:
            c = self.class_emb.num_classes
            bg = scores[c : c + 1] if self.class_emb.has_background_words else torch.zeros_like(scores[:1])
            scores = torch.cat([bg, scores[:c]], dim=0)  # [C+1,H0,W0], background channel 0
            scores = area_filter(scores, self.area_thresh)
            best = scores.amax(dim=0)  # max probability over classes and background words
            label = channel_argmax(scores)
            return label.masked_fill(best < float(self.prob_thresh), 0), scores
        return channel_argmax(scores), scores


def select_rule(
    eval_cfg: Any,
    class_emb: torch.Tensor | ClassEmbeddings,
    model_logit_scale: float,
    *,
    with_background: bool = True,
) -> ScoringRule:
    """The scoring rule ``eval_cfg.rule`` names, with its settings (the one place that picks a rule).

    Args:
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (rule, bg_thresh, top_k, logit_scale, prob_thresh).
        class_emb: [C,D] L2-normalised class embeddings or :class:`ClassEmbeddings`.
        model_logit_scale: the model's s = min(exp(logit_scale), 100).
        with_background: see :class:`ScoringRule`.

    Raises:
        ConfigError: invalid eval settings (:func:`check_eval_config`), background words on a dataset
            without background, or ``area_thresh`` outside the prob rule with background.
    """
    check_eval_config(eval_cfg)
    ce = as_class_embeddings(class_emb)
    if ce.has_background_words and not with_background:
        raise ConfigError(
            "background words need a dataset with a background class: drop them from the "
            "class list of this dataset"
        )
    rule = getattr(eval_cfg, "rule", "groupvit")
    area = float(getattr(eval_cfg, "area_thresh", 0.0))
    if area > 0 and (rule != "prob" or not with_background):
        raise ConfigError(
            "eval.area_thresh applies to the prob rule on datasets with background: set eval.rule prob "
            "or eval.area_thresh 0"
        )
    scale = float(model_logit_scale)
    if rule == "prob":
        scale = float(getattr(eval_cfg, "logit_scale", 0.0)) or scale
    return ScoringRule(
        name=rule,
        class_emb=ce,
        logit_scale=scale,
        bg_thresh=float(eval_cfg.bg_thresh),
        top_k=int(eval_cfg.top_k),
        prob_thresh=float(getattr(eval_cfg, "prob_thresh", 0.0)),
        with_background=bool(with_background),
        area_thresh=area,
        pamr_iters=int(getattr(eval_cfg, "pamr_iters", 0)),
        pamr_dilations=tuple(int(d) for d in getattr(eval_cfg, "pamr_dilations", (8, 16))),
    )
