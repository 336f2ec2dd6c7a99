"""Fetching released weights through the hosts' own clients: the Hugging Face Hub (huggingface_hub) and
Google Drive (gdown).

* Hub: :func:`fetch_hf` downloads a GroupViT repository's ``config.json`` and its weights
  (``model.safetensors``, else ``pytorch_model.bin``) with ``hf_hub_download`` into the Hub's own cache
  (``HF_HOME`` / ``HF_HUB_CACHE``), at a revision (branch, tag or commit), from ``HF_ENDPOINT`` when set;
  ``HF_HUB_OFFLINE=1`` (or ``PGSEG_OFFLINE=1``) reads only that cache. The library resumes a dropped
  transfer with HTTP Range requests and writes the cache atomically (``.incomplete`` file, then rename).
* Drive: :func:`fetch_gdrive` downloads a file id with gdown (which resumes its own partial file), checks
  that it is a torch checkpoint (Drive answers with an HTML page when its quota is exceeded) and renames it.

Either raises :class:`~pgseg_core.errors.DownloadError` with the one manual step when it cannot fetch.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DownloadError
from .download import offline_reason, report_progress

__all__ = ["fetch_hf", "fetch_gdrive", "hf_cached_dir", "hf_file_url", "HF_WEIGHT_NAMES", "drive_url"]

HF_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")  # tried in this order
DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` (read at call time), else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def hf_file_url(repo_id: str, filename: str, revision: str) -> str:
    """The URL of one file of a Hub repository at ``revision``."""
    return f"{hf_endpoint()}/{repo_id}/resolve/{revision}/{filename}"


def _progress_class(tick: Callable[[int, int | None], None]) -> type:
    """A tqdm-like class for ``hf_hub_download(tqdm_class=...)`` that forwards byte counts to ``tick``."""

    class Bar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
            self.total, self.n = total, initial or 0
            tick(self.n, self.total)

        def update(self, n: int = 1) -> None:
            self.n += n
            tick(self.n, self.total)

        def close(self) -> None:
            pass

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.close()

    return Bar


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as e:
        raise DownloadError(
            "Hugging Face Hub weights need huggingface_hub, a pgseg dependency: reinstall pgseg (or name an "
            "NVlabs release, e.g. groupvit-gcc-yfcc)"
        ) from e
    return huggingface_hub


def hf_cached_dir(repo_id: str, revision: str) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` in the Hub cache when it holds ``config.json`` and
    weights; None otherwise (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return folder if any((folder / n).exists() for n in HF_WEIGHT_NAMES) else None


def fetch_hf(
    repo_id: str, revision: str, label: str, manual_dir: Path, progress: Callable | None = None
) -> Path:
    """The local snapshot folder (``config.json`` + weights) of a Hub GroupViT repository.

    Raises:
        DownloadError: huggingface_hub missing; offline or the Hub unreachable and nothing cached; the
            repository, revision or files do not exist (one line: the files to fetch by hand, and where).
    """
    hub = _hub()
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    offline = offline_reason()
    files = ", ".join(hf_file_url(repo_id, n, revision) for n in ("config.json", HF_WEIGHT_NAMES[1]))
    manual = f"fetch {files} by hand and put them in {manual_dir}"
    kw = dict(repo_id=repo_id, revision=revision, endpoint=hf_endpoint(), local_files_only=bool(offline))
    tick = report_progress(label, progress)
    try:
        config = hub.hf_hub_download(filename="config.json", **kw)
        missing: Exception | None = None
        for name in HF_WEIGHT_NAMES:
            try:
                hub.hf_hub_download(filename=name, tqdm_class=_progress_class(tick), **kw)
                return Path(config).parent
            except (RemoteEntryNotFoundError, LocalEntryNotFoundError) as e:
                missing = missing if isinstance(missing, LocalEntryNotFoundError) else e
        if isinstance(missing, LocalEntryNotFoundError):
            raise missing
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        where = f"{repo_id} at revision {revision} on {hf_endpoint()}"
        raise DownloadError(f"{label}: no repository {where}") from e
    except LocalEntryNotFoundError as e:
        why = f"downloads are off ({offline})" if offline else f"{hf_endpoint()} cannot be reached"
        raise DownloadError(f"{label} is not in the Hugging Face cache and {why}: {manual}") from e
    except (HfHubHTTPError, OSError) as e:
        raise DownloadError(f"cannot download {label} ({str(e).splitlines()[0]}): {manual}") from e
    raise DownloadError(f"{label}: {repo_id} has neither {' nor '.join(HF_WEIGHT_NAMES)} at {revision}")


def drive_url(drive_id: str) -> str:
    """The Google Drive download URL of a file id."""
    return f"https://drive.google.com/uc?id={drive_id}"


def _is_torch_file(path: Path) -> bool:
    """A torch.save file: a zip archive, or the legacy pickle format (protocol 2 header)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x80\x02"


def fetch_gdrive(url: str, dest: Path, label: str, progress: Callable | None = None) -> Path:
    """Download a Google Drive file (``url``: :func:`drive_url` or a mirror) with gdown to ``dest``.

    gdown keeps its partial file (``DEST.unverifiedXXXXXXXX.part``) for the next run to resume, and renames
    it to ``DEST.unverified`` when whole; that is checked to be a torch file, then renamed to ``dest``.

    Raises:
        DownloadError: gdown missing, offline, Drive refusing (quota, permissions) or an HTML page instead of
            a checkpoint: one line naming the URL to open in a browser and the path to save the file at.
    """
    manual = f"open {url} in a browser, save the file as {dest}"
    reason = offline_reason()
    if reason:
        raise DownloadError(f"{label} is not downloaded and downloads are off ({reason}): {manual}")
    try:
        import gdown
    except ImportError as e:
        raise DownloadError(
            f"{label} is on Google Drive: pip install 'pgseg[hub]' (gdown) or {manual}"
        ) from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".unverified")
    tick = report_progress(label, progress)
    try:
        got = gdown.download(url=url, output=str(part), quiet=True, resume=True, progress=tick, retries=3)
    except Exception as e:  # gdown raises its own and requests' errors
        raise DownloadError(f"gdown cannot fetch {label} ({type(e).__name__}): {manual}") from e
    if got is None or not part.exists():
        raise DownloadError(f"gdown cannot fetch {label} (Google Drive refused it): {manual}")
    if not _is_torch_file(part):
        part.unlink()
        raise DownloadError(f"{label}: Google Drive sent a page, not the checkpoint (quota?): {manual}")
    os.replace(part, dest)
    return dest
