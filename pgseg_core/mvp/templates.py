"""Hand-written prompt templates of the training-free baseline (docs/MVP_SEG.md §4).

- ``groupvit``: GroupViT's evaluation template, "a photo of a {}.";
- ``imagenet80``: the 80 prompt templates CLIP ensembles for ImageNet zero-shot classification
  (``imagenet80_templates.txt``, one per line).
"""

from __future__ import annotations

from importlib import resources

from ..errors import ConfigError

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
        text = resources.files("pgseg_core.mvp").joinpath("imagenet80_templates.txt").read_text("utf-8")
        return [line for line in text.splitlines() if line.strip()]
    raise ConfigError(f"unknown template set '{name}': use one of {', '.join(TEMPLATE_SETS)}")
