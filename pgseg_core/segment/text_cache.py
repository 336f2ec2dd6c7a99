"""On-disk cache of class text embeddings, so repeated ``pgseg segment`` runs skip the text tower.

One safetensors file per (checkpoint weights, class vocabulary, prompt templates):

    <cache_dir>/text-<key>.safetensors     tensors "emb" [M,D] float32 and "owner" [M] int64
                                          (:class:`~pgseg_core.inference.classes.ClassEmbeddings`)

``key`` is the first 20 hex digits of sha256 over the checkpoint's identity (the first 16 hex digits of
:func:`pgseg_core.checkpoint.checkpoint_sha256`), the :meth:`ClassSpec.fingerprint` and the template list.
Editing, retraining or replacing the checkpoint changes its identity, so a stale entry is never read.
``pgseg segment`` keeps the cache in ``<--out>/.pgseg_cache/`` unless ``--text-cache DIR`` names another
folder (docs/SEGMENT.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..utils.io import atomic_write, output_error
from ..inference.classes import ClassEmbeddings, ClassSpec, embed_classes

__all__ = ["text_cache_key", "cached_class_embeddings"]

logger = logging.getLogger("pgseg.segment")


def text_cache_key(digest: str, spec: ClassSpec, templates: list[str]) -> str:
    """20-hex-digit key of (checkpoint identity, vocabulary fingerprint, templates)."""
    payload = json.dumps({"ckpt": digest, "classes": spec.fingerprint(), "templates": list(templates)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def cached_class_embeddings(
    model: Any,
    spec: ClassSpec,
    templates: list[str],
    device: torch.device | str,
    *,
    digest: str | None,
    cache_dir: str | Path | None,
) -> tuple[ClassEmbeddings, bool]:
    """Class embeddings of ``spec`` from the cache, computing and storing them on a miss.

    Args:
        model: a PGSeg-contract model (only used on a miss).
        spec: the vocabulary (synonyms and background words).
        templates: prompt templates, each with one ``{}``.
        device: where the returned embeddings live.
        digest: the checkpoint's identity (:func:`pgseg_core.checkpoint.checkpoint_sha256`, first 16 hex
            digits); ``None`` disables the cache.
        cache_dir: cache folder (created on the first write); ``None`` disables the cache.

    Returns:
        ``(embeddings, hit)``: :class:`ClassEmbeddings` ([M,D] float32 L2-normalised rows) and whether they
        came from the cache. An unreadable cache file is ignored (recomputed and overwritten).

    Raises:
        ConfigError: no / malformed templates (from :func:`embed_classes`). OutputError: the cache file cannot
        be written (a full disk, no permission); no temporary file stays.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    file = None
    if digest is not None and cache_dir is not None:
        file = Path(cache_dir) / f"text-{text_cache_key(digest, spec, templates)}.safetensors"
        if file.is_file():
            try:
                data = load_file(str(file), device="cpu")
                emb, owner = data["emb"].float(), data["owner"].long()
                n_bg = len(spec.background_words)
                expected = sum(len(p) for p in spec.prompts) + n_bg
                if emb.dim() == 2 and owner.shape == (expected,) and emb.shape[0] == expected:
                    logger.debug("text embeddings from cache %s", file)
                    return ClassEmbeddings(emb.to(device), owner.to(device), len(spec), n_bg > 0), True
                logger.warning("ignoring text cache %s: shapes do not match the class list", file)
            except (SafetensorError, OSError, KeyError, ValueError) as e:
                logger.warning("ignoring unreadable text cache %s: %s", file, e)
    ce = embed_classes(model, spec, list(templates), device)
    if file is not None:
        tensors = {"emb": ce.emb.detach().float().cpu().contiguous(), "owner": ce.owner.cpu().contiguous()}
        meta = {"classes": json.dumps(spec.names), "templates": json.dumps(list(templates))}
        blob = save(tensors, metadata=meta)  # bytes: our atomic write owns the temporary file and its mode
        try:
            atomic_write(file, lambda tmp: Path(tmp).write_bytes(blob))
        except OSError as e:
            raise output_error(file, e) from e
        logger.debug("text embeddings cached in %s", file)
    return ce, False
