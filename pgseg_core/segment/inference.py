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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
    out = model.encode_image(crops, dense=True)  # dense: project every final token (group_emb)
    if out.group_emb is None:
        raise RuntimeError("encode_image(dense=True) returned no group embeddings")
    group_emb = F.normalize(out.group_emb.float(), dim=-1)
    image_emb = F.normalize(out.image_emb.float(), dim=-1)
    group_probs = group_probabilities([a.float() for a in out.assign_soft], out.grid)
    return CropFeatures(group_emb=group_emb, image_emb=image_emb, group_probs=group_probs)


# ----------------------------------------------------------------------------------------------------------
# class-dependent rule


def crop_scores(
    feats: CropFeatures,
    class_emb: torch.Tensor | ClassEmbeddings,
    logit_scale: float,
    bg_thresh: float,
    top_k: int,
    out_size: tuple[int, int],
    with_background: bool = True,
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
    probs = F.interpolate(probs, size=(h_out, w_out), mode="bilinear", align_corners=False)  # [B,S,H,W]
    group_idx = probs.argmax(dim=1)  # [B,H,W]

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
    batch_idx = torch.arange(b, device=g.device)[:, None, None]
    class_maps = aff[batch_idx, group_idx].permute(0, 3, 1, 2)  # [B,C',H,W] <- [B,H,W,C']
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


@torch.no_grad()
def predict(
    model: Any,
    image: np.ndarray,
    class_emb: torch.Tensor | ClassEmbeddings,
    eval_cfg: Any,
    device: torch.device | str,
    *,
    crop_batch: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment one image with the GroupViT rule (pgseg_method.md §4.2-4.3).

    Args:
        model: a PGSeg-contract model on ``device`` (in eval mode).
        image: uint8 RGB image [H0,W0,3], 0-255.
        class_emb: [C,D] L2-normalised class embeddings (:func:`compute_class_embeddings`), or
            :class:`~pgseg_core.segment.classes.ClassEmbeddings` (synonyms, background words).
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (short_side, max_long, mode, crop, stride,
            bg_thresh, top_k).
        device: torch device the model runs on.
        crop_batch: windows encoded per forward pass (memory bound only; results do not depend on it).

    Returns:
        ``(label, scores)``: label int64 [H0,W0] (0 background, 1 + c class c) and scores float32
        [C+1,H0,W0] (window-averaged per-crop scores of :func:`crop_scores`, bilinearly resized; in [0, 1]).

    Raises:
        DataError: ``image`` is not a uint8 [H,W,3] array.
        ConfigError: invalid eval settings.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"image must be an RGB uint8 array [H,W,3], got {desc}; convert it to RGB first")
    _check_eval_cfg(eval_cfg)
    device = torch.device(device)
    h0, w0 = image.shape[:2]
    ce = class_emb if isinstance(class_emb, ClassEmbeddings) else ClassEmbeddings.plain(class_emb.float())
    ce = ce.to(device)
    logit_scale = float(model.logit_scale_value())

    # resize on the [0, 255] scale and round like an uint8 image, then normalise
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device)
    x = x.permute(2, 0, 1).float()  # [3,H0,W0]
    x = resize_short_side(x, int(eval_cfg.short_side), int(eval_cfg.max_long)).round().clamp(0, 255)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    x = (x / 255.0 - mean) / std  # [3,H,W]
    height, width = x.shape[-2:]

    if eval_cfg.mode == "slide":
        windows = slide_windows(height, width, int(eval_cfg.crop), int(eval_cfg.stride))
    else:
        windows = [(0, height, 0, width)]
    num_channels = ce.num_classes + 1
    total = torch.zeros(num_channels, height, width, device=device)
    count = torch.zeros(1, height, width, device=device)
    step = max(int(crop_batch), 1)
    for start in range(0, len(windows), step):
        chunk = windows[start : start + step]
        crops = torch.stack([x[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])  # [n,3,hc,wc], same size
        hc, wc = crops.shape[-2:]
        padded = _pad_to_multiple(crops, TOKEN_STRIDE)
        feats = extract_features(model, padded)
        scores = crop_scores(
            feats,
            ce,
            logit_scale,
            float(eval_cfg.bg_thresh),
            int(eval_cfg.top_k),
            out_size=tuple(padded.shape[-2:]),
            with_background=True,
        )[:, :, :hc, :wc]  # [n,C+1,hc,wc]
        for (y1, y2, x1, x2), s in zip(chunk, scores):
            total[:, y1:y2, x1:x2] += s
            count[:, y1:y2, x1:x2] += 1
    if bool((count == 0).any()):
        raise RuntimeError("sliding windows left pixels uncovered")  # invariant of slide_windows
    scores = total / count
    if (height, width) != (h0, w0):
        scores = F.interpolate(scores[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
    label = scores.argmax(dim=0)
    logger.debug("predicted %dx%d image with %d windows", h0, w0, len(windows))
    return label.cpu().numpy().astype(np.int64), scores.cpu().numpy().astype(np.float32)
