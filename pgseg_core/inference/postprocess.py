"""Post-processing of the training-free (SCLIP-family) protocol: area threshold and PAMR (docs/EVAL.md).

Symbols: K score channels, H×W pixels, D dilations.

- :func:`area_filter` (SCLIP's ``area_thd``): on a label map with background (channel 0), every class whose
  arg-max area is not above ``thresh`` × the whole predicted non-background area loses its scores, before
  the final arg-max and probability threshold.
- :func:`pamr` (pixel-adaptive mask refinement, Araslanov & Roth, CVPR 2020, as the training-free methods
  use it): the score maps are repeatedly replaced by an affinity-weighted average of their values at the 8
  neighbours of each pixel at every dilation, the affinity coming from local colour differences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["area_filter", "pamr", "pamr_affinity"]


def area_filter(scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """Zero the channels of small classes (SCLIP ``area_thd``).

    Args:
        scores: [K, H, W] per-pixel class scores, channel 0 = background.
        thresh: fraction in [0, 1]; 0 returns ``scores`` itself.

    Returns:
        [K, H, W]: a copy in which channel c >= 1 is 0 wherever class c wins at most ``thresh`` × (number
        of pixels whose arg-max is not background) pixels; channel 0 is kept.
    """
    if thresh <= 0:
        return scores
    k = scores.shape[0]
    counts = torch.bincount(scores.argmax(dim=0).flatten(), minlength=k).to(scores.dtype)  # [K]
    fg = counts[1:]
    keep = torch.cat([counts.new_ones(1), (fg > thresh * fg.sum()).to(scores.dtype)])
    return scores * keep[:, None, None]


def _neighbours(x: torch.Tensor, dilations: tuple[int, ...], centre: bool) -> torch.Tensor:
    """[C, N, H, W]: the values of x [C, H, W] at the 3×3 offsets of every dilation (edge-replicated), the
    centre included once per dilation when ``centre``; N = (9 or 8)·D."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x[None], (d, d, d, d), mode="replicate")[0]
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if dy == 0 and dx == 0 and not centre:
                    continue
                out.append(padded[:, d + dy : d + dy + h, d + dx : d + dx + w])
    return torch.stack(out, dim=1)


def pamr_affinity(image: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """PAMR's pixel-adaptive affinity of each pixel to its 8·D neighbours.

    ``a_ij = softmax_j( mean_c( -|I_c(i) - I_c(j)| / (1e-8 + 0.1·σ_c(i)) ) )`` where j runs over the 8
    neighbours at every dilation and σ_c(i) is the (unbiased) standard deviation of channel c over the 9·D
    pixels of i's dilated 3×3 neighbourhoods.

    Args:
        image: [3, H, W] float image (any normalisation; the ratio is scale-free).
        dilations: D pixel dilations, e.g. (8, 16).

    Returns:
        [8·D, H, W], non-negative, summing to 1 over the first axis.
    """
    image = image.float()
    sigma = _neighbours(image, dilations, centre=True).std(dim=1, keepdim=True)  # [3, 1, H, W]
    diff = (image[:, None] - _neighbours(image, dilations, centre=False)).abs()  # [3, 8D, H, W]
    return (-diff / (1e-8 + 0.1 * sigma)).mean(dim=0).softmax(dim=0)


def pamr(
    image: torch.Tensor, scores: torch.Tensor, iters: int = 10, dilations: tuple[int, ...] = (8, 16)
) -> torch.Tensor:
    """Refine score maps with PAMR.

    Args:
        image: [3, H, W] the image the scores belong to (same H, W).
        scores: [K, H, W] per-pixel scores (probabilities or affinities).
        iters: refinement steps (0 returns ``scores``).
        dilations: neighbourhood dilations in pixels.

    Returns:
        [K, H, W]; each step sets every pixel to the affinity-weighted mean of its neighbours' scores, so a
        channel's values stay within its input range and channels summing to 1 still do.

    Raises:
        ValueError: image and scores of different sizes.
    """
    if iters <= 0:
        return scores
    if image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"PAMR: image {tuple(image.shape)} and scores {tuple(scores.shape)} differ in size")
    dil = tuple(int(d) for d in dilations)
    aff = pamr_affinity(image, dil).to(scores.dtype)  # [8D, H, W]
    out = scores
    for _ in range(int(iters)):
        out = (_neighbours(out, dil, centre=False) * aff[None]).sum(dim=1)
    return out
