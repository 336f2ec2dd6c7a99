"""The ``viz`` section of the HDF5 feature cache: encoder traces for ``visualize-prototypes``.

``segment`` and ``eval`` store the class-independent inference features under ``/images``
(docs/FEATURE_CACHE.md).
``visualize-prototypes --cache FILE`` adds, under ``/viz/<escaped key>`` of the same file, what
:func:`pgseg_core.viz.prototypes.state_from_trace` needs: the resized image and, per grouping stage, the soft
assignment, the hard assignment's group index per token, the group centres, the stage's input tokens and,
with NPR, the EM prototypes and their responsibilities. A second run (or a run without images: ``--cache``
alone) renders from the file and never runs the image encoder.

Entry layout (i = 0 .. num_stages-1; float32 unless stated)::

    /viz/<escaped key>  attrs: key, name, grid, num_stages, npr, released_code, hrs_threshold, short_side,
                               max_long, complete=1 (written last)
        image            uint8 [H, W, 3]   the resized image the encoder saw (H = 16·h, W = 16·w)
        soft_i           [S_i, N_i]        softmax-over-groups assignment
        hard_index_i     int64 [N_i]       group of each input token (hard assignment)
        centres_i        [S_i, C]          group centres
        inputs_i         [N_i, C]          stage input tokens
        prototypes_i     [K_i, C]          EM prototypes (NPR only)
        proto_assign_i   [N_i, K_i]        responsibilities of the last E-step (NPR only)

Keys are the SHA-256 of the image file's bytes, the keys ``segment --cache`` uses, so one file can serve both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .prototypes import EncoderTrace, ImageState, StageTrace, state_from_trace

__all__ = ["VIZ_SECTION", "put_trace", "get_trace", "has_trace", "states_from_cache"]

VIZ_SECTION = "viz"


def has_trace(cache: Any, key: str, short_side: int | None = None, max_long: int | None = None) -> bool:
    """Whether ``cache`` holds a trace of ``key``, computed at this resize when the sizes are given."""
    if not cache.has_section(VIZ_SECTION, key):
        return False
    if short_side is None:
        return True
    attrs = cache.section_attrs(VIZ_SECTION, key)
    return int(attrs["short_side"]) == int(short_side) and int(attrs["max_long"]) == int(max_long)


def put_trace(
    cache: Any, key: str, name: str, image: np.ndarray, trace: EncoderTrace, short_side: int, max_long: int
) -> None:
    """Store one image's trace (atomically per entry: complete marker last).

    Args:
        cache: a writable :class:`pgseg_core.cache.features.FeatureCache`.
        key: the entry key (image file hash).
        name: display name.
        image: uint8 RGB [H, W, 3], the resized image of the trace.
        trace: from :func:`pgseg_core.viz.prototypes.trace_image`.
        short_side, max_long: the resize the image went through, pixels.
    """
    arrays: dict[str, np.ndarray] = {"image": np.asarray(image, dtype=np.uint8)}
    for i, st in enumerate(trace.stages):
        arrays[f"soft_{i}"] = st.soft.astype(np.float32)
        arrays[f"hard_index_{i}"] = st.hard_index.astype(np.int64)
        arrays[f"centres_{i}"] = st.centres.astype(np.float32)
        arrays[f"inputs_{i}"] = st.inputs.astype(np.float32)
        if trace.npr:
            arrays[f"prototypes_{i}"] = st.prototypes.astype(np.float32)
            arrays[f"proto_assign_{i}"] = st.proto_assign.astype(np.float32)
    attrs = {
        "name": name,
        "grid": list(trace.grid),
        "num_stages": len(trace.stages),
        "npr": int(trace.npr),
        "released_code": int(trace.released_code),
        "hrs_threshold": float(trace.hrs_threshold),
        "short_side": int(short_side),
        "max_long": int(max_long),
    }
    cache.put_section(VIZ_SECTION, key, arrays, attrs)


def get_trace(cache: Any, key: str) -> tuple[str, np.ndarray, EncoderTrace]:
    """``(name, image uint8 [H, W, 3], trace)`` of one cached entry.

    Raises:
        KeyError: no complete entry for ``key``.
    """
    arrays, attrs = cache.get_section(VIZ_SECTION, key)
    npr = bool(int(attrs["npr"]))
    stages = []
    for i in range(int(attrs["num_stages"])):
        stages.append(
            StageTrace(
                soft=arrays[f"soft_{i}"],
                hard_index=arrays[f"hard_index_{i}"],
                centres=arrays[f"centres_{i}"],
                inputs=arrays[f"inputs_{i}"],
                prototypes=arrays[f"prototypes_{i}"] if npr else None,
                proto_assign=arrays[f"proto_assign_{i}"] if npr else None,
            )
        )
    grid = tuple(int(v) for v in np.asarray(attrs["grid"]).reshape(-1)[:2])
    trace = EncoderTrace(
        grid=grid,
        stages=stages,
        npr=npr,
        released_code=bool(int(attrs["released_code"])),
        hrs_threshold=float(attrs["hrs_threshold"]),
    )
    return str(attrs["name"]), arrays["image"], trace


def states_from_cache(cache: Any, keys: Iterable[str]) -> Iterator[ImageState]:
    """:class:`ImageState` of each cached key, in order, without a model."""
    for key in keys:
        name, image, trace = get_trace(cache, key)
        yield state_from_trace(trace, name, image)
