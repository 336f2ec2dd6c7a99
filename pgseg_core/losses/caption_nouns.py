"""Object phrases of a caption, for GroupViT's multi-label contrastive loss (docs/METHOD.md §2.2).

GroupViT picks the nouns of each caption with nltk's part-of-speech tagger and turns each into a prompt.
Two sources here, chosen by ``model.multi_label_nouns`` (:func:`noun_source`):

- ``nltk`` (:func:`tagged_nouns`): nltk's averaged-perceptron tagger over a Treebank tokenisation, keeping
  the words tagged NN, NNS, NNP or NNPS (the released code also keeps verb tags, VB*, which turn words
  such as "is" into prompts; pgseg keeps nouns only). nltk's tagger data is a separate download
  (``python -m nltk.downloader averaged_perceptron_tagger_eng``) that an offline machine may not have.
- ``rules`` (:func:`caption_nouns`): a small rule set that splits a caption into its object phrases; it
  covers the demo caption templates ("there is a cat next to an apple.", "a photo of a dog, a bus and a
  bunch of grapes.") and simple English captions of the same shape:

1. lower-case, strip the final punctuation;
2. drop a leading frame ("a photo of", "a picture showing", "there is", ...) and a trailing one
   ("in the picture", "in front of a background");
3. split on commas and the connectives "and", "next to", "beside", "with";
4. drop leading articles / quantity words ("a", "an", "the", "some", "a bunch of").

Both are text-only: no label or mask is read. ``auto`` uses nltk where it and its tagger data are
installed and the rules otherwise.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any, Callable

from ..errors import DependencyError

__all__ = ["caption_nouns", "tagged_nouns", "nltk_tagger", "noun_source", "NOUN_TAGS"]

log = logging.getLogger(__name__)

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
_NLTK_FIX = (
    "pip install 'pgseg[nltk]' and python -m nltk.downloader averaged_perceptron_tagger_eng, "
    "or set model.multi_label_nouns to rules"
)

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


@lru_cache(maxsize=1)
def nltk_tagger() -> Any | None:
    """nltk's averaged-perceptron tagger when nltk and its tagger data are installed, else None (cached)."""
    try:
        from nltk.tag import PerceptronTagger
    except ImportError:
        return None
    try:
        return PerceptronTagger()
    except (LookupError, OSError, ValueError):  # the tagger data is not installed
        return None


def tagged_nouns(caption: str, tagger: Any) -> list[str]:
    """Nouns of a caption by a part-of-speech tagger, lower-cased, in order, without duplicates.

    Args:
        caption: one caption.
        tagger: an object with nltk's ``tag(tokens) -> [(word, tag), ...]`` (e.g. ``nltk_tagger()``).

    Returns:
        the words tagged as nouns (:data:`NOUN_TAGS`) that contain a letter, e.g. ``["dog", "beach"]``.

    Raises:
        DependencyError: nltk is not installed (its tokenizer is needed).
    """
    try:
        from nltk.tokenize import TreebankWordTokenizer
    except ImportError as e:
        raise DependencyError(f"caption nouns by nltk need nltk: {_NLTK_FIX}") from e
    out: list[str] = []
    for word, tag in tagger.tag(TreebankWordTokenizer().tokenize(caption)):
        word = word.lower()
        if tag in NOUN_TAGS and any(ch.isalpha() for ch in word) and word not in out:
            out.append(word)
    return out


def noun_source(mode: str) -> Callable[[str], list[str]]:
    """The caption -> nouns function of ``model.multi_label_nouns``.

    Args:
        mode: ``rules`` (:func:`caption_nouns`), ``nltk`` (:func:`tagged_nouns` with :func:`nltk_tagger`)
            or ``auto`` (nltk where its tagger data is installed, the rules otherwise; logged once).

    Raises:
        DependencyError: ``nltk`` without nltk or its tagger data.
        ValueError: an unknown mode.
    """
    if mode not in ("auto", "nltk", "rules"):
        raise ValueError(f"unknown caption-noun source {mode!r}: auto, nltk or rules")
    tagger = None if mode == "rules" else nltk_tagger()
    if mode == "nltk" and tagger is None:
        raise DependencyError(f"model.multi_label_nouns = nltk needs nltk and its tagger data: {_NLTK_FIX}")
    if mode == "auto":
        _log_auto_choice(tagger is not None)
    if tagger is None:
        return caption_nouns
    return lambda caption: tagged_nouns(caption, tagger)


@lru_cache(maxsize=2)
def _log_auto_choice(with_nltk: bool) -> None:
    if with_nltk:
        log.info("multi-label caption nouns: nltk's part-of-speech tagger")
    else:
        log.info("multi-label caption nouns: the rule set (nltk or its tagger data is not installed)")
