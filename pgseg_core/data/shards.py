"""WebDataset shard writing, ``index.json`` (schema 1) and the folder-of-captioned-images source.

A shard directory holds ``<split>-%06d.tar`` files plus one ``index.json`` (docs/ARCHITECTURE.md,
"Shards"). Shards and the index are written to a temporary name and renamed into place, so a directory
whose ``index.json`` exists is complete. Only the public webdataset API is used (``wds.TarWriter``).
"""

from __future__ import annotations

import csv
import glob as _glob
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..version import __version__

log = logging.getLogger("pgseg.data.shards")

INDEX_NAME = "index.json"
SCHEMA = 1
KIND = "pgseg-shards"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_FORMATS = (".tsv", ".csv", ".jsonl")
_TAR_MTIME = 1_704_067_200.0  # fixed member timestamp (2024-01-01) so identical inputs give identical bytes
_SHARD_RE = r"-(\d{6})\.tar$"

Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------------------
# writing


class SplitWriter:
    """Write the samples of one split into ``<split>-%06d.tar`` shards of at most ``shard_size`` samples.

    Each shard is written as ``<name>.tmp`` and renamed when full, so readers never see a partial tar.
    On :meth:`close`, stale ``<split>-NNNNNN.tar`` files left in ``out_dir`` by an earlier, larger build
    are deleted. Use as a context manager; on an exception the unfinished shard is removed.

    Args:
        out_dir: shard directory (created if missing).
        split: split name, also the shard file prefix ("train", "val-caption", ...).
        shard_size: samples per shard (>= 1).
    """

    def __init__(self, out_dir: str | Path, split: str, shard_size: int = 1000):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
            raise ValueError(f"split name {split!r} must be letters, digits, '-' or '_'")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.shard_size = int(shard_size)
        self.count = 0
        self.shards: list[str] = []
        self._tar: Any = None
        self._file: Any = None
        self._in_shard = 0

    def _open(self) -> None:
        import webdataset as wds

        name = f"{self.split}-{len(self.shards):06d}.tar"
        self._file = open(self.out_dir / (name + ".tmp"), "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=_TAR_MTIME)
        self._name = name
        self._in_shard = 0

    def _finish(self) -> None:
        self._tar.close()
        self._file.close()
        os.replace(self.out_dir / (self._name + ".tmp"), self.out_dir / self._name)
        self.shards.append(self._name)
        self._tar = self._file = None

    def write(self, sample: dict[str, Any]) -> None:
        """Add one sample.

        Args:
            sample: ``{"__key__": str, ext: bytes | str | dict}``; dicts are stored as JSON (sorted keys),
                strings as UTF-8. Keys must not contain dots.
        """
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"sample key must be a non-empty string without dots, got {key!r}")
        out: dict[str, Any] = {"__key__": key}
        for ext, value in sample.items():
            if ext == "__key__":
                continue
            if isinstance(value, dict | list):
                value = json.dumps(value, sort_keys=True, ensure_ascii=False)
            if isinstance(value, str):
                value = value.encode("utf-8")
            out[ext] = bytes(value)
        if self._tar is None:
            self._open()
        self._tar.write(out)
        self._in_shard += 1
        self.count += 1
        if self._in_shard >= self.shard_size:
            self._finish()

    def close(self) -> list[str]:
        """Finish the last shard, delete stale shards of this split, and return the shard file names."""
        if self._tar is not None:
            self._finish()
        keep = set(self.shards)
        for p in self.out_dir.glob(f"{self.split}-*.tar"):
            if re.fullmatch(re.escape(self.split) + _SHARD_RE, p.name) and p.name not in keep:
                log.info("removing stale shard %s", p)
                p.unlink()
        return list(self.shards)

    def abort(self) -> None:
        """Drop the unfinished shard (already finished shards stay)."""
        if self._tar is not None:
            try:
                self._tar.close()
                self._file.close()
            finally:
                (self.out_dir / (self._name + ".tmp")).unlink(missing_ok=True)
                self._tar = self._file = None

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


def new_index(
    splits: dict[str, dict[str, Any]],
    *,
    seed: int | None = None,
    vocabulary: dict[str, list[str]] | None = None,
    sources: list[dict[str, Any]] | None = None,
    skipped: dict[str, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble an ``index.json`` dict (schema 1; see docs/ARCHITECTURE.md).

    Args:
        splits: ``{split: {"shards": [file names], "count": n, ...}}``.
        seed: generator seed, or None for data that was not generated.
        vocabulary: ``{"caption": [...], "heldout": [...]}``.
        sources: ``[{"name", "licence", "items", ...}]``.
        skipped: counters of inputs that were left out.
        **extra: additional top-level keys.

    Returns:
        The index dict.
    """
    index: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": KIND,
        "created_by": f"pgseg {__version__}",
        "seed": seed,
        "splits": splits,
        "vocabulary": vocabulary or {"caption": [], "heldout": []},
        "sources": sources or [],
        "skipped": skipped or {},
    }
    index.update(extra)
    return index


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_index(out_dir: str | Path, index: dict[str, Any]) -> Path:
    """Write ``<out_dir>/index.json`` atomically and return its path."""
    return write_json_atomic(Path(out_dir) / INDEX_NAME, index)


# ----------------------------------------------------------------------------------------------------------
# reading


def read_index(path_or_dir: str | Path) -> dict[str, Any]:
    """Load and validate an ``index.json``.

    Args:
        path_or_dir: the index file, or the shard directory holding it.

    Returns:
        The index dict (schema 1).

    Raises:
        DataError: the index is missing, not JSON, of another schema/kind, or its ``splits`` are malformed.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.is_file():
        raise DataError(
            f"no shard index at {path}: build shards with `pgseg demo-data` or `pgseg prep-shards` first"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read shard index {path}: {e}; rebuild the shards") from e
    if not isinstance(index, dict) or index.get("kind") != KIND:
        raise DataError(f'{path} is not a pgseg shard index (expected "kind": "{KIND}")')
    schema = index.get("schema")
    if schema != SCHEMA:
        raise DataError(
            f"{path} has shard-index schema {schema!r} but this pgseg reads schema {SCHEMA}; "
            "rebuild the shards with this version"
        )
    splits = index.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DataError(f'{path}: "splits" must be a non-empty mapping; rebuild the shards')
    for name, entry in splits.items():
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("shards"), list)
            and all(isinstance(s, str) for s in entry["shards"])
            and isinstance(entry.get("count"), int)
            and entry["count"] >= 0
        )
        if not ok:
            raise DataError(
                f'{path}: split \'{name}\' needs "shards" (list of file names) and "count" (int); '
                "rebuild the shards"
            )
    return index


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000000..000003}`` numeric ranges and ``{a,b}`` alternatives (nested left to right).

    Args:
        pattern: e.g. ``"dir/train-{000000..000003}.tar"``.

    Returns:
        The expanded strings in order (the pattern itself if it has no braces).

    Raises:
        DataError: a malformed range such as ``{5..x}``.
    """
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif ".." in body:
        raise DataError(f"malformed brace range '{{{body}}}' in '{pattern}': use e.g. {{000000..000003}}")
    else:
        options = body.split(",")
    return [s for opt in options for s in expand_braces(head + opt + tail)]


def _shards_from_index(index_path: Path, split: str) -> list[str]:
    index = read_index(index_path)
    splits = index["splits"]
    if split not in splits:
        raise DataError(
            f"split '{split}' is not in {index_path}; available splits: {', '.join(sorted(splits))}"
        )
    root = index_path.parent
    paths = [str(root / name) for name in splits[split]["shards"]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DataError(
            f"{index_path} lists {len(missing)} missing shard(s), e.g. {missing[0]}; rebuild the shards"
        )
    if not paths:
        raise DataError(f"split '{split}' in {index_path} has no shards; rebuild with more samples")
    return paths


def resolve_shards(spec: str | Path, split: str = "train") -> list[str]:
    """Turn a shard specification into a list of tar paths.

    Args:
        spec: a directory with ``index.json`` (or with ``<split>-*.tar`` files), an ``index.json`` path,
            a brace pattern ``"dir/train-{000000..000003}.tar"``, a glob ``"dir/train-*.tar"``, a single
            ``.tar`` file, or a URL (``http://...``, ``pipe:...``; expanded but not checked).
        split: the split to take from an index or directory ("train", "val-caption", "val-heldout").

    Returns:
        Shard paths/URLs in a stable order.

    Raises:
        DataError: nothing found, shards listed but missing, or the split is absent (lists the splits).
    """
    s = str(spec).strip()
    if not s:
        raise DataError("no shards given: pass a shard directory, index.json, brace pattern or glob")
    if "://" in s or s.startswith("pipe:"):
        return expand_braces(s)
    p = Path(s).expanduser()
    if p.is_dir():
        if (p / INDEX_NAME).is_file():
            return _shards_from_index(p / INDEX_NAME, split)
        found = sorted(str(f) for f in p.glob(f"{split}-*.tar"))
        if found:
            return found
        raise DataError(
            f"{p} has no {INDEX_NAME} and no {split}-*.tar shards; build them with `pgseg demo-data` "
            "or `pgseg prep-shards`"
        )
    if p.suffix == ".json":
        if not p.is_file():
            raise DataError(f"shard index {p} not found")
        return _shards_from_index(p, split)
    if "{" in s:
        paths = expand_braces(str(p))
        missing = [q for q in paths if not os.path.exists(q)]
        if missing:
            raise DataError(f"shard pattern '{s}' names {len(missing)} missing file(s), e.g. {missing[0]}")
        return paths
    if any(c in s for c in "*?["):
        found = sorted(_glob.glob(str(p)))
        if not found:
            raise DataError(f"no shards match '{s}'")
        return found
    if p.is_file():
        return [str(p)]
    raise DataError(
        f"no shards at '{s}': expected a directory with {INDEX_NAME}, an {INDEX_NAME} file, a brace "
        "pattern like dir/train-{000000..000003}.tar, or a glob"
    )


# ----------------------------------------------------------------------------------------------------------
# folder of captioned images


_IMAGE_COLS = ("image", "file", "filename", "path", "image_path", "img", "url")
_TEXT_COLS = ("caption", "text", "captions", "title")


def _norm_rel(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def _read_caption_table(path: Path) -> list[tuple[str, str]]:
    """Rows ``(image name, caption)`` of a captions.tsv / .csv / .jsonl file."""
    suffix = path.suffix.lower()
    if suffix not in CAPTION_FORMATS:
        raise DataError(
            f"unsupported caption file {path}: use captions.tsv, captions.csv or captions.jsonl "
            "(or <stem>.txt files next to the images)"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read caption file {path}: {e}") from e
    rows: list[tuple[str, str]] = []
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            obj = obj if isinstance(obj, dict) else {}
            image = next((obj[k] for k in ("image", "file", "path") if k in obj), None)
            caption = next((obj[k] for k in ("caption", "text") if k in obj), None)
            if not isinstance(image, str) or not isinstance(caption, str):
                raise DataError(
                    f'{path}:{n}: each line needs "image" (or "file"/"path") and "caption" '
                    '(or "text") strings'
                )
            rows.append((image, caption))
        return rows
    reader = csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
    for n, row in enumerate(reader, 1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2:
            raise DataError(f"{path}:{n}: expected two columns (image, caption), got {len(row)}")
        if n == 1 and (row[0].strip().lower() in _IMAGE_COLS or row[1].strip().lower() in _TEXT_COLS):
            continue  # header
        sep = "\t" if suffix == ".tsv" else ","
        caption = sep.join(row[1:])  # an unquoted separator inside the caption splits it; rejoin
        rows.append((row[0], caption))
    return rows


def _list_images(image_dir: Path, exclude: Path | None) -> list[Path]:
    out = []
    for p in image_dir.rglob("*"):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        if exclude is not None and exclude in p.resolve().parents:
            continue
        out.append(p)
    return sorted(out, key=lambda q: q.relative_to(image_dir).as_posix())


def _clean_caption(text: str) -> str:
    return " ".join(text.split())


def collect_captioned_images(
    image_dir: str | Path, captions: str | Path | None = None, *, exclude: Path | None = None
) -> tuple[list[tuple[Path, str]], dict[str, int]]:
    """Pair the images of a folder with their captions.

    Captions come from ``captions`` if given, else from ``captions.tsv`` / ``captions.csv`` /
    ``captions.jsonl`` inside ``image_dir`` if present, else from ``<stem>.txt`` sidecar files.
    Caption-file entries are matched by path relative to ``image_dir``, then by file name.

    Args:
        image_dir: folder searched recursively for images.
        captions: optional caption file.
        exclude: a folder (resolved path) whose images are ignored, e.g. the output directory.

    Returns:
        ``([(image path, caption)], {"no_caption": n, "missing_image": m})``.

    Raises:
        DataError: the folder is missing or has no images, or the caption file is unreadable/unsupported.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} not found")
    images = _list_images(image_dir, exclude)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {image_dir}")
    counts = {"no_caption": 0, "missing_image": 0}
    if captions is None:
        for name in ("captions.tsv", "captions.csv", "captions.jsonl"):
            if (image_dir / name).is_file():
                captions = image_dir / name
                break
    pairs: list[tuple[Path, str]] = []
    if captions is None:
        for img in images:
            side = img.with_suffix(".txt")
            text = ""
            if side.is_file():
                try:
                    text = _clean_caption(side.read_text(encoding="utf-8-sig"))
                except (OSError, UnicodeDecodeError) as e:
                    log.warning("cannot read caption %s: %s", side, e)
            if text:
                pairs.append((img, text))
            else:
                counts["no_caption"] += 1
        return pairs, counts

    captions = Path(captions)
    if not captions.is_file():
        raise DataError(f"caption file {captions} not found")
    rows = _read_caption_table(captions)
    by_rel = {p.relative_to(image_dir).as_posix(): p for p in images}
    by_name: dict[str, list[Path]] = {}
    for p in images:
        by_name.setdefault(p.name, []).append(p)
    assigned: dict[Path, str] = {}
    for name, caption in rows:
        rel = _norm_rel(name)
        path = by_rel.get(rel)
        if path is None and os.path.isabs(rel):
            try:
                path = by_rel.get(Path(rel).resolve().relative_to(image_dir.resolve()).as_posix())
            except ValueError:
                path = None
        if path is None and len(by_name.get(Path(rel).name, [])) == 1:
            path = by_name[Path(rel).name][0]
        text = _clean_caption(caption)
        if path is None or not text:
            counts["missing_image" if path is None else "no_caption"] += 1
            continue
        assigned[path] = text
    counts["no_caption"] += sum(1 for p in images if p not in assigned)
    pairs = [(p, assigned[p]) for p in images if p in assigned]
    return pairs, counts


def write_folder_shards(
    image_dir: str | Path,
    out_dir: str | Path,
    *,
    captions: str | Path | None = None,
    shard_size: int = 1000,
    progress: Progress | None = None,
    jpeg_quality: int = 95,
    max_side: int | None = None,
) -> dict[str, Any]:
    """Convert a folder of captioned images into ``train-%06d.tar`` shards plus ``index.json``.

    Each sample is img2dataset-style: ``jpg`` (the image re-encoded as RGB JPEG), ``txt`` (caption) and
    ``json`` ``{"key", "caption", "width", "height", "original_path"}``. Images that cannot be decoded
    are skipped and counted, never fatal.

    Args:
        image_dir: folder of images (searched recursively).
        out_dir: shard directory to write (created; stale ``train-*.tar`` shards are removed).
        captions: caption file (.tsv/.csv/.jsonl with columns image, caption; a header row is allowed);
            None = ``captions.{tsv,csv,jsonl}`` in ``image_dir`` or ``<stem>.txt`` sidecars.
        shard_size: samples per tar.
        progress: called as ``progress(done, total)`` after each image.
        jpeg_quality: JPEG quality 1..95 of the re-encoded images.
        max_side: if set, downscale images whose longer side exceeds this many pixels.

    Returns:
        Summary ``{"out_dir", "index", "count", "shards", "skipped": {...}, "seconds"}``.

    Raises:
        DataError: missing folder, no images, an unsupported/unreadable caption file, or no image could
            be written.
    """
    from PIL import Image

    from .transforms import load_image_rgb

    t0 = time.perf_counter()
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    pairs, skipped = collect_captioned_images(image_dir, captions, exclude=out_dir.resolve())
    skipped = {"unreadable": 0, **skipped}
    total = len(pairs)
    if total == 0:
        raise DataError(
            f"none of the images under {image_dir} has a caption: add <stem>.txt files or a "
            "captions.tsv / captions.csv / captions.jsonl"
        )
    with SplitWriter(out_dir, "train", shard_size) as writer:
        for i, (path, caption) in enumerate(pairs):
            try:
                img = load_image_rgb(path)
            except DataError as e:
                skipped["unreadable"] += 1
                if skipped["unreadable"] <= 10:
                    log.warning("skipping %s", e)
                if progress is not None:
                    progress(i + 1, total)
                continue
            if max_side is not None and max(img.size) > max_side:
                img.thumbnail((max_side, max_side), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(jpeg_quality))
            key = f"{writer.count:09d}"
            writer.write(
                {
                    "__key__": key,
                    "jpg": buf.getvalue(),
                    "txt": caption,
                    "json": {
                        "key": key,
                        "caption": caption,
                        "width": img.width,
                        "height": img.height,
                        "original_path": path.relative_to(image_dir).as_posix(),
                    },
                }
            )
            if progress is not None:
                progress(i + 1, total)
        shards = writer.close()
        count = writer.count
    if skipped["unreadable"] > 10:
        log.warning("skipped %d unreadable images in total", skipped["unreadable"])
    if count == 0:
        raise DataError(f"no image under {image_dir} could be decoded ({skipped['unreadable']} unreadable)")
    index = new_index(
        {"train": {"shards": shards, "count": count}},
        sources=[{"name": "folder", "path": str(image_dir), "licence": "user-provided", "items": count}],
        skipped=skipped,
        generator="folder",
    )
    index_path = write_index(out_dir, index)
    return {
        "out_dir": str(out_dir),
        "index": str(index_path),
        "count": count,
        "shards": shards,
        "skipped": skipped,
        "seconds": time.perf_counter() - t0,
    }
