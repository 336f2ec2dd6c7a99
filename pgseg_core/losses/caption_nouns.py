"""Object phrases of a caption, for GroupViT's multi-label contrastive loss (docs/METHOD.md §2.2).

GroupViT picks the nouns of each caption with nltk's part-of-speech tagger and turns each into a prompt
("a photo of a {noun}."). nltk needs a separate data download, which the offline demo cannot do, so this
module splits a caption into its object phrases with a small rule set that covers the demo caption
templates ("there is a cat next to an apple.", "a photo of a dog, a bus and a bunch of grapes.") and
simple English captions of the same shape:

1. lower-case, strip the final punctuation;
2. drop a leading frame ("a photo of", "a picture showing", "there is", ...) and a trailing one
   ("in the picture", "in front of a background");
3. split on commas and the connectives "and", "next to", "beside", "with";
4. drop leading articles / quantity words ("a", "an", "the", "some", "a bunch of").

It is a text-only rule: no label or mask is read.
"""

from __future__ import annotations

import re

__all__ = ["caption_nouns"]

_LEAD = re.compile(
    r"^(?:a photo of|a photograph of|a picture of|a picture showing|an image of|an image with|"
    r"an image showing|there is|there are|this is)(?:\s+|$)"
)
_TRAIL = re.compile(r"\s+(?:in the picture|in the image|in the photo|in front of a background)$")
_SPLIT = re.compile(r"\s*,\s*(?:and\s+)?|\s+(?:and|next to|beside|with)\s+")
_ARTICLE = re.compile(r"^(?:(?:a|an|the|some|two|three)\s+)?(?:(?:bunch|pair|group|couple|lot)\s+of\s+)?")


def caption_nouns(caption: str) -> list[str]:
    """Object phrases named by a caption, in order, without duplicates.

    Args:
        caption: one caption, e.g. ``"there is a cat next to a bunch of grapes."``.

    Returns:
        e.g. ``["cat", "grapes"]``; an empty list when nothing is left after the rules (the caller then
        uses the caption itself, as GroupViT pads with the raw caption).
    """
    text = " ".join(caption.lower().strip().split())
    text = text.rstrip(".!?;: ")
    text = _LEAD.sub("", text)
    text = _TRAIL.sub("", text)
    out: list[str] = []
    for part in _SPLIT.split(text):
        phrase = _ARTICLE.sub("", part.strip()).strip()
        if phrase and phrase not in out:
            out.append(phrase)
    return out
