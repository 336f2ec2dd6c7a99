"""The one policy for output folders that belong to a run: a train run directory, a shard set.

A folder holds a run when one of its marker files exists (``last.pt`` / ``metrics.jsonl`` for a training
run, ``index.json`` for a shard set). Writing into such a folder is refused unless the caller says what to
do with it: ``resume`` (continue the run in place) or ``overwrite`` (start over: the markers and what they
describe are replaced). A path that is a file, or a folder that cannot be created, is refused the same way.
The CLI checks the same state first to name its flags (``--resume``, ``--overwrite``); the errors here are
for library callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError
from .io import ensure_dir

__all__ = ["FolderState", "inspect_folder", "claim_folder"]


@dataclass(frozen=True)
class FolderState:
    """What is at an output path.

    Attributes:
        path: the path.
        is_file: a file is there (nothing can be written under it).
        markers: the non-empty marker files found (empty: a new or unrelated folder).
    """

    path: Path
    is_file: bool
    markers: tuple[str, ...]

    @property
    def holds_run(self) -> bool:
        return bool(self.markers)


def _has_content(path: Path) -> bool:
    try:
        return path.is_dir() or (path.is_file() and path.stat().st_size > 0)
    except OSError:
        return False


def inspect_folder(path: str | Path, markers: tuple[str, ...]) -> FolderState:
    """The :class:`FolderState` of ``path`` for the given marker file names (no side effects)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return FolderState(path, True, ())
    # an empty marker (a run that failed before its first line) is not a run
    found = tuple(m for m in markers if _has_content(path / m)) if path.is_dir() else ()
    return FolderState(path, False, found)


def claim_folder(
    path: str | Path, markers: tuple[str, ...], what: str, *, resume: bool = False, overwrite: bool = False
) -> FolderState:
    """Check that this run may write into ``path`` and create it.

    Args:
        path: the output folder.
        markers: file names that show the folder holds a ``what`` already.
        what: "training run", "shard set" (for the message).
        resume: an existing run is continued in place.
        overwrite: an existing run is replaced (the caller replaces or removes the marker files).

    Returns:
        The state found before the folder was created.

    Raises:
        OutputError: ``path`` is a file, cannot be created, or holds a ``what`` and neither ``resume`` nor
            ``overwrite`` was given.
    """
    state = inspect_folder(path, markers)
    if state.is_file:
        raise OutputError(f"{path} is a file, not a folder: choose another output folder")
    if state.holds_run and not (resume or overwrite):
        raise OutputError(
            f"{path} already holds a {what} ({', '.join(state.markers)}): resume it, overwrite it, or "
            "choose another folder"
        )
    ensure_dir(path)
    return state
