"""What a GroupViT / PGSeg image encoder does with one image: group maps, NPR prototypes, matching.

Symbols: N_i input tokens of grouping stage i (N_0 = h·w patch tokens, N_1 = S_0 segments), S_i groups of
stage i, K_i prototypes of stage i (K_i = S_i in PGSeg), C token width, h×w stage-0 token grid, H×W
pixels (H = 16·h, W = 16·w).

One forward pass of the image encoder (``encode_image(..., stage_inputs=True)``) gives, per grouping stage
(the issue's "stage 1" and "stage 2" are stages 0 and 1 here):

* the group assignment, hard (argmax over groups of the assignment the model used) and soft (softmax
  over groups), chained down to the stage-0 token cells for stage 1 like the GroupViT inference rule
  (:func:`pgseg_core.inference.group_probabilities`, docs/METHOD.md §4.3);
* with NPR (docs/METHOD.md §3.2): the stage's EM prototypes and their responsibilities over the stage's
  input tokens, exactly as the encoder computed them (EM is deterministic given the tokens);
* the Hungarian group <-> prototype matching and the HRS-kept pairs of L_PG (docs/METHOD.md §3.3-3.4),
  computed with the loss's own functions (:func:`pgseg_core.losses.prototype.hungarian_match`,
  ``hrs_mask``) and the same arguments as ``PGSeg._prototype_losses``, honouring ``model.npr.released_code``.

:class:`VizSample` is the per-image input: an RGB image plus optionally its normalised pixels or
precomputed frozen-stem features. :func:`trace_image` runs the encoder and keeps an :class:`EncoderTrace`
(what the feature cache's ``viz`` section stores, :mod:`pgseg_core.viz.prototype_cache`);
:func:`state_from_trace` computes everything drawn from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import to_tensor_normalized
from ..errors import DataError
from ..losses.prototype import hrs_mask, hungarian_match
from ..inference import TOKEN_STRIDE, group_probabilities, resize_short_side

__all__ = [
    "VizSample",
    "StageState",
    "ImageState",
    "StageTrace",
    "EncoderTrace",
    "prepare_image",
    "trace_image",
    "state_from_trace",
    "collect_image_state",
]


@dataclass
class VizSample:
    """One image to visualise.

    Attributes:
        name: display name (file stem), used for output file names.
        image: uint8 RGB [H, W, 3] as the encoder sees it (H, W multiples of 16: one token cell is 16×16 px).
        pixels: optional ImageNet-normalised [3, H, W]; computed from ``image`` when neither it nor
            ``stem_feats`` is given.
        stem_feats: optional precomputed frozen-stem features [112, h, w] (demo variant; e.g. from the
            training stem cache), used instead of ``pixels``.
    """

    name: str
    image: np.ndarray
    pixels: torch.Tensor | None = None
    stem_feats: torch.Tensor | None = None


@dataclass
class StageState:
    """One grouping stage of one image (all numpy, float32 unless stated).

    Attributes:
        index: stage index i (0-based; the issue's "stage i+1").
        assign_hard: [S_i, N_i] one-hot (0/1) argmax over groups of the assignment the model used.
        assign_soft: [S_i, N_i] softmax over groups (each column sums to 1).
        group_map: int64 [h, w] group id of every stage-0 token cell (hard assignments chained).
        group_probs: [S_i, h, w] soft assignments chained to the cells (sums to 1 over S_i), in [0, 1].
        centres: [S_i, C] group centres (the vectors L_PG contrasts).
        input_tokens: [N_i, C] the stage's input tokens (what NPR's EM ran over).
        cell_masks: bool [N_i, h, w] the stage-0 cells each input token covers (stage 0: its own cell;
            stage 1: the cells of the segment, by the stage-0 hard assignment; may be empty).
        prototypes: [K_i, C] L2-normalised EM prototypes, or None without NPR.
        responsibilities: [N_i, K_i] last-E-step responsibilities (column-normalised: each prototype's
            column sums to 1 over the tokens), or None.
        proto_probs: [K_i, h, w] responsibilities chained to the cells (through the stage-0 soft
            assignment for stage 1) and normalised over K_i per cell: in [0, 1], sums to 1; or None.
        proto_map: int64 [h, w] argmax of ``proto_probs``, or None.
        similarity: [S_i, K_i] cosine similarity of group centre s and prototype k, in [-1, 1]; or None.
        match: int64 [S_i] prototype matched to group s (Hungarian), or None.
        hrs_keep_gp: bool [S_i] HRS keeps pair s in the prototype->groups direction of L_PG (rows of
            ``sim_gp``), or None.
        hrs_keep_pg: bool [S_i] HRS keeps pair s in the group->prototypes direction (rows of ``sim_pg``),
            or None.
        hrs_score_gp, hrs_score_pg: [S_i] the min-max normalised similarity HRS compared with phi, or None.
    """

    index: int
    assign_hard: np.ndarray
    assign_soft: np.ndarray
    group_map: np.ndarray
    group_probs: np.ndarray
    centres: np.ndarray
    input_tokens: np.ndarray
    cell_masks: np.ndarray
    prototypes: np.ndarray | None = None
    responsibilities: np.ndarray | None = None
    proto_probs: np.ndarray | None = None
    proto_map: np.ndarray | None = None
    similarity: np.ndarray | None = None
    match: np.ndarray | None = None
    hrs_keep_gp: np.ndarray | None = None
    hrs_keep_pg: np.ndarray | None = None
    hrs_score_gp: np.ndarray | None = None
    hrs_score_pg: np.ndarray | None = None

    @property
    def has_npr(self) -> bool:
        return self.prototypes is not None

    def matching_rows(self) -> list[dict[str, Any]]:
        """One dict per group: group, prototype, cosine similarity, HRS scores and kept flags (JSON-ready)."""
        if not self.has_npr:
            return []
        rows = []
        for s in range(len(self.match)):
            k = int(self.match[s])
            rows.append(
                {
                    "group": s,
                    "prototype": k,
                    "similarity": float(self.similarity[s, k]),
                    "hrs_score_gp": float(self.hrs_score_gp[s]),
                    "hrs_score_pg": float(self.hrs_score_pg[s]),
                    "kept_gp": bool(self.hrs_keep_gp[s]),
                    "kept_pg": bool(self.hrs_keep_pg[s]),
                    "cells": int((self.group_map == s).sum()),
                }
            )
        return rows


@dataclass
class ImageState:
    """Everything collected for one image.

    Attributes:
        name: the sample's name.
        image: uint8 RGB [H, W, 3] (H = 16·h, W = 16·w).
        grid: stage-0 token grid (h, w).
        stages: one :class:`StageState` per grouping stage.
        npr: whether the model has NPR (PGSeg) or is a plain GroupViT.
        released_code: ``model.npr.released_code`` (matching minimises, HRS reads column 0).
        hrs_threshold: phi.
    """

    name: str
    image: np.ndarray
    grid: tuple[int, int]
    stages: list[StageState] = field(default_factory=list)
    npr: bool = False
    released_code: bool = False
    hrs_threshold: float = 0.1

    def to_json(self) -> dict[str, Any]:
        """Summary numbers: per stage the group sizes and, with NPR, the matching table."""
        stages = []
        for st in self.stages:
            entry: dict[str, Any] = {
                "stage": st.index + 1,
                "groups": int(st.assign_hard.shape[0]),
                "input_tokens": int(st.assign_hard.shape[1]),
                "cells_per_group": np.bincount(
                    st.group_map.reshape(-1), minlength=st.assign_hard.shape[0]
                ).tolist(),
            }
            if st.has_npr:
                entry["prototypes"] = int(st.prototypes.shape[0])
                entry["cells_per_prototype"] = np.bincount(
                    st.proto_map.reshape(-1), minlength=st.prototypes.shape[0]
                ).tolist()
                entry["matching"] = st.matching_rows()
                entry["hrs_kept_gp"] = int(st.hrs_keep_gp.sum())
                entry["hrs_kept_pg"] = int(st.hrs_keep_pg.sum())
            stages.append(entry)
        return {
            "image": self.name,
            "height": int(self.image.shape[0]),
            "width": int(self.image.shape[1]),
            "grid": list(self.grid),
            "npr": self.npr,
            "released_code": self.released_code,
            "hrs_threshold": self.hrs_threshold,
            "stages": stages,
        }


def prepare_image(image: np.ndarray, short_side: int, max_long: int, name: str = "image") -> VizSample:
    """Resize an RGB image for the encoder: short side to ``short_side`` (long side at most ``max_long``,
    mmseg keep-ratio rule), then crop the bottom / right remainder so both sides are multiples of 16.

    Args:
        image: uint8 RGB [H0, W0, 3].
        short_side, max_long: pixels.
        name: the sample's name.

    Returns:
        :class:`VizSample` with the resized uint8 image [H, W, 3] (pixels computed later).

    Raises:
        DataError: not a uint8 [H, W, 3] array, or an image smaller than one 16×16 token after resizing.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"{name}: image must be an RGB uint8 array [H,W,3]; convert it to RGB first")
    resized = resize_short_side(image, int(short_side), int(max_long))
    h = resized.shape[0] // TOKEN_STRIDE * TOKEN_STRIDE
    w = resized.shape[1] // TOKEN_STRIDE * TOKEN_STRIDE
    if h == 0 or w == 0:
        raise DataError(
            f"{name}: {image.shape[1]}x{image.shape[0]} px is below one 16x16 token at short "
            f"side {short_side}; use a larger short side"
        )
    return VizSample(name=name, image=np.ascontiguousarray(resized[:h, :w]))


@dataclass
class StageTrace:
    """What the image encoder computed at one grouping stage of one image (numpy, float32 unless stated).

    Everything :func:`state_from_trace` needs, and what the feature cache stores (``viz`` section,
    :mod:`pgseg_core.viz.prototype_cache`).

    Attributes:
        soft: [S_i, N_i] softmax-over-groups assignment.
        hard_index: int64 [N_i] the group each input token was assigned to (argmax of the hard assignment
            the model used; one-hot at eval).
        centres: [S_i, C] group centres.
        inputs: [N_i, C] the stage's input tokens (what NPR's EM ran over).
        prototypes: [K_i, C] EM prototypes as the encoder returned them (not normalised), or None.
        proto_assign: [N_i, K_i] last-E-step responsibilities, or None.
    """

    soft: np.ndarray
    hard_index: np.ndarray
    centres: np.ndarray
    inputs: np.ndarray
    prototypes: np.ndarray | None = None
    proto_assign: np.ndarray | None = None


@dataclass
class EncoderTrace:
    """One image encoder pass of one image, reduced to what the visualisation needs.

    Attributes:
        grid: stage-0 token grid (h, w).
        stages: one :class:`StageTrace` per grouping stage.
        npr: whether the model has NPR.
        released_code: ``model.npr.released_code``.
        hrs_threshold: phi (``model.npr.hrs_threshold``).
    """

    grid: tuple[int, int]
    stages: list[StageTrace]
    npr: bool = False
    released_code: bool = False
    hrs_threshold: float = 0.1


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


@torch.no_grad()
def trace_image(model: Any, sample: VizSample, device: torch.device | str = "cpu") -> EncoderTrace:
    """Run the image encoder once on one image and keep what :func:`state_from_trace` needs.

    Args:
        model: a GroupViT / PGSeg model in eval mode on ``device``.
        sample: the image (and optionally its pixels or stem features).
        device: the model's device.

    Returns:
        :class:`EncoderTrace` (numpy arrays on the CPU).

    Raises:
        DataError: an image whose sides are not multiples of 16, or stem features for a model without the
            hybrid stem.
    """
    H, W = sample.image.shape[:2]
    if sample.stem_feats is not None:
        if getattr(model.img_encoder, "hybrid", None) is None:
            raise DataError(f"{sample.name}: stem features given but the model has a patch stem; pass pixels")
        out = model.encode_image(stem_feats=sample.stem_feats[None].to(device).float(), stage_inputs=True)
    else:
        if H % TOKEN_STRIDE or W % TOKEN_STRIDE:
            raise DataError(
                f"{sample.name}: image size {W}x{H} is not a multiple of 16 px; "
                "resize it with prepare_image()"
            )
        pixels = sample.pixels if sample.pixels is not None else to_tensor_normalized(sample.image)
        out = model.encode_image(pixels[None].to(device).float(), stage_inputs=True)
    vis = out.vision
    npr_cfg = model.cfg.npr
    stages = []
    for i, grouping in enumerate(vis.groupings):
        st = StageTrace(
            soft=_np(grouping.soft[0]),
            hard_index=grouping.hard[0].argmax(dim=0).cpu().numpy(),
            centres=_np(grouping.centres[0]),
            inputs=_np(vis.stage_inputs[i][0]),
        )
        if vis.nprs:
            st.prototypes = _np(vis.nprs[i].prototypes[0])
            st.proto_assign = _np(vis.nprs[i].assign[0])
        stages.append(st)
    h, w = out.grid
    return EncoderTrace(
        grid=(int(h), int(w)),
        stages=stages,
        npr=bool(vis.nprs),
        released_code=bool(npr_cfg.released_code),
        hrs_threshold=float(npr_cfg.hrs_threshold),
    )


def state_from_trace(trace: EncoderTrace, name: str, image: np.ndarray) -> ImageState:
    """Groups, prototype maps, matching and HRS of one image from its :class:`EncoderTrace` (CPU, float32).

    Args:
        trace: from :func:`trace_image` or a feature cache.
        name: the sample's name.
        image: uint8 RGB [H, W, 3] the trace was computed on (H = 16·h, W = 16·w).

    Returns:
        :class:`ImageState`; each stage as documented on :class:`StageState`. Without NPR only the group
        fields are filled.
    """
    h, w = trace.grid
    state = ImageState(
        name=name,
        image=image,
        grid=(int(h), int(w)),
        npr=trace.npr,
        released_code=trace.released_code,
        hrs_threshold=trace.hrs_threshold,
    )
    soft = [torch.from_numpy(st.soft)[None] for st in trace.stages]  # [1, S_i, N_i]
    hard = [
        F.one_hot(torch.from_numpy(st.hard_index).long(), st.soft.shape[0]).T[None].float()
        for st in trace.stages
    ]  # [1, S_i, N_i] one-hot
    for i, tr in enumerate(trace.stages):
        group_probs = group_probabilities(soft[: i + 1], (h, w))[0]  # [S_i, h, w]
        group_onehot = group_probabilities(hard[: i + 1], (h, w))[0]  # chained one-hots stay one-hot
        if i == 0:
            cell_masks = torch.eye(h * w, dtype=torch.bool).reshape(h * w, h, w)
        else:
            # [S_{i-1}, h, w]: the cells of each incoming segment
            cell_masks = group_probabilities(hard[:i], (h, w))[0] > 0.5
        st = StageState(
            index=i,
            assign_hard=hard[i][0].numpy(),
            assign_soft=tr.soft,
            group_map=group_onehot.argmax(dim=0).numpy().astype(np.int64),
            group_probs=group_probs.numpy(),
            centres=tr.centres,
            input_tokens=tr.inputs,
            cell_masks=cell_masks.numpy(),
        )
        if trace.npr:
            _fill_npr(
                st,
                torch.from_numpy(tr.centres)[None],
                torch.from_numpy(tr.prototypes)[None],
                torch.from_numpy(tr.proto_assign)[None],
                soft[:i],
                (h, w),
                trace.released_code,
                trace.hrs_threshold,
            )
        state.stages.append(st)
    return state


def collect_image_state(model: Any, sample: VizSample, device: torch.device | str = "cpu") -> ImageState:
    """Run the image encoder once and collect every stage's groups, prototypes and matching:
    :func:`state_from_trace` of :func:`trace_image`.

    Raises:
        DataError: as :func:`trace_image`.
    """
    return state_from_trace(trace_image(model, sample, device), sample.name, sample.image)


def _fill_npr(
    st: StageState,
    centres: torch.Tensor,
    prototypes: torch.Tensor,
    z: torch.Tensor,
    soft_below: list[torch.Tensor],
    grid: tuple[int, int],
    released_code: bool,
    threshold: float,
) -> None:
    """Prototype maps, matching and HRS of one stage; the matching / HRS calls mirror PGSeg._prototype_losses.

    centres [1, S, C], prototypes [1, K, C], z [1, N_i, K], soft_below: soft assignments of the stages below.
    """
    # prototype responsibilities chained to the cells like the group assignments, then a distribution over K
    chained = group_probabilities(soft_below + [z.transpose(1, 2)], grid)[0]  # [K, h, w]
    proto_probs = chained / chained.sum(dim=0, keepdim=True).clamp_min(1e-12)
    # --- the loss's matching (pgseg.py _prototype_losses): Hungarian on cosine similarity
    perm = hungarian_match(centres, prototypes, maximize=not released_code)  # [1, S]
    matched = torch.gather(prototypes, 1, perm.unsqueeze(-1).expand_as(prototypes))
    # --- the loss's HRS (losses/prototype.py prototype_group_loss): both directions
    g = F.normalize(centres, dim=-1)
    p = F.normalize(matched, dim=-1)
    sim_gp = g @ p.transpose(1, 2)  # [1, S, S] group i vs matched prototype j
    sim_pg = p @ g.transpose(1, 2)  # [1, S, S] matched prototype i vs group j
    st.hrs_keep_gp = hrs_mask(sim_gp, threshold, released_code)[0].cpu().numpy()
    st.hrs_keep_pg = hrs_mask(sim_pg, threshold, released_code)[0].cpu().numpy()
    st.hrs_score_gp = _hrs_score(sim_gp, released_code)[0].cpu().numpy()
    st.hrs_score_pg = _hrs_score(sim_pg, released_code)[0].cpu().numpy()
    st.prototypes = F.normalize(prototypes[0], dim=-1).cpu().numpy()
    st.responsibilities = z[0].cpu().numpy()
    st.proto_probs = proto_probs.cpu().numpy()
    st.proto_map = proto_probs.argmax(dim=0).cpu().numpy().astype(np.int64)
    st.similarity = (F.normalize(centres[0], dim=-1) @ F.normalize(prototypes[0], dim=-1).T).cpu().numpy()
    st.match = perm[0].cpu().numpy().astype(np.int64)


def _hrs_score(sim: torch.Tensor, released_code: bool) -> torch.Tensor:
    """The normalised similarity :func:`hrs_mask` compares with phi (display only; the mask is hrs_mask's)."""
    lo = sim.min(dim=1, keepdim=True).values
    hi = sim.max(dim=1, keepdim=True).values
    norm = (sim - lo) / (hi - lo + 1e-6)
    return norm[:, :, 0] if released_code else torch.diagonal(norm, dim1=1, dim2=2)
