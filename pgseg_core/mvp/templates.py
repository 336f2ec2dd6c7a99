"""Hand-written prompt templates of the training-free baseline (docs/MVP_SEG.md §4).

- ``groupvit``: GroupViT's evaluation template, "a photo of a {}.";
- ``imagenet80``: the 80 prompt templates CLIP ensembles for ImageNet zero-shot classification (the
  packaged set of :mod:`pgseg_core.prompt_templates`, shared with evaluation and the multi-label loss).
"""

from __future__ import annotations

from ..errors import ConfigError
from ..prompt_templates import template_set as packaged_templates

__all__ = ["template_set", "TEMPLATE_SETS"]

TEMPLATE_SETS = ("groupvit", "imagenet80")


def template_set(name: str) -> list[str]:
    """The templates of a named set (each with one ``{}``).

    Raises:
        ConfigError: an unknown set.
    """
    if name == "groupvit":
        return ["a photo of a {}."]
    if name == "imagenet80":
        return packaged_templates("imagenet80")
    raise ConfigError(f"unknown template set '{name}': use one of {', '.join(TEMPLATE_SETS)}")
