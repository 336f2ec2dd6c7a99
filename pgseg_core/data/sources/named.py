"""``--data`` specs -> training sources: shard paths, named datasets and weighted mixtures.

``data.train`` is a shard spec (a folder with ``index.json``, an ``index.json``, a brace pattern, a glob, a
URL: :func:`pgseg_core.data.shards.resolve_shards`) or dataset names joined by ``+`` with optional weights,
``cc3m+cc12m+redcaps`` or ``cc12m:2+redcaps:1`` (docs/WEB_DATA.md §2-3). Each name resolves through
:mod:`.registry` to its folder's ``index.json`` (written by ``pgseg prep-shards --index``), or to the
img2dataset tars whose ``NNNNN_stats.json`` exists (img2dataset writes it after the tar is closed, so a tar
without it is unfinished and left out), or to the entry's ``shards`` pattern.

Mixture weights: without any ``:w``, each source is drawn in proportion to its sample count (the same
as concatenating the datasets; equal weights if a count is unknown); with weights, a name without one
gets weight 1.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError
from ..shards import INDEX_NAME, expand_braces, read_index, resolve_shards
from .registry import ROOT_ENV, DatasetEntry, configured_datasets

__all__ = ["TrainSource", "resolve_train_sources", "is_dataset_spec", "img2dataset_shards"]

log = logging.getLogger("pgseg.data.named")

_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]*(?::[0-9]*\.?[0-9]+)?"
_SPEC = re.compile(rf"{_PART}(?:\+{_PART})*")


@dataclass(frozen=True)
class TrainSource:
    """One stream of training shards.

    Attributes:
        name: the dataset name (or the shard spec as given).
        urls: tar paths / URLs.
        weight: sampling weight among the sources (> 0; normalised by the loader).
        count: samples, when an index or the img2dataset stats tell (None otherwise).
        where: the folder or pattern it came from (for messages).
    """

    name: str
    urls: list[str]
    weight: float
    count: int | None
    where: str


def is_dataset_spec(spec: str) -> bool:
    """Whether ``spec`` reads as dataset names (``cc12m``, ``cc12m:2+redcaps``) rather than a path: it
    matches the name syntax and no file or folder of that name exists."""
    s = str(spec).strip()
    if s.endswith((".tar", ".json")) or not _SPEC.fullmatch(s):
        return False
    return not Path(s).expanduser().exists()


def img2dataset_shards(folder: Path) -> tuple[list[str], int, list[str]]:
    """The finished img2dataset tars of ``folder``: (tar paths, samples written per their stats, unfinished
    tar names). A tar is finished when its ``NNNNN_stats.json`` exists; ``successes`` is its sample count."""
    tars, unfinished, count = [], [], 0
    for tar in sorted(folder.glob("*.tar")):
        stats = tar.with_name(tar.stem + "_stats.json")
        if not stats.is_file():
            unfinished.append(tar.name)
            continue
        try:
            count += int(json.loads(stats.read_text(encoding="utf-8")).get("successes", 0))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise DataError(f"cannot read img2dataset stats {stats}: {e}; re-run the download") from e
        tars.append(str(tar))
    return tars, count, unfinished


def _configured_line(entries: dict[str, DatasetEntry], root: Path) -> str:
    names = ", ".join(sorted(entries))
    return f"configured: {names}; names resolve to <root>/NAME, root {root} (${ROOT_ENV} or datasets.toml)"


def _parse_mixture(spec: str) -> list[tuple[str, float | None]]:
    parts = []
    for part in spec.split("+"):
        name, _, w = part.partition(":")
        weight = float(w) if w else None
        if weight is not None and weight <= 0:
            raise DataError(f"mixture weight of '{name}' must be > 0, got {w}")
        parts.append((name, weight))
    return parts


def _from_folder(entry: DatasetEntry, folder: Path, entries, root) -> tuple[list[str], int | None]:
    if (folder / INDEX_NAME).is_file():
        count = int(read_index(folder)["splits"].get("train", {}).get("count", 0))
        return resolve_shards(folder, "train"), count
    tars, count, unfinished = img2dataset_shards(folder) if folder.is_dir() else ([], 0, [])
    if unfinished:
        log.warning(
            "%s: %d tar(s) without their _stats.json (an unfinished download) left out, e.g. %s",
            entry.name,
            len(unfinished),
            unfinished[0],
        )
    if not tars:
        hint = f"pgseg prep-shards --source {entry.name} --urls {entry.url_file or 'LIST'} --out {folder}"
        raise DataError(
            f"dataset '{entry.name}': no shards in {folder} (looked for {INDEX_NAME} and finished "
            f"img2dataset tars NNNNN.tar + NNNNN_stats.json): download it with `{hint}`; "
            + _configured_line(entries, root)
        )
    log.info("%s: %d img2dataset tars, %d samples (run `pgseg prep-shards --index %s` to index)",
             entry.name, len(tars), count, folder)  # fmt: skip
    return tars, count


def _resolve_entry(entry: DatasetEntry, entries, root: Path) -> TrainSource:
    base = entry.path or str(root / entry.name)
    if entry.shards:
        pattern = entry.shards if "://" in entry.shards or entry.shards.startswith(("/", "pipe:")) else (
            f"{base.rstrip('/')}/{entry.shards}"
        )  # fmt: skip
        is_url = "://" in pattern or pattern.startswith("pipe:")
        urls = expand_braces(pattern) if is_url else resolve_shards(pattern, "train")
        count, where = entry.samples, pattern
    elif "://" in base:
        raise DataError(f"dataset '{entry.name}': a URL path needs a shards pattern in datasets.toml")
    else:
        urls, count = _from_folder(entry, Path(base).expanduser(), entries, root)
        where = base
    if entry.samples is not None and count is not None and count != entry.samples:
        raise DataError(
            f"dataset '{entry.name}': {where} holds {count} samples but {entry.origin} says {entry.samples}: "
            f"re-index with `pgseg prep-shards --index {where}` or fix samples in {entry.origin}"
        )
    return TrainSource(entry.name, urls, 1.0, count, where)


def _weights(sources: list[TrainSource], weights: list[float | None]) -> list[float]:
    if all(w is None for w in weights):
        counts = [s.count for s in sources]
        if len(sources) > 1 and all(c for c in counts):
            return [float(c) for c in counts]  # type: ignore[arg-type]
        return [1.0] * len(sources)
    return [1.0 if w is None else w for w in weights]


def resolve_train_sources(spec: str, datasets_file: str | None = None) -> list[TrainSource]:
    """Resolve ``data.train`` into the training sources (module docstring).

    Args:
        spec: a shard spec or ``NAME[:W](+NAME[:W])*``.
        datasets_file: an optional ``datasets.toml`` (:mod:`.registry`).

    Returns:
        One :class:`TrainSource` per mixture member (one for a shard spec), with the sampling weights.

    Raises:
        DataError: an unknown name, a dataset without shards, or a sample count that differs from the
            configured one; each in one line naming what is configured and where it looked.
        ConfigError: a bad ``datasets_file``.
    """
    s = str(spec).strip()
    if not is_dataset_spec(s):
        urls = resolve_shards(s, "train")
        count = None
        p = Path(s).expanduser()
        idx = p / INDEX_NAME if p.is_dir() else p if p.suffix == ".json" else None
        if idx is not None and idx.is_file():
            count = int(read_index(idx)["splits"]["train"]["count"])
        return [TrainSource(s, urls, 1.0, count, s)]
    entries, root = configured_datasets(datasets_file)
    parts = _parse_mixture(s)
    sources = []
    for name, _ in parts:
        if name not in entries:
            close = difflib.get_close_matches(name, list(entries), n=1, cutoff=0.6)
            mean = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataError(
                f"unknown dataset '{name}'{mean} and no file or folder of that name; "
                f"{_configured_line(entries, root)}"
            )
        sources.append(_resolve_entry(entries[name], entries, root))
    weights = _weights(sources, [w for _, w in parts])
    return [TrainSource(src.name, src.urls, w, src.count, src.where) for src, w in zip(sources, weights)]
