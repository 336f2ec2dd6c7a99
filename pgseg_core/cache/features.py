"""HDF5 cache of the class-independent image features of inference (docs/FEATURE_CACHE.md).

Inference splits into an expensive, class-independent half (resize, slide windows, image encoder:
:func:`pgseg_core.inference.extract_image_features`) and a cheap, class-dependent half (the
scoring rule: :func:`~pgseg_core.inference.scores_from_features`). This cache stores the first
half per image, so a re-run with another bg_thresh, class list, template set, top-k or rule, and every
point of a threshold sweep, never runs the image encoder again.

Layout (schema 1)::

    /                     attrs: schema=1, kind="pgseg-feature-cache", created_by, checkpoint_sha256,
                                 config_hash, protocol, dataset
    /images/<escaped key> attrs: key (the sample key), orig_size, resized_size, padded_size, grid,
                                 logit_scale, num_stages, group_emb_d_major, complete=1 (written last)
        windows        int32   [W,4]        (y1, y2, x1, x2) in the resized frame, end exclusive
        group_emb      float32 [W,S,D]      L2-normalised final group embeddings
        image_emb      float32 [W,D]        L2-normalised image embeddings
        assign_soft_0  float32 [W,S_0,N_0]  stage-0 soft assignment (N_0 = h·w tokens)
        assign_soft_1  float32 [W,S_1,S_0]  stage-1 soft assignment, ...

Every array is float32 (what inference computes), so scoring cached features gives bit-identical results
to scoring fresh ones. Datasets are chunked one window per chunk and gzip-compressed with the shuffle
filter. The file is flushed after each image; an image whose ``complete`` attribute is missing (the writer
was killed while writing it) is dropped when the cache is reopened, and the run continues from there.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, OutputError
from ..inference import ImageFeatures
from ..utils.io import check_writable_file, output_error
from ..utils.process import deferred_signals

__all__ = [
    "FeatureCache",
    "CacheMeta",
    "feature_config_hash",
    "FEATURE_CACHE_SCHEMA",
    "CLASS_INDEPENDENT_KEYS",
]

_log = logging.getLogger("pgseg.cache.features")

FEATURE_CACHE_SCHEMA = 1
_KIND = "pgseg-feature-cache"
CLASS_INDEPENDENT_KEYS = ("short_side", "max_long", "mode", "crop", "stride")
_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
SPACE_MARGIN = 16 << 20  # bytes an entry leaves free besides its own size: HDF5 metadata, the final flush


def feature_config_hash(model_cfg: Any, eval_cfg: Any) -> str:
    """16-hex-digit hash of what decides the cached features besides the weights.

    Args:
        model_cfg: the model config (dataclass or dict).
        eval_cfg: the eval config (dataclass, dict or namespace); only the class-independent settings
            :data:`CLASS_INDEPENDENT_KEYS` (and ``crop_fit`` when not ``end``) enter the hash, so bg_thresh,
            top_k, templates, rule, logit_scale and prob_thresh may change without invalidating a cache.
    """
    model = asdict(model_cfg) if hasattr(model_cfg, "__dataclass_fields__") else dict(model_cfg)
    get = eval_cfg.get if isinstance(eval_cfg, dict) else lambda k: getattr(eval_cfg, k)
    settings = {k: get(k) for k in CLASS_INDEPENDENT_KEYS}
    crop_fit = (
        eval_cfg.get("crop_fit", "end")
        if isinstance(eval_cfg, dict)
        else getattr(eval_cfg, "crop_fit", "end")
    )
    if crop_fit != "end":  # the encoder input depends on it; "end" keeps the hashes of older caches
        settings["crop_fit"] = crop_fit
    blob = json.dumps({"model": model, "eval": settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class CacheMeta:
    """What a cache was written for; a cache is only reused when all of it matches.

    Attributes:
        checkpoint_sha256: hash of the checkpoint file(s) (:func:`pgseg_core.checkpoint.checkpoint_sha256`).
        config_hash: :func:`feature_config_hash` of the model config and class-independent eval settings.
        protocol: protocol name (``groupvit``, ``sclip``, or ``checkpoint`` for a checkpoint's own settings).
        dataset: dataset name (keys are only unique within a dataset).
    """

    checkpoint_sha256: str
    config_hash: str
    protocol: str
    dataset: str = ""

    def attrs(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def _escape(key: str) -> str:
    return key.replace("%", "%25").replace("/", "%2F")


class FeatureCache:
    """Per-image :class:`~pgseg_core.inference.ImageFeatures` in one HDF5 file.

    Use :meth:`open` (also a context manager)::

        with FeatureCache.open("features.h5", meta) as cache:
            if cache.has(key):
                feats = cache.get(key, device)
            else:
                feats = extract_image_features(model, image, eval_cfg, device)
                cache.put(key, feats)
    """

    def __init__(self, path: Path, handle: Any, meta: CacheMeta | None, writable: bool) -> None:
        self.path = path
        self._f = handle
        self.meta = meta
        self.writable = writable
        self._complete: set[str] = set()
        self._sections: dict[str, set[str]] = {}
        self.dropped = 0
        for top, grp_all in list(self._f.items()):
            if not hasattr(grp_all, "items"):  # a dataset at the top level: not ours, leave it
                continue
            done = self._complete if top == "images" else self._sections.setdefault(top, set())
            incomplete = []
            for name, grp in grp_all.items():
                if int(grp.attrs.get("complete", 0)) == 1:
                    done.add(str(grp.attrs["key"]))
                else:
                    incomplete.append(name)
            if incomplete and writable:
                for name in incomplete:
                    del grp_all[name]
                self._f.flush()
                _log.info(
                    "feature cache %s: dropped %d incomplete %s entr(y/ies), resuming",
                    path,
                    len(incomplete),
                    top,
                )
            self.dropped += len(incomplete)

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        meta: CacheMeta | None = None,
        *,
        readonly: bool = False,
        check: tuple[str, ...] | None = None,
    ) -> "FeatureCache":
        """Open (or create) a cache.

        Args:
            path: the ``.h5`` file.
            meta: what this run computes; an existing file whose attributes differ is refused. None opens
                an existing file read-only without checks (for tools that only read it).
            readonly: open without writing (an existing file is required).
            check: names of the :class:`CacheMeta` attributes an existing file must match (default: all).
                ``visualize-prototypes`` checks only ``checkpoint_sha256``, because its ``viz`` section does
                not depend on the slide settings that enter ``config_hash``.

        Raises:
            DataError: the file is not a readable feature cache, has another schema, or was written for
                another checkpoint, config, protocol or dataset (the message names the attribute and says
                to pass a new path or delete the file); a missing file with ``readonly`` / no ``meta``.
            OutputError: a cache to write whose folder cannot be created or written (a file on the way, no
                permission), an existing file without write permission, or a file another process holds
                open (HDF5's file lock). Raised at open, before any image is encoded.
        """
        import h5py

        path = Path(path)
        readonly = readonly or meta is None
        if readonly and not path.is_file():
            raise DataError(f"feature cache not found: {path}")
        if path.exists() and not path.is_file():
            raise DataError(f"feature cache path {path} is not a file: pass a path ending in .h5")
        existed = path.is_file() and path.stat().st_size > 0
        created = not readonly and not path.exists()
        if not readonly:
            _check_writable(path, 0 if existed else 1 << 20)
        try:
            handle = h5py.File(path, "r" if readonly else "a")
        except OSError as e:
            if created:
                path.unlink(missing_ok=True)  # the empty file this call created
            raise _open_error(path, e) from e
        try:
            if existed or readonly:
                cls._check(handle, path, meta, check)
            else:
                handle.attrs.update(
                    {
                        "schema": FEATURE_CACHE_SCHEMA,
                        "kind": _KIND,
                        "created_by": _created_by(),
                        **(meta.attrs() if meta else {}),
                    }
                )
                handle.require_group("images")
                handle.flush()
        except BaseException:
            handle.close()
            raise
        return cls(path, handle, meta, not readonly)

    @staticmethod
    def _check(handle: Any, path: Path, meta: CacheMeta | None, check: tuple[str, ...] | None = None) -> None:
        if handle.attrs.get("kind") != _KIND:
            raise DataError(f"{path} is not a pgseg feature cache: delete it or use another cache file")
        schema = int(handle.attrs.get("schema", -1))
        if schema != FEATURE_CACHE_SCHEMA:
            raise DataError(
                f"feature cache {path} has schema {schema}, this pgseg reads schema "
                f"{FEATURE_CACHE_SCHEMA}: delete it or use another cache file"
            )
        if meta is None:
            return
        for name, want in meta.attrs().items():
            if check is not None and name not in check:
                continue
            have = str(handle.attrs.get(name, ""))
            if have != want:
                raise DataError(
                    f"feature cache {path} was written for {name} {have or '(none)'!r}, this run has "
                    f"{want!r}: use another cache file or delete this one"
                )

    # ------------------------------------------------------------------------------------------------
    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._f is not None:
            try:
                if self.writable:
                    self._f.flush()
            finally:
                self._f.close()
                self._f = None

    def __len__(self) -> int:
        return len(self._complete)

    def keys(self) -> list[str]:
        """Sample keys of the complete images, sorted."""
        return sorted(self._complete)

    @property
    def attrs(self) -> dict[str, Any]:
        """The file attributes (schema, checkpoint_sha256, config_hash, protocol, dataset, ...)."""
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._handle().attrs.items()}

    def _handle(self) -> Any:
        if self._f is None:
            raise ValueError(f"feature cache {self.path} is closed")
        return self._f

    def has(self, key: str) -> bool:
        """Whether a complete entry for sample ``key`` exists."""
        return str(key) in self._complete

    def get(self, key: str, device: torch.device | str = "cpu") -> ImageFeatures:
        """The cached features of ``key`` (float32 tensors on ``device``).

        Raises:
            KeyError: no complete entry for ``key`` (check :meth:`has` first).
        """
        key = str(key)
        if key not in self._complete:
            raise KeyError(f"no complete entry for {key!r} in {self.path}")
        grp = self._handle()["images"][_escape(key)]
        a = grp.attrs
        n_stages = int(a["num_stages"])

        def tensor(name: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(grp[name][...])).to(device)

        return ImageFeatures(
            orig_size=_pair(a["orig_size"]),
            resized_size=_pair(a["resized_size"]),
            padded_size=_pair(a["padded_size"]),
            grid=_pair(a["grid"]),
            windows=[tuple(int(v) for v in row) for row in np.asarray(grp["windows"][...])],
            group_emb=tensor("group_emb"),
            image_emb=tensor("image_emb"),
            assign_soft=[tensor(f"assign_soft_{i}") for i in range(n_stages)],
            logit_scale=float(a["logit_scale"]),
            group_emb_d_major=bool(int(a.get("group_emb_d_major", 0))),
        )

    def put(self, key: str, feats: ImageFeatures) -> None:
        """Write (or overwrite) the entry of ``key``; the ``complete`` marker is written last, then the
        file is flushed, so a kill leaves at most this one entry incomplete.

        Raises:
            ValueError: the cache was opened read-only.
            OutputError: the disk has no room for the entry (:func:`_check_space`); nothing was written.
        """
        if not self.writable:
            raise ValueError(f"feature cache {self.path} is open read-only")
        key = str(key)
        tensors = {"group_emb": feats.group_emb, "image_emb": feats.image_emb}
        tensors.update({f"assign_soft_{i}": a for i, a in enumerate(feats.assign_soft)})
        arrays = {k: t.detach().to("cpu", torch.float32).contiguous().numpy() for k, t in tensors.items()}
        _check_space(self.path, sum(a.nbytes for a in arrays.values()))
        with deferred_signals():  # a SIGTERM waits for the entry to be whole
            images = self._handle().require_group("images")
            name = _escape(key)
            if name in images:
                del images[name]
                self._complete.discard(key)
            grp = images.create_group(name)
            grp.attrs["key"] = key
            grp.create_dataset("windows", data=np.asarray(feats.windows, dtype=np.int32).reshape(-1, 4))
            for ds_name, arr in arrays.items():
                grp.create_dataset(ds_name, data=arr, chunks=(1, *arr.shape[1:]), **_COMPRESSION)
            grp.attrs.update(
                {
                    "orig_size": list(feats.orig_size),
                    "resized_size": list(feats.resized_size),
                    "padded_size": list(feats.padded_size),
                    "grid": list(feats.grid),
                    "logit_scale": float(feats.logit_scale),
                    "num_stages": len(feats.assign_soft),
                    "group_emb_d_major": int(feats.group_emb_d_major),
                }
            )
            grp.attrs["complete"] = 1
            self._f.flush()
            self._complete.add(key)

    # ------------------------------------------------------------------------------------------------
    # sections: other per-image records keyed like /images (e.g. "viz", pgseg_core.viz.prototype_cache)

    @staticmethod
    def _section_name(section: str) -> str:
        if not section or section == "images" or "/" in section:
            raise ValueError(f"invalid feature-cache section name {section!r}")
        return section

    def section_keys(self, section: str) -> list[str]:
        """Keys with a complete entry in ``section``, sorted."""
        return sorted(self._sections.get(self._section_name(section), ()))

    def has_section(self, section: str, key: str) -> bool:
        """Whether ``section`` holds a complete entry for ``key``."""
        return str(key) in self._sections.get(self._section_name(section), ())

    def section_attrs(self, section: str, key: str) -> dict[str, Any]:
        """The attributes of the ``section`` entry of ``key`` (without reading its arrays).

        Raises:
            KeyError: no complete entry.
        """
        key = str(key)
        if not self.has_section(section, key):
            raise KeyError(f"no complete {section} entry for {key!r} in {self.path}")
        grp = self._handle()[section][_escape(key)]
        return {
            k: (v.item() if isinstance(v, np.generic) else v)
            for k, v in grp.attrs.items()
            if k not in ("key", "complete")
        }

    def get_section(self, section: str, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays and attributes of the ``section`` entry of ``key``.

        Raises:
            KeyError: no complete entry (check :meth:`has_section` first).
        """
        key = str(key)
        if not self.has_section(section, key):
            raise KeyError(f"no complete {section} entry for {key!r} in {self.path}")
        grp = self._handle()[section][_escape(key)]
        return {name: np.asarray(ds[...]) for name, ds in grp.items()}, self.section_attrs(section, key)

    def put_section(
        self, section: str, key: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]
    ) -> None:
        """Write (or overwrite) the ``section`` entry of ``key``: named arrays (gzip-compressed when they
        have more than one dimension) and scalar / list attributes; the ``complete`` marker is written last,
        then the file is flushed.

        Raises:
            ValueError: read-only cache or invalid section name.
            OutputError: the disk has no room for the entry (:func:`_check_space`); nothing was written.
        """
        if not self.writable:
            raise ValueError(f"feature cache {self.path} is open read-only")
        key = str(key)
        _check_space(self.path, sum(np.asarray(a).nbytes for a in arrays.values()))
        with deferred_signals():  # a SIGTERM waits for the entry to be whole
            top = self._handle().require_group(self._section_name(section))
            done = self._sections.setdefault(section, set())
            name = _escape(key)
            if name in top:
                del top[name]
                done.discard(key)
            grp = top.create_group(name)
            grp.attrs["key"] = key
            for ds_name, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                opts = dict(_COMPRESSION) if arr.ndim >= 2 and arr.size > 0 else {}
                grp.create_dataset(ds_name, data=arr, **opts)
            grp.attrs.update(attrs)
            grp.attrs["complete"] = 1
            self._f.flush()
            done.add(key)


def _check_writable(path: Path, nbytes: int) -> None:
    """OutputError naming the cache when it could not be written: its folder (created if missing), the
    existing file, or a disk without room for ``nbytes`` plus :data:`SPACE_MARGIN`."""
    try:
        check_writable_file(path)
    except OutputError as e:
        raise OutputError(f"feature cache {path}: {e}") from e
    if path.is_file() and not os.access(path, os.W_OK):
        raise OutputError(
            f"cannot write feature cache {path}: no permission (use a cache file you can write)"
        )
    if nbytes:
        _check_space(path, nbytes)


def _check_space(path: Path, nbytes: int) -> None:
    """Refuse to write ``nbytes`` (uncompressed) into the cache ``path`` when its disk has less room than
    that plus :data:`SPACE_MARGIN`: HDF5 does not survive a write that fails for a full disk (the process can
    crash at the next flush), so the cache stops short of it, whole, with the images written so far.

    Raises:
        OutputError: too little free space (the message names the cache and the free space).
    """
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < nbytes + SPACE_MARGIN:
        kept = "; the images cached so far are kept" if path.is_file() else ""
        raise OutputError(
            f"cannot write feature cache {path}: the disk is nearly full ({free / 2**20:.1f} MiB free"
            f"{kept}): free space or use a cache file on another disk"
        )


def _open_error(path: Path, e: OSError) -> Exception:
    """The one-line error of an h5py open that failed: another process holds the file, the disk or the
    permissions refuse it (OutputError), or the file is not a readable HDF5 file (DataError)."""
    if "unable to lock file" in str(e):
        return OutputError(
            f"feature cache {path} is open in another process (it holds the file's lock): wait for that run "
            "to end or use another cache file"
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
        return output_error(path, OSError(e.errno, os.strerror(e.errno)), "write the feature cache")
    return DataError(
        f"cannot read feature cache {path} ({e.__class__.__name__}: {str(e).splitlines()[0]}): "
        "delete it or use another cache file"
    )


def _pair(v: Any) -> tuple[int, int]:
    a, b = (int(x) for x in np.asarray(v).reshape(-1)[:2])
    return a, b


def _created_by() -> str:
    from ..version import __version__

    return f"pgseg {__version__}"
