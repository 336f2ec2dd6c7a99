"""Released weights by name: the registry, where each is cached, and fetching it (docs/WEIGHTS.md).

The registry is ``weights.json`` in this package, plus the entries of the JSON file that
``PGSEG_WEIGHTS_REGISTRY`` names (same schema; an entry of the same name replaces the built-in one: a
mirror, a local copy, or weights of your own). Each entry has a ``source``:

* ``"url"``: one file over HTTP(S) (the NVlabs GroupViT releases), checked against its SHA-256 (the
  release file name carries its first 8 hex digits) and cached as ``WEIGHTS_DIR/NAME/FILE``;
* ``"hf"``: a Hugging Face GroupViT repository, cached in the Hub's own cache (``HF_HOME``), at the entry's
  revision or the one named as ``NAME@REVISION``; a folder ``WEIGHTS_DIR/NAME`` holding ``config.json`` and
  weights (put there by hand) is used first;
* ``"gdrive"``: a Google Drive file (PGSeg's release), fetched with gdown, cached as
  ``WEIGHTS_DIR/NAME/FILE``.

``WEIGHTS_DIR`` is ``$PGSEG_CACHE/weights``, else ``$XDG_CACHE_HOME/pgseg/weights``, else
``~/.cache/pgseg/weights``. :func:`fetch_weights` is what :func:`pgseg_core.checkpoint.resolve.resolve` calls
for a name that is not a path, so every command that takes a checkpoint takes a name.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointError, ConfigError
from ..utils.hashing import file_sha256
from .download import download_file
from .hub_fetch import HF_WEIGHT_NAMES, drive_url, fetch_gdrive, fetch_hf, hf_cached_dir

__all__ = ["ReleasedWeights", "WeightsListing", "load_registry", "default_weights_name", "weights_dir",
           "lookup", "cached_path", "fetch_weights", "list_weights", "REGISTRY_ENV"]  # fmt: skip

REGISTRY_ENV = "PGSEG_WEIGHTS_REGISTRY"
SOURCES = ("url", "hf", "gdrive")
_VERIFIED = ".verified"  # WEIGHTS_DIR/NAME/FILE.verified: "SIZE MTIME_NS SHA256" of a checked file


@dataclass(frozen=True)
class ReleasedWeights:
    """One registry entry.

    Attributes:
        name: what ``--checkpoint`` accepts.
        source: ``"url"``, ``"hf"`` or ``"gdrive"``.
        description, licence, homepage: for ``pgseg models`` and docs.
        model: the architecture preset the weights fit (``groupvit-s``, ``pgseg-s``).
        params_m: parameters in millions (the fp32 weights are ``4 * params_m`` MB; a release file that also
            stores optimizer state is larger).
        url: the file (``url``), or a mirror of the Drive file (``gdrive``; default: the Drive link).
        filename: the cached file's name (default: the URL's last part).
        sha256 / sha256_prefix: the expected digest, whole or its first hex digits.
        repo_id, revision: the Hub repository and its default revision (``hf``).
        drive_id: the Google Drive file id (``gdrive``).
    """

    name: str
    source: str
    description: str = ""
    licence: str = ""
    homepage: str = ""
    model: str = ""
    params_m: float = 0.0
    url: str = ""
    filename: str = ""
    sha256: str = ""
    sha256_prefix: str = ""
    repo_id: str = ""
    revision: str = "main"
    drive_id: str = ""

    @property
    def file_name(self) -> str:
        """The cached file's name (``url`` / ``gdrive``)."""
        return self.filename or self.url.rsplit("/", 1)[-1].split("?")[0] or f"{self.name}.pth"

    @property
    def download_url(self) -> str:
        """Where the bytes come from: the file URL, the Drive link, or the Hub repository page."""
        if self.source == "gdrive":
            return self.url or drive_url(self.drive_id)
        if self.source == "hf":
            return self.homepage or f"https://huggingface.co/{self.repo_id}"
        return self.url


def _entries(data: Any, origin: str) -> dict[str, ReleasedWeights]:
    """Registry entries of a parsed JSON document; raises ConfigError naming ``origin`` on bad ones."""
    table = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: a weights registry is a JSON object with a 'weights' object")
    known = {f.name for f in fields(ReleasedWeights)} - {"name"}
    out: dict[str, ReleasedWeights] = {}
    for name, entry in table.items():
        unknown = sorted(set(entry) - known) if isinstance(entry, dict) else ["(not an object)"]
        if unknown or entry.get("source") not in SOURCES:
            raise ConfigError(
                f"{origin}: weights '{name}' has unknown keys {unknown} or a source other than "
                f"{', '.join(SOURCES)} (keys: {', '.join(sorted(known))})"
            )
        out[name] = ReleasedWeights(name=name, **entry)
    return out


def _builtin() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("weights.json").read_text())


def load_registry() -> dict[str, ReleasedWeights]:
    """Every named release: the built-in ones, then the ``PGSEG_WEIGHTS_REGISTRY`` file's.

    Raises:
        ConfigError: the extra registry file is unreadable or malformed.
    """
    reg = _entries(_builtin(), "weights.json")
    extra = os.environ.get(REGISTRY_ENV)
    if extra:
        try:
            data = json.loads(Path(extra).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{REGISTRY_ENV}={extra}: cannot read it as JSON ({e})") from e
        reg.update(_entries(data, extra))
    return reg


def default_weights_name() -> str:
    """The released model ``pgseg segment`` uses without ``--checkpoint``."""
    return str(_builtin()["default"])


def weights_dir() -> Path:
    """Where downloaded weights live (see the module docstring)."""
    if os.environ.get("PGSEG_CACHE"):
        return Path(os.environ["PGSEG_CACHE"]) / "weights"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pgseg" / "weights"


def _entry_dir(entry: ReleasedWeights) -> Path:
    return weights_dir() / re.sub(r"[^A-Za-z0-9._-]+", "--", entry.name)


def lookup(text: str) -> tuple[ReleasedWeights, str] | None:
    """``(entry, revision)`` of a registry name (``NAME`` or, for Hub entries, ``NAME@REVISION``); None when
    ``text`` names no release.

    Raises:
        ConfigError: a revision given for an entry that is not on the Hub; a malformed extra registry.
    """
    name, _, revision = str(text).partition("@")
    entry = load_registry().get(name)
    if entry is None:
        return None
    if revision and entry.source != "hf":
        raise ConfigError(f"{name} is a single released file: it has no revisions (drop '@{revision}')")
    return entry, revision or entry.revision


def _manual_hf_dir(entry: ReleasedWeights) -> Path | None:
    folder = _entry_dir(entry)
    if (folder / "config.json").exists() and any((folder / n).exists() for n in HF_WEIGHT_NAMES):
        return folder
    return None


def _verified_file(entry: ReleasedWeights, path: Path) -> Path:
    """``path`` once its SHA-256 matches the entry's (checked once per file version: a ``.verified`` note
    beside it records size, mtime and digest). Raises CheckpointError on a mismatch (the file is kept: a
    user put it there)."""
    want = (entry.sha256 or entry.sha256_prefix).lower()
    if not want:
        return path
    note = path.with_name(path.name + _VERIFIED)
    st = path.stat()
    stamp = f"{st.st_size} {st.st_mtime_ns}"
    if note.exists() and note.read_text().startswith(stamp + " " + want):
        return path
    digest = file_sha256(path)
    if not digest.startswith(want):
        raise CheckpointError(
            f"{path} has sha256 {digest[:16]}..., not the {entry.name} release's {want[:16]}...: delete it "
            f"and run again to download it, or fetch {entry.download_url} by hand"
        )
    try:
        note.write_text(f"{stamp} {digest}\n")
    except OSError:  # a read-only cache: checked again next time
        pass
    return path


def cached_path(entry: ReleasedWeights, revision: str | None = None) -> Path | None:
    """The local checkpoint of ``entry`` when it is already there (a file, or an HF folder); no network."""
    if entry.source == "hf":
        return _manual_hf_dir(entry) or hf_cached_dir(entry.repo_id, revision or entry.revision)
    path = _entry_dir(entry) / entry.file_name
    return path if path.exists() else None


def fetch_weights(text: str, progress: Callable[[int, int | None], None] | None = None) -> Path | None:
    """The local checkpoint path of the release ``text`` names, downloading it first when it is not cached;
    None when ``text`` is no registry name.

    Args:
        text: ``NAME`` or ``NAME@REVISION`` (Hub entries).
        progress: ``progress(done_bytes, total_bytes_or_None)`` of a download; None: the installed progress
            sink or INFO log lines (:func:`pgseg_core.checkpoint.download.report_progress`).

    Raises:
        DownloadError: offline or unreachable with nothing cached, a refused download or a hash mismatch
            (one line naming the URL to fetch by hand and the path to put it at). CheckpointError: a cached
            file whose SHA-256 is not the release's. ConfigError: see :func:`lookup`.
    """
    found = lookup(text)
    if found is None:
        return None
    entry, revision = found
    if entry.source == "hf":
        return _manual_hf_dir(entry) or fetch_hf(entry.repo_id, revision, text, _entry_dir(entry), progress)
    dest = _entry_dir(entry) / entry.file_name
    if dest.exists():
        return _verified_file(entry, dest)
    if entry.source == "gdrive":
        return _verified_file(entry, fetch_gdrive(entry.download_url, dest, entry.name, progress))
    return download_file(
        entry.url, dest, label=entry.name, sha256=entry.sha256, sha256_prefix=entry.sha256_prefix,
        progress=progress,
    )  # fmt: skip


@dataclass(frozen=True)
class WeightsListing:
    """One row of ``pgseg models``: a registry entry and what of it is cached.

    Attributes:
        entry: the registry entry.
        is_default: ``pgseg segment`` uses it without ``--checkpoint``.
        cached: its local checkpoint (file or HF folder) when present, else None.
        cached_bytes: bytes of the cached files (0 when not cached).
    """

    entry: ReleasedWeights
    is_default: bool
    cached: Path | None
    cached_bytes: int

    @property
    def approx_mb(self) -> float:
        """fp32 weights in MB (4 bytes per parameter)."""
        return 4.0 * self.entry.params_m


def _bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and not p.name.endswith(_VERIFIED))
    return path.stat().st_size


def list_weights() -> list[WeightsListing]:
    """Every registry entry with its cache state, in registry order (no network).

    Raises:
        ConfigError: a malformed ``PGSEG_WEIGHTS_REGISTRY`` file.
    """
    default = default_weights_name()
    rows = []
    for entry in load_registry().values():
        path = cached_path(entry)
        rows.append(WeightsListing(entry, entry.name == default, path, _bytes(path) if path else 0))
    return rows
