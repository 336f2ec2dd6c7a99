"""Packaged prompt-template sets (``pgseg_core/resources/<name>_templates.txt``).

``imagenet80``: the 80 prompt templates of OpenAI CLIP's ImageNet zero-shot classifier, in their published
order. GroupViT's multi-label recipe draws one per prompt (docs/METHOD.md §2.2); the training-free
(SCLIP-family) evaluation averages the class embedding over all 80 (docs/METHOD.md §4.4).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from .errors import ConfigError

__all__ = ["TEMPLATE_SETS", "template_set"]

TEMPLATE_SETS = ("imagenet80",)


@lru_cache(maxsize=None)
def _read(name: str) -> tuple[str, ...]:
    text = (resources.files("pgseg_core") / "resources" / f"{name}_templates.txt").read_text(encoding="utf-8")
    return tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))


def template_set(name: str) -> list[str]:
    """The templates of a packaged set, each with one ``{}`` for the class name or noun.

    Args:
        name: one of :data:`TEMPLATE_SETS`.

    Returns:
        a new list (``imagenet80``: 80 templates).

    Raises:
        ConfigError: unknown set name.
    """
    if name not in TEMPLATE_SETS:
        raise ConfigError(f"unknown template set '{name}': choose one of {', '.join(TEMPLATE_SETS)}")
    return list(_read(name))
