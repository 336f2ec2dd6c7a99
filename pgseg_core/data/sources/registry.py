"""Named web-scale datasets: the built-in table, ``datasets.toml`` and the data root.

A name such as ``cc12m`` means the folder ``$PGSEG_DATA_ROOT/cc12m/`` (default ``~/.cache/pgseg/data``)
holding webdataset shards as img2dataset writes them (``00000.tar`` with ``KEY.jpg`` / ``KEY.txt`` /
``KEY.json``, plus ``00000_stats.json``), or a pgseg shard set. A ``datasets.toml`` file names more datasets
or moves the built-in ones (docs/WEB_DATA.md §2)::

    root = "/data/web"                      # optional: replaces $PGSEG_DATA_ROOT
    [datasets.cc12m]
    path = "/mnt/fast/cc12m"                # a folder (index.json or img2dataset shards)
    samples = 10968254                      # optional: the count the index must hold
    [datasets.laion-sub]
    shards = "s3://bucket/laion/{00000..00099}.tar"   # a pattern: local, file://, pipe: or fsspec URL
    samples = 1000000

The published sizes below are the rows of each dataset's URL list (what a download starts from); expect
10-30 % of the URLs to be dead today. ``groupvit_samples`` is the count in GroupViT's released data
configs (what its authors downloaded).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError

__all__ = ["DatasetEntry", "BUILTIN", "data_root", "load_datasets_file", "configured_datasets"]

DEFAULT_ROOT = "~/.cache/pgseg/data"
ROOT_ENV = "PGSEG_DATA_ROOT"


@dataclass(frozen=True)
class DatasetEntry:
    """One named dataset.

    Attributes:
        name: the name used with ``--data``.
        path: its folder ("" = ``<data root>/<name>``).
        shards: a shard pattern relative to ``path`` or a full URL pattern ("" = the folder's index or
            its img2dataset tars).
        samples: the sample count the index must hold (None: not checked).
        published: rows of the published URL list (None: no public list).
        url_file: the published URL-list file name.
        file_format: ``tsv``, ``csv``, ``parquet`` or ``redcaps-json`` (the annotation JSONs).
        columns: the list's columns in file order when it has no header row, else ().
        url_col / caption_col: the columns img2dataset reads.
        groupvit_samples: the count in GroupViT's data config (None: not used by GroupViT).
        origin: "built-in" or the ``datasets.toml`` that set it.
    """

    name: str
    path: str = ""
    shards: str = ""
    samples: int | None = None
    published: int | None = None
    url_file: str = ""
    file_format: str = ""
    columns: tuple[str, ...] = ()
    url_col: str = "url"
    caption_col: str = "caption"
    groupvit_samples: int | None = None
    origin: str = "built-in"

    @property
    def has_header(self) -> bool:
        """Whether the URL list starts with a header row (a list without one has ``columns``)."""
        return not self.columns


BUILTIN: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        # Sharma et al. 2018, Conceptual Captions: Train_GCC-training.tsv, no header, "caption<TAB>url"
        DatasetEntry("cc3m", published=3_318_333, url_file="Train_GCC-training.tsv", file_format="tsv",
                     columns=("caption", "url"), groupvit_samples=2_891_445),
        # Changpinyo et al. 2021, Conceptual 12M: cc12m.tsv, no header, "url<TAB>caption"
        DatasetEntry("cc12m", published=12_423_374, url_file="cc12m.tsv", file_format="tsv",
                     columns=("url", "caption"), groupvit_samples=11_156_203),
        # Desai et al. 2021, RedCaps: redcaps_v1.0_annotations.zip, one JSON per subreddit with
        # {"annotations": [{"url", "caption", "image_id", "subreddit", ...}]}
        DatasetEntry("redcaps", published=12_011_111, url_file="redcaps_v1.0_annotations.zip",
                     file_format="redcaps-json"),
        # GroupViT's YFCC14M: CLIP's YFCC100M subset joined with the YFCC100M metadata (no public URL list
        # with captions; build a tsv/parquet with url and caption columns and pass --url-col/--caption-col)
        DatasetEntry("yfcc14m", published=14_615_499, groupvit_samples=14_615_499),
        # COCO 2017 train captions as a URL list (img2dataset's mscoco example): parquet, columns URL, TEXT
        DatasetEntry("coco-captions", published=591_753, url_file="mscoco.parquet", file_format="parquet",
                     url_col="URL", caption_col="TEXT"),
    )
}  # fmt: skip


def data_root(datasets_file_root: str | None = None) -> Path:
    """The folder named datasets live in: ``root`` of ``datasets.toml``, else ``$PGSEG_DATA_ROOT``, else
    ``~/.cache/pgseg/data``."""
    raw = datasets_file_root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(raw).expanduser()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"datasets file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read datasets file {path}: {e}") from None


_KEYS = {"path": str, "shards": str, "samples": int, "url_col": str, "caption_col": str}


def _entry_from_toml(name: str, table: Any, base: DatasetEntry | None, where: Path) -> DatasetEntry:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [datasets.{name}] must be a table with path / shards / samples")
    changes: dict[str, Any] = {"origin": str(where)}
    for key, value in table.items():
        tp = _KEYS.get(key)
        if tp is None:
            raise ConfigError(f"{where}: unknown key '{key}' in [datasets.{name}]; known: {', '.join(_KEYS)}")
        if not isinstance(value, tp) or isinstance(value, bool):
            raise ConfigError(f"{where}: datasets.{name}.{key} must be a {tp.__name__}, got {value!r}")
        if key == "path":
            value = str((where.parent / Path(value).expanduser()) if "://" not in value else value)
        changes[key] = value
    if changes.get("samples") is not None and changes["samples"] < 0:
        raise ConfigError(f"{where}: datasets.{name}.samples must be >= 0")
    return dataclasses.replace(base or DatasetEntry(name), **changes)


def load_datasets_file(path: str | Path) -> tuple[dict[str, DatasetEntry], str | None]:
    """Read a ``datasets.toml`` (module docstring).

    Args:
        path: the TOML file.

    Returns:
        ``(entries, root)``: the named entries (built-in names updated, new names added) and the file's
        ``root`` (None when absent). Relative paths are taken from the file's folder.

    Raises:
        ConfigError: the file is missing, not TOML, or holds an unknown key or a value of the wrong type.
    """
    where = Path(path).expanduser()
    doc = _read_toml(where)
    unknown = sorted(set(doc) - {"root", "datasets"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; use root, [datasets.NAME]")
    root = doc.get("root")
    if root is not None and not isinstance(root, str):
        raise ConfigError(f"{where}: root must be a folder path string")
    tables = doc.get("datasets", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: 'datasets' must be tables [datasets.NAME]")
    entries = {n: _entry_from_toml(n, t, BUILTIN.get(n), where) for n, t in tables.items()}
    if root is not None:
        root = str(where.parent / Path(root).expanduser())
    return entries, root


def configured_datasets(datasets_file: str | Path | None = None) -> tuple[dict[str, DatasetEntry], Path]:
    """Every dataset name that resolves (built-ins plus ``datasets_file``) and the data root."""
    entries = dict(BUILTIN)
    root = None
    if datasets_file:
        extra, root = load_datasets_file(datasets_file)
        entries.update(extra)
    return entries, data_root(root)
