"""Frozen text towers with a prompt-learning entry: learned context vectors at the token-embedding level.

Legend: C class names, T context tokens, W token-embedding width, L token positions, D joint width.

A prompt is ``[SOT] ctx_1 .. ctx_T name-tokens . [EOT]`` (CLIP BPE) or ``[CLS] ctx_1 .. ctx_T name-tokens
[SEP]`` (MiniLM): the text ``"x x .. x NAME."`` is tokenised (each ``x`` is one token in both vocabularies)
and the embeddings of the T placeholder tokens are replaced by the learned vectors, so the class-name
tokens come after the context (CoOp's "end" position; docs/MVP_SEG.md §1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["ClipCausalText", "MiniLMText", "placeholder_prompts"]


def placeholder_prompts(names: list[str], n_ctx: int) -> list[str]:
    """``"x x .. x NAME."`` per class (``n_ctx`` placeholders) — the texts the context replaces."""
    prefix = " ".join(["x"] * n_ctx)
    return [f"{prefix} {n}." if n_ctx else f"{n}." for n in names]


class ClipCausalText(nn.Module):
    """A CLIP-style causal text transformer (this project's ``TextTransformer`` or open_clip's text tower).

    Args:
        token_embedding: nn.Embedding of the vocabulary (width W).
        positional_embedding: [L_max, W].
        run_blocks: ``f(x [B, L, W]) -> [B, L, W]``, the causal transformer blocks.
        ln_final: final LayerNorm.
        project: ``f(pooled [B, W]) -> [B, D]`` into the joint space.
        tokenize: ``f(texts, context_length) -> LongTensor [B, L]`` (EOT has the largest id).
    """

    def __init__(
        self,
        token_embedding: nn.Embedding,
        positional_embedding: torch.Tensor,
        run_blocks: Callable[[torch.Tensor], torch.Tensor],
        ln_final: nn.Module,
        project: Callable[[torch.Tensor], torch.Tensor],
        tokenize: Callable[[list[str], int], torch.Tensor],
    ) -> None:
        super().__init__()
        self.token_embedding = token_embedding
        self.ln_final = ln_final
        self._pos = positional_embedding
        self._run = run_blocks
        self._project = project
        self._tokenize = tokenize
        self.width = int(token_embedding.weight.shape[1])

    def _ids(self, texts: list[str]) -> torch.Tensor:
        return self._tokenize(texts, int(self._pos.shape[0])).to(self.token_embedding.weight.device)

    def word_embeddings(self, text: str) -> torch.Tensor:
        """[n, W] embeddings of the tokens of ``text`` (no SOT / EOT): a context initialisation."""
        ids = self._ids([text])[0]
        n = int(ids.argmax()) - 1
        return self.token_embedding(ids[1 : 1 + n]).detach().clone()

    def _encode(self, ids: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        x = self.token_embedding(ids)  # [B, L, W]
        if ctx is not None and ctx.shape[0]:
            x = torch.cat(
                [x[:, :1], ctx[None].expand(x.shape[0], -1, -1).to(x.dtype), x[:, 1 + ctx.shape[0] :]], 1
            )
        x = self._run(x + self._pos[: x.shape[1]])
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        return self._project(pooled)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Plain texts -> [B, D] joint-space embeddings, not normalised."""
        return self._encode(self._ids(texts), None)

    def encode_prompted(self, ctx: torch.Tensor, names: list[str]) -> torch.Tensor:
        """Context [T, W] + class names -> [C, D] joint-space embeddings, not normalised (differentiable in
        ``ctx``).

        Raises:
            ConfigError: a prompt longer than the tower's context length (fewer context tokens needed).
        """
        ids = self._ids(placeholder_prompts(names, ctx.shape[0]))
        if int(ids.argmax(dim=-1).min()) < ctx.shape[0] + 2:
            raise ConfigError(
                f"a class-name prompt does not fit the text tower's {ids.shape[1]} positions with "
                f"{ctx.shape[0]} context tokens: use fewer context tokens (mvp.n_ctx)"
            )
        return self._encode(ids, ctx)


class MiniLMText(nn.Module):
    """The demo's frozen MiniLM sentence encoder (mean-pooled, W = 384) followed by a projection.

    Args:
        hf_model: a transformers BERT-style model (``embeddings.word_embeddings``, ``inputs_embeds``).
        tokenizer: its tokenizer.
        project: ``f(pooled [B, 384]) -> [B, D]``.
        max_length: token cap of the tokenizer.
    """

    def __init__(self, hf_model: nn.Module, tokenizer, project: Callable, max_length: int) -> None:
        super().__init__()
        object.__setattr__(self, "_hf", hf_model)  # frozen, package-shipped: never a submodule
        self._tok = tokenizer
        self._project = project
        self._max = int(max_length)
        self.width = int(hf_model.embeddings.word_embeddings.weight.shape[1])

    def _batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        device = self._hf.embeddings.word_embeddings.weight.device
        b = self._tok(texts, padding=True, truncation=True, max_length=self._max, return_tensors="pt")
        return {k: v.to(device) for k, v in b.items()}

    def word_embeddings(self, text: str) -> torch.Tensor:
        """[n, W] embeddings of the word pieces of ``text`` (no CLS / SEP)."""
        ids = self._batch([text])["input_ids"][0, 1:-1]
        return self._hf.embeddings.word_embeddings(ids).detach().clone()

    def _encode(self, batch: dict[str, torch.Tensor], ctx: torch.Tensor | None) -> torch.Tensor:
        x = self._hf.embeddings.word_embeddings(batch["input_ids"])
        if ctx is not None and ctx.shape[0]:
            x = torch.cat(
                [x[:, :1], ctx[None].expand(x.shape[0], -1, -1).to(x.dtype), x[:, 1 + ctx.shape[0] :]], 1
            )
        mask = batch["attention_mask"]
        extra = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
        hidden = self._hf(inputs_embeds=x, attention_mask=mask, **extra).last_hidden_state.float()
        m = mask[..., None].to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return self._project(pooled)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Plain texts -> [B, D], not normalised."""
        return self._encode(self._batch(texts), None)

    def encode_prompted(self, ctx: torch.Tensor, names: list[str]) -> torch.Tensor:
        """Context [T, W] + class names -> [C, D], not normalised (differentiable in ``ctx``)."""
        return self._encode(self._batch(placeholder_prompts(names, ctx.shape[0])), ctx)
