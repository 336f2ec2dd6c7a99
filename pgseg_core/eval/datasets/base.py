"""The interface every benchmark reader implements: :class:`SegDataset`."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from ...data.loader import ValSample
from ...errors import ConfigError, DataError
from ...inference.classes import ClassSpec, read_class_file
from .registry import PROTOCOLS, DatasetInfo, load_class_spec, suggest

log = logging.getLogger("pgseg.eval.datasets")

__all__ = ["SegDataset"]


def _checked_spec(spec: ClassSpec, info: DatasetInfo, source: str) -> ClassSpec:
    if len(spec) != info.num_classes:
        bg = " (background is implicit: do not list it as a class)" if info.has_background else ""
        raise DataError(
            f"class file {source} has {len(spec)} classes but {info.name} has {info.num_classes}"
            f"{bg}: give one class per label, in label order"
        )
    return spec


# --------------------------------------------------------------------------------------------------------
# Base dataset
# --------------------------------------------------------------------------------------------------------


class SegDataset(ABC):
    """A benchmark split: ``len(ds)``, lazy iteration over :class:`ValSample`, class specs per protocol.

    Undecodable images / label maps are skipped with a warning and counted in ``ds.skipped``; structural
    problems (size mismatch, label values out of range) raise :class:`DataError`.
    """

    info: DatasetInfo

    def __init__(self, info: DatasetInfo):
        self.info = info
        self.skipped = 0
        self._names: list[str] | None = None

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples of the split."""

    @abstractmethod
    def __iter__(self) -> Iterator[ValSample]:
        """Samples in a fixed order (split-file order, or sorted file names)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, split={self.info.split!r}, n={len(self)})"

    def _packaged_spec(self, protocol: str) -> ClassSpec:
        return load_class_spec(self.info.class_key, protocol)

    def class_spec(self, protocol: str | Path = "groupvit") -> ClassSpec:
        """Class vocabulary in label order: a protocol name ("groupvit", "sclip") or a class file path.

        Returns:
            :class:`ClassSpec` with C = ``info.num_classes`` classes (and the protocol's background words).

        Raises:
            ConfigError: unknown protocol name (with the closest). DataError: a class file whose class count
                differs from the dataset's, or a missing class file.
        """
        text = str(protocol)
        if text in PROTOCOLS:
            return _checked_spec(self._packaged_spec(text), self.info, f"{self.info.class_key}.{text}.txt")
        path = Path(text)
        if path.suffix or path.exists() or "/" in text:
            return _checked_spec(read_class_file(path), self.info, str(path))
        raise ConfigError(
            f"unknown class protocol '{text}': {suggest(text, PROTOCOLS)}use one of "
            f"{', '.join(PROTOCOLS)}, or a class file path"
        )

    @property
    def classes(self) -> list[str]:
        """The C display names of the ``groupvit`` class file (label order), as put in each ValSample."""
        if self._names is None:
            self._names = self.class_spec("groupvit").names
        return self._names

    def _skip(self, what: str, err: BaseException) -> None:
        self.skipped += 1
        if self.skipped <= 5 or self.skipped % 100 == 0:
            log.warning(
                "skipped an unreadable sample of %s (%d so far): %s: %s",
                self.info.name,
                self.skipped,
                what,
                err,
            )
