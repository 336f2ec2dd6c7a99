"""GroupViT / PGSeg zero-shot segmentation inference (pgseg_method.md §4.2 test pipeline, §4.3 rule).

Symbols: B batch (crops), N image tokens (h·w), S groups (S_i of stage i, S the last), C classes (no
background), D joint embedding width, h×w token grid, H×W pixels.

Pipeline of one image (:func:`predict`):

1. resize so the short side is ``short_side`` unless the long side would exceed ``max_long``
   (mmseg ``Resize(keep_ratio=True)`` with ``img_scale=(max_long, short_side)``);
2. scale to [0, 1] and normalise with the ImageNet mean / std;
3. slide ``crop``×``crop`` windows with ``stride`` (mmseg ``slide_inference``) or take the whole image;
   every crop is zero-padded (after normalisation) to a multiple of 16 pixels for the patch grid;
4. per crop, the class-independent features (:func:`extract_features`) and the GroupViT rule
   (:func:`crop_scores`) give ``[C+1, h_crop, w_crop]`` scores, background in channel 0;
5. per-pixel scores are summed over the windows and divided by the window count, bilinearly resized
   to the original size, and the argmax is the label (0 background, 1 + c class c).

Steps 1-3 and the encoder half of step 4 are class-independent: :func:`extract_image_features` returns
them as :class:`ImageFeatures` (what the HDF5 feature cache stores, :mod:`pgseg_core.cache.features`);
:func:`scores_from_features` is the class-dependent rest, with the GroupViT rule (``eval.rule: groupvit``)
or the SCLIP-family probability rule (``eval.rule: prob``, :func:`crop_probabilities`).
:func:`predict` is the two in sequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError, DataError
from .classes import ClassEmbeddings

logger = logging.getLogger("pgseg.segment")

# IMAGENET_MEAN / STD are on the [0, 1] scale: mmseg's (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375)
# on the [0, 255] scale (pgseg_method.md §4.2).

TOKEN_STRIDE = 16  # pixels per stage-0 token side; encoder inputs must be a multiple of it


# ----------------------------------------------------------------------------------------------------------
# class-independent per-crop features


def group_probabilities(assign_soft: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Chain the soft assignments of all grouping stages into per-token group probabilities.

    Stage 0 assigns the N = h·w tokens to S_0 groups (``A_0 [B,S_0,N]``), stage i assigns the S_{i-1}
    segments to S_i groups (``A_i [B,S_i,S_{i-1}]``). The token-to-final-group probability is the matrix
    product ``A_0ᵀ · A_1ᵀ · ...`` ([N,S_0]·[S_0,S_1] -> [N,S_last]), pgseg_method.md §4.3 step 1.

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


@dataclass
class CropFeatures:
    """Class-independent part of the per-crop prediction (pgseg_method.md §4.3 steps 1-2).

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
    """Encode normalised crops and keep what the GroupViT rule needs (float32).

    Args:
        model: a PGSeg-contract model (``encode_image(images, dense=True)`` -> ImageOutput with
            ``group_emb``).
        crops: [B,3,H,W] ImageNet-normalised images, H and W multiples of 16.

    Returns:
        :class:`CropFeatures` with L2-normalised embeddings and [B,S,h,w] group probabilities.
    """
    group_emb, image_emb, assign_soft, grid = _encode_crops(model, crops)
    group_probs = group_probabilities(assign_soft, grid)
    return CropFeatures(group_emb=group_emb, image_emb=image_emb, group_probs=group_probs)


def _encode_crops(
    model: Any, crops: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], tuple[int, int]]:
    """Encoder outputs the rules need: normalised group_emb [B,S,D], image_emb [B,D] (float32), the
    per-stage soft assignments [B,S_i,N_i] (float32) and the stage-0 grid (h, w)."""
    out = model.encode_image(crops, dense=True)  # dense: project every final token (group_emb)
    if out.group_emb is None:
        raise RuntimeError("encode_image(dense=True) returned no group embeddings")
    group_emb = F.normalize(out.group_emb.float(), dim=-1)
    image_emb = F.normalize(out.image_emb.float(), dim=-1)
    assign_soft = [a.float() for a in out.assign_soft]
    return group_emb, image_emb, assign_soft, (int(out.grid[0]), int(out.grid[1]))


# ----------------------------------------------------------------------------------------------------------
# class-dependent rule


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
    return probs.argmax(dim=1)


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
    """GroupViT per-crop class scores (pgseg_method.md §4.3 steps 1, 3, 4).

    1. ``group_probs`` is bilinearly resized (align_corners=False) to ``out_size``; the argmax over
       groups gives each pixel exactly one group (one-hot M [B,S,H,W]).
    2. ``Aff = s·g·tᵀ`` [B,S,C]; ``pre = softmax_C(Aff)``; the top-min(k, C) classes of
       ``softmax_C(s·a·tᵀ)`` are kept (``top_k`` 0 keeps all), the others get ``-inf``;
       ``Aff = softmax_C(Aff) ⊙ pre``.
    3. Class maps ``M·Aff`` [B,C,H,W] (many groups may take the same class).
    4. Background (channel 0): ``thr = min(bg_thresh, max(Aff))`` per crop, and the channel is 1 where
       ``max_c (M·Aff) < thr``, else 0.

    Args:
        feats: per-crop features from :func:`extract_features`.
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
    g, a, probs = feats.group_emb, feats.image_emb, feats.group_probs
    ce = class_emb if isinstance(class_emb, ClassEmbeddings) else ClassEmbeddings.plain(class_emb)
    t = ce.emb.to(device=g.device, dtype=g.dtype)
    if t.dim() != 2 or t.shape[1] != g.shape[-1]:
        raise ValueError(f"class embeddings must be [C,{g.shape[-1]}], got {tuple(t.shape)}")
    if probs.shape[1] != g.shape[1]:
        raise ValueError(f"{probs.shape[1]} group masks but {g.shape[1]} group embeddings")
    b, s, _ = g.shape
    h_out, w_out = int(out_size[0]), int(out_size[1])

    # step 1: pixel -> group (one-hot of the argmax of the resized soft probabilities)
    if group_idx is None:
        group_idx = pixel_groups(probs, (h_out, w_out))  # [B,H,W]

    # step 3: group -> class affinity with the image-level top-k filter
    aff = ce.reduce(logit_scale * torch.einsum("bsd,md->bsm", g, t))  # [B,S,C'] <- max over synonyms [B,S,M]
    c = aff.shape[-1]  # C' = C (+1 background-word column, last)
    pre = aff.softmax(dim=-1)
    k = c if top_k <= 0 else min(top_k, c)
    img_prob = ce.reduce(logit_scale * a @ t.t()).softmax(dim=-1)  # [B,C']
    keep = torch.zeros(b, c, dtype=torch.bool, device=g.device)
    keep.scatter_(1, img_prob.topk(k, dim=-1).indices, True)
    aff = aff.masked_fill(~keep[:, None, :], float("-inf"))
    aff = aff.softmax(dim=-1) * pre  # [B,S,C]

    # step 4: class maps M·Aff; with one-hot M this is a gather of each pixel's group row
    # gather along the groups in channel-first layout: [B,C',S] -> [B,C',H·W] (exact, no transposed copy)
    pix = group_idx.reshape(b, 1, -1).expand(b, c, -1)
    class_maps = torch.gather(aff.transpose(1, 2), 2, pix).reshape(b, c, *group_idx.shape[1:])  # [B,C',H,W]
    bg_words = None
    if ce.has_background_words:
        bg_words, class_maps = class_maps[:, -1], class_maps[:, :-1]  # [B,H,W], [B,C,H,W]
        aff = aff[..., :-1]
    if not with_background:
        return class_maps.contiguous()
    thr = torch.clamp(aff.amax(dim=(1, 2)), max=bg_thresh)  # [B]
    background = (class_maps.amax(dim=1) < thr[:, None, None]).to(class_maps.dtype)  # [B,H,W]
    if bg_words is not None:  # a pixel whose background word beats every class is background
        background = torch.maximum(background, bg_words)
    return torch.cat([background[:, None], class_maps], dim=1)  # [B,C+1,H,W]


# ----------------------------------------------------------------------------------------------------------
# geometry


def rescale_size(height: int, width: int, short: int, max_long: int) -> tuple[int, int]:
    """Keep-ratio target size of mmseg ``Resize(img_scale=(max_long, short), keep_ratio=True)``.

    ``scale = min(max(max_long, short) / long_side, min(max_long, short) / short_side)`` and each side is
    ``int(side·scale + 0.5)`` (pgseg_method.md §4.2).

    Returns:
        (new_height, new_width) pixels, each at least 1.
    """
    long_edge, short_edge = max(max_long, short), min(max_long, short)
    scale = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def resize_short_side(img: np.ndarray | torch.Tensor, short: int, max_long: int) -> np.ndarray | torch.Tensor:
    """Resize keeping the aspect ratio: short side to ``short`` unless the long side would pass ``max_long``.

    Bilinear with half-pixel centres (like cv2 ``INTER_LINEAR`` that mmseg uses), no antialiasing.

    Args:
        img: uint8 numpy image [H,W,3] (0-255), or a float tensor [3,H,W] / [B,3,H,W].
        short: target short side, pixels.
        max_long: cap on the long side, pixels.

    Returns:
        The same kind as the input: uint8 [H',W',3] numpy (rounded) or a float tensor [.., 3, H', W'].
    """
    if isinstance(img, np.ndarray):
        h, w = img.shape[:2]
        nh, nw = rescale_size(h, w, short, max_long)
        if (nh, nw) == (h, w):
            return img.copy()
        x = torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1)[None].float()
        y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    squeeze = img.dim() == 3
    x = img[None] if squeeze else img
    h, w = x.shape[-2:]
    nh, nw = rescale_size(int(h), int(w), short, max_long)
    if (nh, nw) != (h, w):
        x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False)
    return x[0] if squeeze else x


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Sliding windows of mmseg ``slide_inference`` (pgseg_method.md §4.2).

    ``grids = max(size - crop + stride - 1, 0) // stride + 1`` per axis; window i starts at ``i·stride``,
    ends at ``min(start + crop, size)`` and is shifted back to ``max(end - crop, 0)`` so it stays inside.
    Windows are ``min(crop, H) × min(crop, W)``: smaller than the crop when the image is.

    Returns:
        list of (y1, y2, x1, x2) pixel bounds (end exclusive), row-major.

    Raises:
        ValueError: a non-positive size, crop or stride.
    """
    if min(height, width, crop, stride) <= 0:
        raise ValueError(f"sizes must be positive: image {height}x{width}, crop {crop}, stride {stride}")
    h_grids = max(height - crop + stride - 1, 0) // stride + 1
    w_grids = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for i in range(h_grids):
        y2 = min(i * stride + crop, height)
        y1 = max(y2 - crop, 0)
        for j in range(w_grids):
            x2 = min(j * stride + crop, width)
            x1 = max(x2 - crop, 0)
            windows.append((y1, y2, x1, x2))
    return windows


# ----------------------------------------------------------------------------------------------------------
# whole-image prediction


def _check_eval_cfg(eval_cfg: Any) -> None:
    if eval_cfg.mode not in ("slide", "whole"):
        raise ConfigError(f"eval.mode must be 'slide' or 'whole', got {eval_cfg.mode!r}")
    for key in ("short_side", "max_long", "crop", "stride"):
        if int(getattr(eval_cfg, key)) <= 0:
            raise ConfigError(
                f"eval.{key} must be a positive number of pixels, got {getattr(eval_cfg, key)!r}"
            )
    if not 0.0 <= float(eval_cfg.bg_thresh) <= 1.0:
        raise ConfigError(f"eval.bg_thresh must lie in [0, 1], got {eval_cfg.bg_thresh!r}")
    _check_rule_cfg(eval_cfg)


@torch.no_grad()
def compute_class_embeddings(
    model: Any, class_names: list[str], templates: list[str], device: torch.device | str
) -> torch.Tensor:
    """Text embeddings of the class names, mean over prompt templates (pgseg_method.md §4.1 "Text").

    Args:
        model: a PGSeg-contract model (``class_embeddings(names, templates)``).
        class_names: C class names (no background).
        templates: prompt templates with one ``{}`` each, e.g. ``"a photo of a {}."``.
        device: where the embeddings are placed.

    Returns:
        [C,D] float32, L2-normalised.

    Raises:
        ConfigError: no class names, an empty name, or no / malformed templates.
    """
    names = [str(n) for n in class_names]
    if not names:
        raise ConfigError("no class names given: pass at least one class to segment")
    if any(not n.strip() for n in names):
        raise ConfigError(f"empty class name in {names!r}: remove it from the class list")
    if not templates:
        raise ConfigError("eval.templates is empty: give at least one prompt such as 'a photo of a {}.'")
    for tpl in templates:
        if "{}" not in tpl:
            raise ConfigError(f"eval.templates entry {tpl!r} has no '{{}}' placeholder for the class name")
    emb = model.class_embeddings(names, list(templates))
    return F.normalize(emb.float(), dim=-1).to(device)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), value=0.0)  # zeros right / bottom, after normalisation


def crop_probabilities(
    feats: CropFeatures,
    class_emb: torch.Tensor | ClassEmbeddings,
    logit_scale: float,
    out_size: tuple[int, int],
    *,
    group_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel class probabilities of the ``prob`` rule (the training-free SCLIP-family protocol,
    peers_and_eval.md §2.1), applied to group embeddings.

    SCLIP and its successors score dense per-patch CLIP features; our model has no dense per-patch
    features in the joint space, only the S final group embeddings, so each pixel takes the embedding of
    the group it is assigned to (the argmax of the resized chained soft assignment, as in
    :func:`crop_scores` step 1) and its probabilities are ``softmax_C'(s·g·tᵀ)`` with the logits
    max-pooled over each class's synonyms; background words form one extra class column (last) that
    competes in the softmax.

    Args:
        feats: per-crop features from :func:`extract_features`.
        class_emb: [C,D] L2-normalised class embeddings or :class:`ClassEmbeddings`.
        logit_scale: s, the softmax temperature (SCLIP family: 40; 65 VOC21, 50 PC60 / COCO-Object).
        out_size: (H, W) pixels of the maps.
        group_idx: [B,H,W] per-pixel group (:func:`pixel_groups`), when already computed.

    Returns:
        [B,C',H,W] probabilities in [0, 1] summing to 1 over C' = C (+1 background-word column, last).

    Raises:
        ValueError: embedding widths or group counts that do not match.
    """
    g, probs = feats.group_emb, feats.group_probs
    ce = class_emb if isinstance(class_emb, ClassEmbeddings) else ClassEmbeddings.plain(class_emb)
    t = ce.emb.to(device=g.device, dtype=g.dtype)
    if t.dim() != 2 or t.shape[1] != g.shape[-1]:
        raise ValueError(f"class embeddings must be [C,{g.shape[-1]}], got {tuple(t.shape)}")
    if probs.shape[1] != g.shape[1]:
        raise ValueError(f"{probs.shape[1]} group masks but {g.shape[1]} group embeddings")
    b = g.shape[0]
    if group_idx is None:
        group_idx = pixel_groups(probs, out_size)  # [B,H,W]
    group_prob = ce.reduce(logit_scale * torch.einsum("bsd,md->bsm", g, t)).softmax(dim=-1)  # [B,S,C']
    batch_idx = torch.arange(b, device=g.device)[:, None, None]
    return group_prob[batch_idx, group_idx].permute(0, 3, 1, 2).contiguous()  # [B,C',H,W]


# ----------------------------------------------------------------------------------------------------------
# whole-image prediction = class-independent features (a) + class-dependent scoring (b)


@dataclass
class ImageFeatures:
    """Class-independent result of encoding one image: everything the scoring rules need.

    Symbols: W windows, S final groups, S_i / N_i groups / inputs of grouping stage i, D joint width.

    Attributes:
        orig_size: (H0, W0) pixels of the input image.
        resized_size: (H, W) pixels after the short-side resize (the frame of ``windows``).
        padded_size: (Hp, Wp) encoder input size of every window (window zero-padded to a multiple of 16).
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


RULES = ("groupvit", "prob")


def _check_image(image: Any) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"image must be an RGB uint8 array [H,W,3], got {desc}; convert it to RGB first")


def _check_rule_cfg(eval_cfg: Any) -> None:
    rule = getattr(eval_cfg, "rule", "groupvit")
    if rule not in RULES:
        raise ConfigError(f"eval.rule must be one of {', '.join(RULES)}, got {rule!r}")
    if not 0.0 <= float(getattr(eval_cfg, "prob_thresh", 0.0)) <= 1.0:
        raise ConfigError(f"eval.prob_thresh must lie in [0, 1], got {eval_cfg.prob_thresh!r}")
    if float(getattr(eval_cfg, "logit_scale", 0.0)) < 0:
        raise ConfigError(f"eval.logit_scale must be >= 0 (0 = the model's), got {eval_cfg.logit_scale!r}")


@torch.no_grad()
def extract_image_features(
    model: Any, image: np.ndarray, eval_cfg: Any, device: torch.device | str, *, crop_batch: int = 4
) -> ImageFeatures:
    """Class-independent half of inference (pgseg_method.md §4.2 and §4.3 steps 1-2): resize, normalise,
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
    _check_image(image)
    _check_eval_cfg(eval_cfg)
    device = torch.device(device)
    h0, w0 = image.shape[:2]
    logit_scale = float(model.logit_scale_value())

    # resize on the [0, 255] scale and round like an uint8 image, then normalise
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device)
    x = x.permute(2, 0, 1).float()  # [3,H0,W0]
    x = resize_short_side(x, int(eval_cfg.short_side), int(eval_cfg.max_long)).round().clamp(0, 255)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    x = (x / 255.0 - mean) / std  # [3,H,W]
    height, width = int(x.shape[-2]), int(x.shape[-1])

    if eval_cfg.mode == "slide":
        windows = slide_windows(height, width, int(eval_cfg.crop), int(eval_cfg.stride))
    else:
        windows = [(0, height, 0, width)]
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
        padded = _pad_to_multiple(crops, TOKEN_STRIDE)
        padded_size = (int(padded.shape[-2]), int(padded.shape[-1]))
        group_emb, image_emb, assign_soft, grid = _encode_crops(model, padded)
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


def _window_chunks(features: ImageFeatures, crop_batch: int) -> list[tuple[list, CropFeatures, torch.Tensor]]:
    """Per chunk of windows: the windows, their :class:`CropFeatures` and per-pixel groups [n,Hp,Wp]
    (class-independent, shared by every scoring setting)."""
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
        chunks.append((chunk, feats, pixel_groups(feats.group_probs, features.padded_size)))
    return chunks


def _window_maps(
    features: ImageFeatures,
    ce: ClassEmbeddings,
    eval_cfg: Any,
    with_background: bool,
    chunks: list[tuple[list, CropFeatures, torch.Tensor]],
) -> torch.Tensor:
    """Window-averaged per-pixel maps in the resized frame: [K,H,W] where K = C+1 (groupvit rule with
    background), C (groupvit without), or C' = C (+1 background-word column) for the prob rule."""
    rule = getattr(eval_cfg, "rule", "groupvit")
    device = features.device
    height, width = features.resized_size
    if rule == "prob":
        scale = float(getattr(eval_cfg, "logit_scale", 0.0)) or features.logit_scale
        channels = ce.num_classes + int(ce.has_background_words)
    else:
        channels = ce.num_classes + int(with_background)
    total = torch.zeros(channels, height, width, device=device)
    count = torch.zeros(1, height, width, device=device)
    for chunk, feats, group_idx in chunks:
        y1, y2, x1, x2 = chunk[0]
        hc, wc = y2 - y1, x2 - x1
        if rule == "prob":
            maps = crop_probabilities(feats, ce, scale, out_size=features.padded_size, group_idx=group_idx)
        else:
            maps = crop_scores(
                feats,
                ce,
                features.logit_scale,
                float(eval_cfg.bg_thresh),
                int(eval_cfg.top_k),
                out_size=features.padded_size,
                with_background=with_background,
                group_idx=group_idx,
            )
        maps = maps[:, :, :hc, :wc]  # [n,K,hc,wc]
        for (y1, y2, x1, x2), s in zip(chunk, maps):
            total[:, y1:y2, x1:x2] += s
            count[:, y1:y2, x1:x2] += 1
    if bool((count == 0).any()):
        raise RuntimeError("sliding windows left pixels uncovered")  # invariant of slide_windows
    return total / count


@torch.no_grad()
def score_maps(
    features: ImageFeatures,
    class_emb: torch.Tensor | ClassEmbeddings,
    eval_cfg: Any,
    *,
    with_background: bool = True,
    crop_batch: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent half of inference, on the features' device (see :func:`scores_from_features`).

    Returns:
        ``(label, scores)``: label int64 tensor [H0,W0] and scores float32 tensor [K,H0,W0].
    """
    return next(
        iter_score_maps(
            features, class_emb, [eval_cfg], with_background=with_background, crop_batch=crop_batch
        )
    )


@torch.no_grad()
def iter_score_maps(
    features: ImageFeatures,
    class_emb: torch.Tensor | ClassEmbeddings,
    eval_cfgs: list[Any],
    *,
    with_background: bool = True,
    crop_batch: int = 4,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`score_maps` for several eval settings (a sweep), computing the per-pixel groups once.

    Yields:
        ``(label, scores)`` per entry of ``eval_cfgs``, in order, each equal to ``score_maps`` with it.

    Raises:
        ConfigError: invalid settings, or background words on a dataset without background.
    """
    for cfg in eval_cfgs:
        _check_eval_cfg(cfg)
    ce = class_emb if isinstance(class_emb, ClassEmbeddings) else ClassEmbeddings.plain(class_emb.float())
    ce = ce.to(features.device)
    if ce.has_background_words and not with_background:
        raise ConfigError(
            "background words need a dataset with a background class: drop them from the "
            "class list of this dataset"
        )
    chunks = _window_chunks(features, crop_batch)
    for eval_cfg in eval_cfgs:
        yield _finish_maps(features, ce, eval_cfg, with_background, chunks)


def _channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=0)`` for [K,H,W] without NaN, as K vectorised passes over contiguous planes
    (an argmax along the outer dimension is a strided reduction, several times slower on CPU).
    Ties go to the first channel, like ``argmax``."""
    best = scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=torch.long, device=scores.device)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        best = torch.where(better, scores[k], best)
        index.masked_fill_(better, k)
    return index


def _finish_maps(
    features: ImageFeatures,
    ce: ClassEmbeddings,
    eval_cfg: Any,
    with_background: bool,
    chunks: list[tuple[list, CropFeatures, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    rule = getattr(eval_cfg, "rule", "groupvit")
    scores = _window_maps(features, ce, eval_cfg, with_background, chunks)
    h0, w0 = features.orig_size
    if tuple(scores.shape[-2:]) != (h0, w0):
        scores = F.interpolate(scores[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
    if rule == "prob" and with_background:
        c = ce.num_classes
        bg = scores[c : c + 1] if ce.has_background_words else torch.zeros_like(scores[:1])
        best = scores.amax(dim=0)  # max probability over classes and background words
        scores = torch.cat([bg, scores[:c]], dim=0)  # [C+1,H0,W0], background channel 0
        label = _channel_argmax(scores)
        label = label.masked_fill(best < float(eval_cfg.prob_thresh), 0)
    else:
        label = _channel_argmax(scores)
    return label, scores


def scores_from_features(
    features: ImageFeatures,
    class_emb: torch.Tensor | ClassEmbeddings,
    eval_cfg: Any,
    *,
    with_background: bool = True,
    crop_batch: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent half of inference: labels and scores from cached or fresh :class:`ImageFeatures`.

    Rules (``eval_cfg.rule``):

    - ``"groupvit"`` (pgseg_method.md §4.3 steps 1, 3, 4; :func:`crop_scores`): group-class affinity with
      the top-k filter, background where the best affinity is below ``bg_thresh``;
    - ``"prob"`` (SCLIP family, peers_and_eval.md §2.1; :func:`crop_probabilities`): per-pixel softmax over
      classes (and background words) of ``logit_scale`` · group embedding · tᵀ; on datasets with background
      a pixel whose maximum probability is below ``prob_thresh`` (or that a background word wins) is
      background. ``top_k`` and ``bg_thresh`` are not used by this rule.

    Per-window maps are summed over the windows and divided by the per-pixel window count (mmseg slide
    inference), bilinearly resized to the original size, and arg-maxed.

    Args:
        features: from :func:`extract_image_features` (or a feature cache).
        class_emb: [C,D] L2-normalised class embeddings or :class:`ClassEmbeddings`.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (rule, bg_thresh, top_k, logit_scale, prob_thresh).
        with_background: the label map has a background class (label 0, classes 1 + c); without it labels
            are the class indices 0..C-1 and no background channel is produced.
        crop_batch: windows scored together (bit-identical to :func:`predict` with the same value).

    Returns:
        ``(label, scores)``: label int64 [H0,W0] and scores float32 [C+1,H0,W0] (background channel 0) or
        [C,H0,W0] without background; in [0, 1].

    Raises:
        ConfigError: invalid eval settings, or background words on a dataset without background.
    """
    label, scores = score_maps(
        features, class_emb, eval_cfg, with_background=with_background, crop_batch=crop_batch
    )
    return label.cpu().numpy().astype(np.int64), scores.cpu().numpy().astype(np.float32)


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
    """Segment one image (pgseg_method.md §4.2-4.3): :func:`extract_image_features` then
    :func:`scores_from_features`.

    Args:
        model: a PGSeg-contract model on ``device`` (in eval mode).
        image: uint8 RGB image [H0,W0,3], 0-255.
        class_emb: [C,D] L2-normalised class embeddings (:func:`compute_class_embeddings`), or
            :class:`~pgseg_core.segment.classes.ClassEmbeddings` (synonyms, background words).
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
    _check_image(image)
    _check_eval_cfg(eval_cfg)
    features = extract_image_features(model, image, eval_cfg, device, crop_batch=crop_batch)
    return scores_from_features(
        features, class_emb, eval_cfg, with_background=with_background, crop_batch=crop_batch
    )
