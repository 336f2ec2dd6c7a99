"""Class vocabularies for open-vocabulary segmentation: names, synonyms and background words.

A segmentation vocabulary is C named classes, each with one or more text phrases (synonyms), plus an
optional list of background words (e.g. "sky, wall, tree" in the training-free mmseg-1.x protocol of SCLIP
and its successors, docs/METHOD.md §4.4). A class's score is the maximum over its synonyms; a pixel
won by a background word is background.

Class files (``.txt``; also ``.csv`` / ``.lst``), one entry per line, in label order::

    # comments and blank lines are ignored
    background: sky, wall, tree      <- optional; background words (a bare "background" line means none)
    aeroplane, airplane              <- class 1 (or 0 without background): name, then synonyms
    person, person in shirt

The first phrase of a line is the class's display name. The background line is not a class.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..utils.io import read_text_file

__all__ = [
    "ClassSpec",
    "ClassEmbeddings",
    "as_class_embeddings",
    "parse_class_lines",
    "read_class_file",
    "parse_class_spec",
    "embed_classes",
    "compute_class_embeddings",
    "read_templates",
    "CLASS_FILE_SUFFIXES",
]

CLASS_FILE_SUFFIXES = ("", ".txt", ".csv", ".lst")
_BACKGROUND = "background"


@dataclass(frozen=True)
class ClassSpec:
    """A vocabulary of C classes with synonyms and optional background words.

    Attributes:
        prompts: per class, its phrases (>= 1); ``prompts[i][0]`` is the display name of class i.
        background_words: phrases whose win makes a pixel background (may be empty).
    """

    prompts: tuple[tuple[str, ...], ...]
    background_words: tuple[str, ...] = field(default=())

    @property
    def names(self) -> list[str]:
        """The C display names, in label order."""
        return [p[0] for p in self.prompts]

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_names(cls, names: Iterable[str], background_words: Iterable[str] = ()) -> "ClassSpec":
        """One phrase per class (no synonyms). Raises ConfigError like :func:`parse_class_lines`."""
        return _validated(
            [(str(n).strip(),) for n in names], [str(w).strip() for w in background_words], "class list"
        )

    def fingerprint(self) -> str:
        """Stable 16-hex-digit hash of the phrases (for embedding caches)."""
        payload = json.dumps({"p": self.prompts, "bg": self.background_words}, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "synonyms": [list(p) for p in self.prompts],
            "background_words": list(self.background_words),
        }


def _split_phrases(text: str) -> list[str]:
    return [p.strip() for p in text.split(",")]


def _validated(prompts: list[tuple[str, ...]], bg_words: list[str], source: str) -> ClassSpec:
    if not prompts:
        raise ConfigError(f"no classes in {source}: give at least one class name")
    for entry in prompts:
        if any(not p for p in entry):
            raise ConfigError(f"empty class name or synonym in {source} (entry {', '.join(entry)!r})")
    if any(not w for w in bg_words):
        raise ConfigError(f"empty background word in {source}")
    names = [p[0] for p in prompts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"duplicate class names in {source}: {', '.join(dupes)}")
    if any(n.lower() == _BACKGROUND for n in names):
        raise ConfigError(
            f"'background' is not a class in {source}: it is implicit; use a "
            "'background: word, word' line for background words"
        )
    return ClassSpec(tuple(prompts), tuple(dict.fromkeys(bg_words)))


def parse_class_lines(lines: Iterable[str], source: str = "class list") -> ClassSpec:
    """Parse class-file lines (format in the module docstring).

    Raises:
        ConfigError: no classes, an empty phrase, duplicate names, or two background lines.
    """
    prompts: list[tuple[str, ...]] = []
    bg_words: list[str] | None = None
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head = line.split(":", 1)[0].split(",", 1)[0].strip().lower()
        if head == _BACKGROUND:
            if bg_words is not None:
                raise ConfigError(f"two background lines in {source}")
            rest = line.split(":", 1)[1] if ":" in line.split(",", 1)[0] else ",".join(line.split(",")[1:])
            bg_words = [w for w in _split_phrases(rest) if w] if rest.strip() else []
            continue
        prompts.append(tuple(_split_phrases(line)))
    return _validated(prompts, bg_words or [], source)


def read_class_file(path: str | Path) -> ClassSpec:
    """Read a class file (one class per line, comma-separated synonyms, optional background line).

    Raises:
        DataError: missing or unreadable file, or an unknown suffix (e.g. ``.json``).
        ConfigError: malformed contents (see :func:`parse_class_lines`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class file not found: {path}")
    if path.suffix.lower() not in CLASS_FILE_SUFFIXES:
        raise DataError(
            f"unknown class-file format '{path.suffix}' for {path}: use a .txt file with one class "
            "per line (synonyms comma-separated)"
        )
    text = read_text_file(path, "class file")
    return parse_class_lines(text.splitlines(), source=str(path))


def parse_class_spec(
    classes: str | None = None,
    classes_file: str | Path | None = None,
    bg_words: str | Iterable[str] | None = None,
) -> ClassSpec:
    """Vocabulary from ``--classes "cat,dog"`` and/or a class file, plus ``--bg-words "sky,wall"``.

    Classes from ``classes`` come first (one phrase each), then the file's. Background words of the file
    and of ``bg_words`` are merged.

    Raises:
        ConfigError: nothing given, empty or duplicate names. DataError: a bad class file.
    """
    prompts: list[tuple[str, ...]] = []
    words: list[str] = []
    if classes:
        prompts += [(c.strip(),) for c in classes.split(",")]
    if classes_file:
        spec = read_class_file(classes_file)
        prompts += list(spec.prompts)
        words += list(spec.background_words)
    if bg_words:
        words += _split_phrases(bg_words) if isinstance(bg_words, str) else [str(w).strip() for w in bg_words]
    if not prompts:
        raise ConfigError("no classes given: name at least one class or give a class file")
    source = "the class list" if not classes_file else f"the classes / {classes_file}"
    return _validated(prompts, words, source)


@dataclass
class ClassEmbeddings:
    """Text embeddings of a :class:`ClassSpec`, one row per phrase.

    Attributes:
        emb: [M,D] float32, L2-normalised; M = all synonyms of all classes, then the background words.
        owner: [M] int64: the class index 0..C-1 of each row, or C for a background word.
        num_classes: C.
        has_background_words: whether rows with owner C exist.
    """

    emb: torch.Tensor
    owner: torch.Tensor
    num_classes: int
    has_background_words: bool

    @classmethod
    def plain(cls, emb: torch.Tensor) -> "ClassEmbeddings":
        """One row per class ([C,D]), no synonyms, no background words."""
        return cls(emb, torch.arange(emb.shape[0], device=emb.device), int(emb.shape[0]), False)

    def to(self, device: torch.device | str) -> "ClassEmbeddings":
        return ClassEmbeddings(
            self.emb.to(device), self.owner.to(device), self.num_classes, self.has_background_words
        )

    def reduce(self, scores: torch.Tensor) -> torch.Tensor:
        """Max over each class's rows: [..., M] -> [..., C'] with C' = C (+1 for background words, last)."""
        if (
            not self.has_background_words
            and self.emb.shape[0] == self.num_classes
            and bool((self.owner == torch.arange(self.num_classes, device=self.owner.device)).all())
        ):
            return scores
        groups = self.num_classes + int(self.has_background_words)
        out = scores.new_full((*scores.shape[:-1], groups), float("-inf"))
        index = self.owner.to(scores.device).expand_as(scores)
        return out.scatter_reduce(-1, index, scores, reduce="amax", include_self=True)


def as_class_embeddings(class_emb: torch.Tensor | ClassEmbeddings) -> ClassEmbeddings:
    """``class_emb`` itself, or a plain [C,D] tensor as float32 :class:`ClassEmbeddings` (a row per class)."""
    return class_emb if isinstance(class_emb, ClassEmbeddings) else ClassEmbeddings.plain(class_emb.float())


def _check_templates(templates: list[str]) -> None:
    if not templates:
        raise ConfigError("eval.templates is empty: give at least one prompt such as 'a photo of a {}.'")
    for tpl in templates:
        if "{}" not in tpl:
            raise ConfigError(f"template {tpl!r} has no '{{}}' placeholder for the class name")


@torch.no_grad()
def embed_classes(
    model: Any, spec: ClassSpec, templates: list[str], device: torch.device | str = "cpu"
) -> ClassEmbeddings:
    """Embed every phrase of ``spec`` with the prompt templates (mean over templates, GroupViT's
    build_text_embedding, docs/METHOD.md §4.1).

    Args:
        model: a PGSeg-contract model (``class_embeddings(phrases, templates)`` -> [M,D]).
        spec: the vocabulary.
        templates: prompt templates with one ``{}`` each, e.g. ``"a photo of a {}."``.
        device: where the embeddings are placed.

    Returns:
        :class:`ClassEmbeddings`: [M,D] float32 L2-normalised rows (every synonym of every class, then the
        background words) and their owners.

    Raises:
        ConfigError: no / malformed templates.
    """
    _check_templates(templates)
    phrases: list[str] = []
    owner: list[int] = []
    for i, entry in enumerate(spec.prompts):
        phrases += list(entry)
        owner += [i] * len(entry)
    phrases += list(spec.background_words)
    owner += [len(spec)] * len(spec.background_words)
    emb = F.normalize(model.class_embeddings(phrases, list(templates)).float(), dim=-1).to(device)
    return ClassEmbeddings(
        emb, torch.tensor(owner, dtype=torch.long, device=device), len(spec), bool(spec.background_words)
    )


def compute_class_embeddings(
    model: Any, class_names: list[str], templates: list[str], device: torch.device | str
) -> torch.Tensor:
    """Text embeddings of plain class names, one row per class (:func:`embed_classes` without synonyms).

    Args:
        model: a PGSeg-contract model (``class_embeddings(names, templates)``).
        class_names: C class names (no background).
        templates: prompt templates with one ``{}`` each, e.g. ``"a photo of a {}."``.
        device: where the embeddings are placed.

    Returns:
        [C,D] float32, L2-normalised.

    Raises:
        ConfigError: no class names, an empty name, or no / malformed templates.
    """
    names = [str(n) for n in class_names]
    if not names:
        raise ConfigError("no class names given: pass at least one class to segment")
    if any(not n.strip() for n in names):
        raise ConfigError(f"empty class name in {names!r}: remove it from the class list")
    return embed_classes(model, ClassSpec(tuple((n,) for n in names)), templates, device).emb


def read_templates(templates: list[str] | None, templates_file: str | Path | None) -> list[str] | None:
    """Prompt templates from ``--template`` values and / or a file (one per line, ``#`` comments).

    Returns:
        The non-blank templates in order, or None when none was given (use the checkpoint's).

    Raises:
        DataError: a missing or unreadable file.
        ConfigError: a file without templates, or a template without exactly one ``{}``.
    """
    found = [t for t in (templates or []) if t.strip()]
    if templates_file:
        path = Path(templates_file)
        if not path.is_file():
            raise DataError(f"templates file not found: {path}")
        lines = read_text_file(path, "templates file").splitlines()
        found += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not found:
            raise ConfigError(
                f"templates file {path} holds no template: one per line, e.g. 'a photo of a {{}}.'"
            )
    for tpl in found:
        if tpl.count("{}") != 1:
            raise ConfigError(f"template {tpl!r} must contain exactly one '{{}}' where the class name goes")
    return found or None
