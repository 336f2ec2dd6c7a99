"""The demo class vocabulary (``demo_vocab.json``) and the templated captions naming the pasted objects."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ....errors import DataError

__all__ = ["CAPTION_TEMPLATES", "class_phrase", "load_vocab", "make_caption"]

CAPTION_TEMPLATES = {
    1: (
        "a photo of {0}.",
        "{0}.",
        "a picture of {0}.",
        "there is {0} in the picture.",
        "an image with {0}.",
        "{0} in front of a background.",
    ),
    2: (
        "a photo of {0} and {1}.",
        "{0} and {1}.",
        "there is {0} next to {1}.",
        "a picture of {0} with {1}.",
        "{0} beside {1}.",
    ),
    3: (
        "a photo of {0}, {1} and {2}.",
        "{0}, {1} and {2}.",
        "there is {0} next to {1} and {2}.",
        "a picture showing {0}, {1} and {2}.",
    ),
}


def load_vocab(path: str | Path | None = None) -> dict[str, Any]:
    """Load the demo class vocabulary (default: the package's ``demo_vocab.json``).

    Returns:
        ``{"caption": [class spec], "heldout": [class spec], "exclude": {...}}``; a class spec has
        ``name``, optional ``phrase`` and per-source match lists ``tuxpaint`` / ``openclipart`` / ``emoji``.

    Raises:
        DataError: unreadable file, duplicate class names, or a class in both lists.
    """
    try:
        if path is None:
            text = (
                resources.files("pgseg_core.data.sources.demo")
                .joinpath("demo_vocab.json")
                .read_text(encoding="utf-8")
            )
        else:
            text = Path(path).read_text(encoding="utf-8")
        vocab = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read demo vocabulary {path or 'demo_vocab.json'}: {e}") from e
    names = [c.get("name") for part in ("caption", "heldout") for c in vocab.get(part, [])]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise DataError(f"demo vocabulary {path or 'demo_vocab.json'}: class names must be unique strings")
    vocab.setdefault("exclude", {})
    return vocab


def class_phrase(spec: dict[str, Any]) -> str:
    """How captions name a class: its ``phrase``, else "a"/"an" + its name."""
    if spec.get("phrase"):
        return str(spec["phrase"])
    name = spec["name"]
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


def make_caption(rng: np.random.Generator, phrases: list[str]) -> str:
    """A templated caption naming every phrase once, e.g. "there is a cat next to an apple."."""
    order = [phrases[i] for i in rng.permutation(len(phrases))]
    if len(order) > 3:
        order = [", ".join(order[:-2]), order[-2], order[-1]]
    templates = CAPTION_TEMPLATES[len(order)]
    return templates[int(rng.integers(len(templates)))].format(*order)
