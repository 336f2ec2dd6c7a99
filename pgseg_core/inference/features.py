"""GroupViT / PGSeg zero-shot segmentation inference (docs/METHOD.md §4.2 test pipeline, §4.3 rule).

Symbols: B batch (crops), N image tokens (h·w), S groups (S_i of stage i, S the last), C classes (no
background), D joint embedding width, h×w token grid, H×W pixels.

Pipeline of one image (:func:`predict`):

1. resize so the short side is ``short_side`` unless the long side would exceed ``max_long``, scale to
   [0, 1] and normalise with the ImageNet mean / std (:func:`.preprocess.image_to_tensor`);
2. slide ``crop``×``crop`` windows with ``stride`` (mmseg ``slide_inference``) or take the whole image
   (:func:`.windows.image_windows`); every crop is zero-padded (after normalisation) to a multiple of 16
   pixels for the patch grid;
3. per crop, the class-independent features (:func:`extract_features`) and the rule ``eval.rule`` picks
   (:func:`.rules.select_rule`: the GroupViT rule :func:`.rules.crop_scores` or the prob rule
   :func:`.rules.crop_probabilities`) give per-pixel maps;
4. per-pixel maps are summed over the windows and divided by the window count
   (:class:`.windows.WindowAccumulator`), bilinearly resized to the original size, and the argmax is the
   label (0 background, 1 + c class c).

Steps 1-2 and the encoder half of step 3 are class-independent: :func:`extract_image_features` returns
them as :class:`ImageFeatures` (what the HDF5 feature cache stores, :mod:`pgseg_core.cache.features`);
:func:`scores_from_features` is the class-dependent rest. :func:`predict` is the two in sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .classes import ClassEmbeddings, as_class_embeddings
from .preprocess import check_image, fit_to_stride, image_to_tensor, map_frame
from .rules import ScoringRule, check_eval_config, group_probabilities, pixel_groups, select_rule
from .windows import Window, WindowAccumulator, image_windows, resize_scores

__all__ = [
    "CropFeatures",
    "ImageFeatures",
    "encode_crops",
    "extract_features",
    "extract_image_features",
    "iter_score_maps",
    "predict",
    "scores_from_features",
]

logger = logging.getLogger("pgseg.inference")


# ----------------------------------------------------------------------------------------------------------
# class-independent per-crop features


@dataclass
class CropFeatures:
    """Class-independent part of the per-crop prediction (docs/METHOD.md §4.3 steps 1-2).

    Attributes:
        group_emb: [B,S,D] final group embeddings, L2-normalised.
        image_emb: [B,D] image embeddings, L2-normalised.
        group_probs: [B,S,h,w] chained soft token-to-group probabilities on the token grid.
    """

    group_emb: torch.Tensor
    image_emb: torch.Tensor
    group_probs: torch.Tensor


@torch.no_grad()
def extract_features(model: Any, crops: torch.Tensor) -> CropFeatures:
    """Encode normalised crops and keep what the scoring rules need (float32).

    Args:
        model: a PGSeg-contract model (``encode_image(images, dense=True)`` -> ImageOutput with
            ``group_emb``).
        crops: [B,3,H,W] ImageNet-normalised images, H and W multiples of 16.

    Returns:
        :class:`CropFeatures` with L2-normalised embeddings and [B,S,h,w] group probabilities.
    """
    group_emb, image_emb, assign_soft, grid = encode_crops(model, crops)
    group_probs = group_probabilities(assign_soft, grid)
    return CropFeatures(group_emb=group_emb, image_emb=image_emb, group_probs=group_probs)


def encode_crops(
    model: Any, crops: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], tuple[int, int]]:
    """Encoder outputs the rules need.

    Args:
        model: a PGSeg-contract model.
        crops: [B,3,H,W] ImageNet-normalised images, H and W multiples of 16.

    Returns:
        ``(group_emb, image_emb, assign_soft, grid)``: L2-normalised [B,S,D] and [B,D] float32, the
        per-stage soft assignments [B,S_i,N_i] float32, and the stage-0 token grid (h, w).

    Raises:
        RuntimeError: the encoder returned no group embeddings.
    """
    out = model.encode_image(crops, dense=True)  # dense: project every final token (group_emb)
    if out.group_emb is None:
        raise RuntimeError("encode_image(dense=True) returned no group embeddings")
    group_emb = F.normalize(out.group_emb.float(), dim=-1)
    image_emb = F.normalize(out.image_emb.float(), dim=-1)
    assign_soft = [a.float() for a in out.assign_soft]
    return group_emb, image_emb, assign_soft, (int(out.grid[0]), int(out.grid[1]))


# ----------------------------------------------------------------------------------------------------------
# whole-image features = class-independent half of inference


@dataclass
class ImageFeatures:
    """Class-independent result of encoding one image: everything the scoring rules need.

    Symbols: W windows, S final groups, S_i / N_i groups / inputs of grouping stage i, D joint width.

    Attributes:
        orig_size: (H0, W0) pixels of the input image.
        resized_size: (H, W) pixels after the short-side resize (the frame of ``windows``).
        padded_size: (Hp, Wp) encoder input size of every window (the window brought to a multiple of 16
            by ``eval.crop_fit``, :func:`.preprocess.fit_to_stride`).
        grid: (h, w) stage-0 token grid of one window, h·w = N_0.
        windows: W (y1, y2, x1, x2) window bounds in the resized frame, end exclusive.
        group_emb: [W,S,D] float32, L2-normalised final group embeddings.
        image_emb: [W,D] float32, L2-normalised image embeddings.
        assign_soft: per stage, [W,S_i,N_i] float32 softmax-over-groups assignments.
        logit_scale: the model's image-text scale min(exp(logit_scale), 100).
        group_emb_d_major: the encoder returned ``group_emb`` as a transposed [B,D,S] buffer (a Conv1d
            projection). Scoring recreates that memory layout, because matmul kernels round differently on
            other layouts and scoring must be bit-identical to scoring the encoder's own output.
    """

    orig_size: tuple[int, int]
    resized_size: tuple[int, int]
    padded_size: tuple[int, int]
    grid: tuple[int, int]
    windows: list[tuple[int, int, int, int]]
    group_emb: torch.Tensor
    image_emb: torch.Tensor
    assign_soft: list[torch.Tensor]
    logit_scale: float
    group_emb_d_major: bool = False

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    @property
    def device(self) -> torch.device:
        return self.group_emb.device

    def to(self, device: torch.device | str) -> "ImageFeatures":
        """A copy with the tensors on ``device``."""
        return ImageFeatures(
            orig_size=self.orig_size,
            resized_size=self.resized_size,
            padded_size=self.padded_size,
            grid=self.grid,
            windows=list(self.windows),
            group_emb=self.group_emb.to(device),
            image_emb=self.image_emb.to(device),
            assign_soft=[a.to(device) for a in self.assign_soft],
            logit_scale=self.logit_scale,
            group_emb_d_major=self.group_emb_d_major,
        )


@torch.no_grad()
def extract_image_features(
    model: Any, image: np.ndarray, eval_cfg: Any, device: torch.device | str, *, crop_batch: int = 4
) -> ImageFeatures:
    """Class-independent half of inference (docs/METHOD.md §4.2 and §4.3 steps 1-2): resize, normalise,
    slide windows, encode.

    Args:
        model: a PGSeg-contract model on ``device`` (in eval mode).
        image: uint8 RGB image [H0,W0,3], 0-255.
        eval_cfg: :class:`pgseg_core.config.EvalConfig`; only short_side, max_long, mode, crop and stride
            are used here (the cache key of :mod:`pgseg_core.cache.features`).
        device: torch device the model runs on.
        crop_batch: windows encoded per forward pass (memory bound only).

    Returns:
        :class:`ImageFeatures` on ``device``.

    Raises:
        DataError: ``image`` is not a uint8 [H,W,3] array.
        ConfigError: invalid eval settings.
    """
    check_image(image)
    check_eval_config(eval_cfg)
    h0, w0 = image.shape[:2]
    logit_scale = float(model.logit_scale_value())
    x = image_to_tensor(image, eval_cfg.short_side, eval_cfg.max_long, torch.device(device))  # [3,H,W]
    height, width = int(x.shape[-2]), int(x.shape[-1])
    windows = image_windows(height, width, eval_cfg)
    step = max(int(crop_batch), 1)
    g_parts: list[torch.Tensor] = []
    a_parts: list[torch.Tensor] = []
    s_parts: list[list[torch.Tensor]] = []
    grid = (0, 0)
    padded_size = (0, 0)
    d_major = False
    for start in range(0, len(windows), step):
        chunk = windows[start : start + step]
        crops = torch.stack([x[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])  # [n,3,hc,wc], same size
        padded = fit_to_stride(crops, getattr(eval_cfg, "crop_fit", "end"))
        padded_size = (int(padded.shape[-2]), int(padded.shape[-1]))
        group_emb, image_emb, assign_soft, grid = encode_crops(model, padded)
        d_major = group_emb.dim() == 3 and group_emb.shape[1] > 1 and group_emb.stride(1) == 1
        g_parts.append(group_emb)
        a_parts.append(image_emb)
        s_parts.append(assign_soft)
    assign = [torch.cat([parts[i] for parts in s_parts]) for i in range(len(s_parts[0]))]
    logger.debug("encoded %dx%d image as %d windows", h0, w0, len(windows))
    return ImageFeatures(
        orig_size=(int(h0), int(w0)),
        resized_size=(height, width),
        padded_size=padded_size,
        grid=grid,
        windows=[tuple(int(v) for v in win) for win in windows],
        group_emb=torch.cat(g_parts),
        image_emb=torch.cat(a_parts),
        assign_soft=assign,
        logit_scale=logit_scale,
        group_emb_d_major=d_major,
    )


# ----------------------------------------------------------------------------------------------------------
# class-dependent half: scoring features


WindowChunk = tuple[list[Window], CropFeatures, torch.Tensor, tuple[tuple[int, int], tuple[int, int]]]


def _window_chunks(features: ImageFeatures, crop_batch: int, crop_fit: str = "end") -> list[WindowChunk]:
    """Per chunk of windows: the windows, their :class:`CropFeatures`, per-pixel groups [n,H',W'] and the
    maps' frame (:func:`.preprocess.map_frame`); class-independent, shared by every scoring setting."""
    chunks = []
    step = max(int(crop_batch), 1)
    for start in range(0, features.num_windows, step):
        chunk = features.windows[start : start + step]
        sl = slice(start, start + len(chunk))
        # fresh (aligned) copies in the encoder's memory layout: matmul kernels round differently on offset
        # views and other layouts, and scoring must be bit-identical to scoring the encoder's own output
        g = features.group_emb[sl]
        g = (
            g.transpose(1, 2).contiguous().transpose(1, 2)
            if features.group_emb_d_major
            else g.contiguous().clone()
        )
        feats = CropFeatures(
            group_emb=g,
            image_emb=features.image_emb[sl].clone(),
            group_probs=group_probabilities([a[sl].clone() for a in features.assign_soft], features.grid),
        )
        y1, y2, x1, x2 = chunk[0]
        frame = map_frame((y2 - y1, x2 - x1), features.padded_size, crop_fit)
        chunks.append((chunk, feats, pixel_groups(feats.group_probs, frame[0]), frame))
    return chunks


def _finish(
    features: ImageFeatures, rule: ScoringRule, chunks: list[WindowChunk], image: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(label [H0,W0], scores [K,H0,W0]) of one rule: accumulate the windows' maps, PAMR (when set) with the
    resized image [3,H,W], resize, label."""
    acc = WindowAccumulator(rule.channels, features.resized_size, features.device)
    for chunk, feats, group_idx, (size, (top, left)) in chunks:
        acc.add(chunk, rule.crop_maps(feats, size, group_idx)[:, :, top:, left:])
    return rule.label(resize_scores(rule.refine(acc.mean(), image), features.orig_size))


def _resized_image(image: np.ndarray | None, features: ImageFeatures, rules: list[ScoringRule], cfg: Any):
    """The resized, normalised image [3,H,W] PAMR needs (None when no rule uses PAMR or no image is given).

    Raises:
        ConfigError: the image does not resize to the features' frame (another image or resize setting).
    """
    if image is None or not any(r.pamr_iters > 0 for r in rules):
        return None
    x = image_to_tensor(image, cfg.short_side, cfg.max_long, features.device)
    if tuple(x.shape[-2:]) != tuple(features.resized_size):
        raise ConfigError(
            f"PAMR: the image resizes to {tuple(x.shape[-2:])}, the features were computed at "
            f"{tuple(features.resized_size)}: pass the image the features belong to"
        )
    return x


@torch.no_grad()
def iter_score_maps(
    features: ImageFeatures,
    class_emb: torch.Tensor | ClassEmbeddings,
    eval_cfgs: list[Any],
    *,
    with_background: bool = True,
    crop_batch: int = 4,
    image: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`scores_from_features` for several eval settings (a sweep), computing the per-pixel groups once.

    Yields:
        ``(label, scores)`` per entry of ``eval_cfgs``, in order, each equal to ``scores_from_features``
        with it but as tensors on the features' device (label int64 [H0,W0], scores float32 [K,H0,W0]).

    Raises:
        ConfigError: invalid settings, or background words on a dataset without background.
    """
    ce = as_class_embeddings(class_emb).to(features.device)
    rules = [select_rule(cfg, ce, features.logit_scale, with_background=with_background) for cfg in eval_cfgs]
    x = _resized_image(image, features, rules, eval_cfgs[0])
    chunks = _window_chunks(features, crop_batch, getattr(eval_cfgs[0], "crop_fit", "end"))
    for rule in rules:
        yield _finish(features, rule, chunks, x)


def scores_from_features(
    features: ImageFeatures,
    class_emb: torch.Tensor | ClassEmbeddings,
    eval_cfg: Any,
    *,
    with_background: bool = True,
    crop_batch: int = 4,
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent half of inference: labels and scores from cached or fresh :class:`ImageFeatures`.

    The rule is ``eval_cfg.rule`` (:func:`.rules.select_rule`):

    - ``"groupvit"`` (docs/METHOD.md §4.3 steps 1, 3, 4; :func:`.rules.crop_scores`): group-class affinity
      with the top-k filter, background where the best affinity is below ``bg_thresh``;
    - ``"prob"`` (SCLIP family, docs/METHOD.md §4.4; :func:`.rules.crop_probabilities`): per-pixel softmax
      over classes (and background words) of ``logit_scale`` · group embedding · tᵀ; on datasets with
      background a pixel whose maximum probability is below ``prob_thresh`` (or that a background word wins)
      is background. ``top_k`` and ``bg_thresh`` are not used by this rule.

    Per-window maps are summed over the windows and divided by the per-pixel window count (mmseg slide
    inference), bilinearly resized to the original size, and arg-maxed.

    Args:
        features: from :func:`extract_image_features` (or a feature cache).
        class_emb: [C,D] L2-normalised class embeddings or :class:`ClassEmbeddings`.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (rule, bg_thresh, top_k, logit_scale, prob_thresh).
        with_background: the label map has a background class (label 0, classes 1 + c); without it labels
            are the class indices 0..C-1 and no background channel is produced.
        crop_batch: windows scored together (bit-identical to :func:`predict` with the same value).
        image: the uint8 [H0,W0,3] image of the features; needed only with ``eval.pamr_iters`` > 0.

    Returns:
        ``(label, scores)``: label int64 [H0,W0] and scores float32 [C+1,H0,W0] (background channel 0) or
        [C,H0,W0] without background; in [0, 1].

    Raises:
        ConfigError: invalid eval settings, or background words on a dataset without background.
    """
    label, scores = next(
        iter_score_maps(
            features,
            class_emb,
            [eval_cfg],
            with_background=with_background,
            crop_batch=crop_batch,
            image=image,
        )
    )
    return label.cpu().numpy().astype(np.int64, copy=False), scores.cpu().numpy().astype(
        np.float32, copy=False
    )


@torch.no_grad()
def predict(
    model: Any,
    image: np.ndarray,
    class_emb: torch.Tensor | ClassEmbeddings,
    eval_cfg: Any,
    device: torch.device | str,
    *,
    crop_batch: int = 4,
    with_background: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment one image (docs/METHOD.md §4.2-4.3): :func:`extract_image_features` then
    :func:`scores_from_features`.

    Args:
        model: a PGSeg-contract model on ``device`` (in eval mode).
        image: uint8 RGB image [H0,W0,3], 0-255.
        class_emb: [C,D] L2-normalised class embeddings (:func:`.classes.compute_class_embeddings`), or
            :class:`~pgseg_core.inference.classes.ClassEmbeddings` (synonyms, background words).
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (short_side, max_long, mode, crop, stride, rule,
            bg_thresh, top_k, logit_scale, prob_thresh).
        device: torch device the model runs on.
        crop_batch: windows encoded per forward pass (memory bound only; results do not depend on it).
        with_background: see :func:`scores_from_features`.

    Returns:
        ``(label, scores)``: label int64 [H0,W0] (0 background, 1 + c class c) and scores float32
        [C+1,H0,W0] (window-averaged per-crop scores, bilinearly resized; in [0, 1]).

    Raises:
        DataError: ``image`` is not a uint8 [H,W,3] array.
        ConfigError: invalid eval settings.
    """
    check_image(image)
    check_eval_config(eval_cfg)
    features = extract_image_features(model, image, eval_cfg, device, crop_batch=crop_batch)
    return scores_from_features(
        features, class_emb, eval_cfg, with_background=with_background, crop_batch=crop_batch, image=image
    )
