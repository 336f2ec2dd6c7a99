"""GroupViT / PGSeg: image encoder + text tower + projection heads + (optionally) NPR losses.

Legend: B batch, S groups, N tokens, C token width, W text width, D joint embedding width.

With ``cfg.npr.enabled`` this is PGSeg (Zhang et al., NeurIPS 2023): NPR per grouping stage, matched
group-prototype contrast L_PG, text-side NPR, total loss ``L_itc + w·(L_I1 + L_I2 + w_T·L_T)``
(docs/METHOD.md §3.6). Without it, this is GroupViT (Xu et al., CVPR 2022) trained with L_itc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..losses.caption_nouns import noun_source
from ..losses.caption_prompts import build_prompts, gather_prompt_sets
from ..prompt_templates import template_set
from ..errors import ConfigError
from ..losses.contrastive import image_text_contrastive
from ..losses.multi_label import multi_label_contrastive, prompt_share
from ..losses.prototype import hrs_kept_fraction, hungarian_match, prototype_group_loss
from .layers import ProjectMLP
from .npr import TextNPR
from .text_npr_inputs import project_frozen, project_valid_tokens, text_npr_mask
from .text import MiniLMTower, TextTransformer
from .vision import GroupViTEncoder, VisionOutput

__all__ = ["PGSeg", "ImageOutput"]


@dataclass
class ImageOutput:
    image_emb: torch.Tensor  # [B, D] projected mean of the final tokens, not normalised
    group_emb: torch.Tensor | None  # [B, S, D] each final token projected, not normalised (dense=True)
    assign_soft: list[torch.Tensor] = field(
        default_factory=list
    )  # per stage [B, S_i, N_i], softmax over groups
    assign_hard: list[torch.Tensor] = field(default_factory=list)  # per stage [B, S_i, N_i], one-hot
    grid: tuple[int, int] = (0, 0)  # stage-0 token grid (h, w)
    vision: VisionOutput | None = None


class PGSeg(nn.Module):
    """The full model. Build it with :func:`pgseg_core.models.factory.create_model`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        npr = cfg.npr
        self.img_encoder = GroupViTEncoder(cfg.vision, npr if npr.enabled else None)
        if cfg.text.tower == "transformer":
            self.text_encoder = TextTransformer(cfg.text)
            text_width = cfg.text.width
        else:
            self.text_encoder = MiniLMTower(cfg.text)
            text_width = MiniLMTower.width
        C = cfg.vision.embed_dim
        self.img_projector = ProjectMLP(C, cfg.proj_hidden, cfg.embed_dim, cfg.proj_layers)
        self.text_projector = ProjectMLP(text_width, cfg.proj_hidden, cfg.embed_dim, cfg.proj_layers)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.contrast_temperature)))
        if cfg.multi_label > 0:  # GroupViT's separate scale of the multi-label loss (same init)
            init = math.log(1.0 / cfg.contrast_temperature)
            self.multi_label_logit_scale = nn.Parameter(torch.tensor(init))
        if npr.enabled:
            final_groups = int(cfg.vision.num_output_groups[-1])
            if npr.text_prototypes != final_groups:
                # the text term Hungarian-matches text prototypes to the final groups one to one
                # (docs/METHOD.md §3.5)
                raise ConfigError(
                    f"model.npr.text_prototypes ({npr.text_prototypes}) must equal the last stage's "
                    f"model.vision.num_output_groups ({final_groups}): set model.npr.text_prototypes to "
                    f"{final_groups}"
                )
            # the L_PG temperature lives in the image encoder, as in the released checkpoints
            self.img_encoder.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / npr.pg_temperature)))
            self.text_npr = TextNPR(
                npr.text_prototypes,
                1 if npr.released_code else cfg.embed_dim,
                npr.em_iters,
                npr.momentum,
                released_code=npr.released_code,
            )
            if npr.with_mapping_text:  # built but unused by the released code; kept for checkpoint parity
                self.img_encoder.mapping_text = ProjectMLP(C, 4096, 256)
        else:
            self.text_npr = None

    # ------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def logit_scale_value(self) -> float:
        """Image-text inverse temperature s = min(exp(logit_scale), 100)."""
        return float(self.logit_scale.detach().exp().clamp(max=100))

    def frozen_prefixes(self) -> list[str]:
        """State-dict prefixes holding package-shipped frozen weights (not saved in checkpoints)."""
        if self.img_encoder.hybrid is not None and self.img_encoder.hybrid.frozen:
            return ["img_encoder.hybrid.backbone."]
        return []

    def load_frozen_weights(self) -> None:
        """Load package-shipped weights of the demo variant (no-op for the paper presets)."""
        if self.img_encoder.hybrid is not None:
            self.img_encoder.hybrid.load_pretrained()

    def stem_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen hybrid stem only: images [B, 3, H, W] -> backbone features [B, 112, H/16, W/16]."""
        if self.img_encoder.hybrid is None:
            raise ValueError("stem features exist only for the hybrid (efficientnet_lite0) stem")
        return self.img_encoder.hybrid.features(images)

    # ------------------------------------------------------------------------------------------------
    def encode_image(
        self,
        images: torch.Tensor | None = None,
        *,
        stem_feats: torch.Tensor | None = None,
        dense: bool = False,
        stage_inputs: bool = False,
    ) -> ImageOutput:
        """Encode images.

        Args:
            images: [B, 3, H, W] ImageNet-normalised, H and W multiples of 16.
            stem_feats: instead of images, precomputed frozen-stem features [B, 112, h, w].
            dense: also project every final token (``group_emb``) for segmentation.
            stage_inputs: also keep each grouping stage's input tokens [B, N_i, C] in
                ``out.vision.stage_inputs`` (inspection hook; the per-stage group centres, assignments and
                NPR prototypes / responsibilities are always in ``out.vision.groupings`` / ``.nprs``).

        Returns:
            ImageOutput (see its fields).
        """
        enc = self.img_encoder
        if stem_feats is not None:
            tokens, grid = enc.hybrid.embed_features(stem_feats)
        elif images is not None:
            tokens, grid = enc.embed(images)
        else:
            raise ValueError("encode_image needs images or stem_feats")
        vis = enc.forward_tokens(tokens, grid, keep_stage_inputs=stage_inputs)
        if self.cfg.pool == "projected":
            group_emb = self.img_projector(vis.tokens)  # [B, S, D]
            image_emb = group_emb.mean(dim=1)
        else:
            image_emb = self.img_projector(vis.tokens.mean(dim=1))
            group_emb = self.img_projector(vis.tokens, update_stats=False) if dense else None
        return ImageOutput(
            image_emb=image_emb,
            group_emb=group_emb,
            assign_soft=[g.soft for g in vis.groupings],
            assign_hard=[g.hard for g in vis.groupings],
            grid=grid,
            vision=vis,
        )

    def encode_text(self, texts: list[str] | torch.Tensor) -> torch.Tensor:
        """texts (strings or CLIP token ids [B, L]) -> projected caption embeddings [B, D], not normalised."""
        return self.text_projector(self.text_encoder(texts).pooled)

    @torch.no_grad()
    def class_embeddings(self, names: list[str], templates: list[str], batch_size: int = 256) -> torch.Tensor:
        """Class embeddings [C, D]: each template filled with the name and embedded, the projected
        embeddings averaged over templates, then L2-normalised (GroupViT's ``build_text_embedding``)."""
        if not names:
            raise ValueError("class_embeddings needs at least one class name")
        was_training = self.training
        self.eval()
        texts = [t.format(n) for n in names for t in templates]
        embs = torch.cat(
            [self.encode_text(texts[i : i + batch_size]).float() for i in range(0, len(texts), batch_size)]
        )
        embs = embs.reshape(len(names), len(templates), -1).mean(dim=1)
        self.train(was_training)
        return F.normalize(embs, dim=-1)

    # ------------------------------------------------------------------------------------------------
    def forward_train(
        self,
        texts: list[str] | torch.Tensor,
        images: torch.Tensor | None = None,
        *,
        stem_feats: torch.Tensor | None = None,
        return_embeddings: bool = False,
        ml_prompts: list[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One training forward.

        Args:
            texts: B captions (strings or token ids [B, L]).
            images: [B, 3, H, W] normalised (or ``stem_feats`` for the frozen hybrid stem).
            return_embeddings: also return "image_emb" [B, D] and "text_emb" [B, D], the inputs of
                L_itc (for GradCache, docs/TRAINING.md §4).
            ml_prompts: with ``multi_label`` > 0, for GradCache: encode these prompts (a chunk of the
                step's prompts, built by the caller) instead of this batch's own, skip L_ml and return
                its inputs "ml_side" ([B, D] or [B, S, D]) and "prompt_emb" [len(ml_prompts), D].

        Returns:
            dict with "loss" (total), "loss_itc", with ``multi_label`` > 0 "loss_multi_label"
            (:func:`~pgseg_core.losses.multi_label.multi_label_contrastive`, weighted by
            ``multi_label_weight`` in the total), and with NPR "loss_pg" plus its parts "loss_pg_1",
            "loss_pg_2", ..., "loss_pg_text" and the fractions of matched pairs HRS kept in each,
            "hrs_kept_1", ..., "hrs_kept_text" (detached, in [0, 1]; the loop logs them to metrics.jsonl).
        """
        img = self.encode_image(images, stem_feats=stem_feats)
        text_feats = self.text_encoder(texts)
        use_ml = self.cfg.multi_label > 0
        if use_ml:
            # several processes: the global prompts, this rank encodes its share (losses/multi_label.py)
            if ml_prompts is None:
                mine, targets = self.rank_prompts(texts)
            else:
                mine, targets = list(ml_prompts), None
            prompt_pooled = self.text_encoder(mine).pooled if mine else text_feats.pooled[:0]
            # captions and prompts share one projector pass (one BatchNorm batch), as in GroupViT
            both = self.text_projector(torch.cat([text_feats.pooled, prompt_pooled.to(text_feats.pooled)]))
            text_emb, prompt_emb = both[: len(texts)], both[len(texts) :]
        else:
            text_emb = self.text_projector(text_feats.pooled)
        losses = {"loss_itc": image_text_contrastive(img.image_emb, text_emb, self.logit_scale)}
        total = losses["loss_itc"]
        if use_ml:
            if self.cfg.multi_label_pool == "groups":
                side = self.img_projector(img.vision.tokens, update_stats=False)  # [B, S, D]
            else:
                side = img.image_emb  # [B, D]
            if targets is None:  # GradCache takes L_ml over the whole step (train/gradcache.py)
                losses.update(ml_side=side, prompt_emb=prompt_emb)
            else:
                ml = multi_label_contrastive(
                    side, prompt_emb, targets.to(side.device), self.multi_label_logit_scale
                )
                losses["loss_multi_label"] = ml
                total = total + self.cfg.multi_label_weight * ml
        if self.text_npr is not None:
            pg = self._prototype_losses(img.vision, text_feats)
            losses.update(pg)
            total = total + pg["loss_pg"]
        losses["loss"] = total
        if return_embeddings:
            losses.update(image_emb=img.image_emb, text_emb=text_emb)
        return losses

    def caption_prompts(self, texts: list[str]) -> tuple[list[str], torch.Tensor]:
        """Prompts of the multi-label loss (docs/METHOD.md §2.2) for a batch of captions.

        :func:`~pgseg_core.losses.caption_prompts.build_prompts` with the nouns of
        ``multi_label_nouns``, the templates of ``multi_label_templates`` (``single``:
        ``multi_label_template``) and ``multi_label_pad``; up to ``multi_label`` prompts per caption.

        Returns:
            (the P distinct prompts, in order of first use; bool targets [B, P], True where caption b
            uses prompt p).

        Raises:
            ValueError: texts given as token ids (the prompts need the caption strings).
            DependencyError: ``multi_label_nouns = nltk`` without nltk or its tagger data.
        """
        if isinstance(texts, torch.Tensor):
            raise ValueError("the multi-label loss needs caption strings, not token ids")
        cfg = self.cfg
        if cfg.multi_label_templates == "single":
            templates = [cfg.multi_label_template]
        else:
            templates = template_set(cfg.multi_label_templates)
        nouns = noun_source(cfg.multi_label_nouns)
        return build_prompts(list(texts), cfg.multi_label, nouns, templates, cfg.multi_label_pad)

    def rank_prompts(self, texts: list[str]) -> tuple[list[str], torch.Tensor]:
        """The multi-label prompts this process encodes, and the global targets.

        The ranks' :meth:`caption_prompts` are gathered into the global batch's distinct prompts
        (:func:`~pgseg_core.losses.caption_prompts.gather_prompt_sets`; one process: unchanged) and this
        rank keeps its contiguous share (:func:`~pgseg_core.losses.multi_label.prompt_share`).

        Returns:
            (this rank's prompts, bool targets [G, P] of the G global captions over the P global prompts).
        """
        prompts, targets = gather_prompt_sets(*self.caption_prompts(texts))
        return prompts[prompt_share(len(prompts))], targets

    def _prototype_losses(self, vis: VisionOutput, text_feats) -> dict[str, torch.Tensor]:
        npr = self.cfg.npr
        scale = self.img_encoder.logit_scale
        maximize, rel = not npr.released_code, npr.released_code
        out: dict[str, torch.Tensor] = {}
        image_terms = []
        for i, (grouping, proto) in enumerate(zip(vis.groupings, vis.nprs)):
            perm = hungarian_match(grouping.centres, proto.prototypes, maximize=maximize)
            matched = torch.gather(proto.prototypes, 1, perm.unsqueeze(-1).expand_as(proto.prototypes))
            term = prototype_group_loss(
                grouping.centres, matched, scale, npr.hrs_threshold, npr.released_code
            )
            out[f"loss_pg_{i + 1}"] = term.detach()
            out[f"hrs_kept_{i + 1}"] = hrs_kept_fraction(grouping.centres, matched, npr.hrs_threshold, rel)
            image_terms.append(term)
        centres = vis.groupings[-1].centres  # [B, S_last, C]
        if npr.released_code:
            groups_t = centres.mean(dim=-1, keepdim=True)  # [B, S, 1]
            protos_t = self.text_npr(text_feats.pooled.detach())  # [B, K, 1]
        else:  # docs/METHOD.md §3.5: masked statistics, gradient to the centres only
            groups_t = project_frozen(self.img_projector, centres)  # [B, S, D]
            mask = text_npr_mask(text_feats.mask, causal=self.cfg.text.tower == "transformer")
            tok = project_valid_tokens(self.text_projector, text_feats.tokens, mask)  # [B, L, D]
            protos_t = self.text_npr(tok, mask)  # [B, K, D]
        perm = hungarian_match(groups_t, protos_t, maximize=maximize)
        matched = torch.gather(protos_t, 1, perm.unsqueeze(-1).expand_as(protos_t))
        text_term = prototype_group_loss(groups_t, matched, scale, npr.hrs_threshold, npr.released_code)
        out["loss_pg_text"] = text_term.detach()
        out["hrs_kept_text"] = hrs_kept_fraction(groups_t, matched, npr.hrs_threshold, rel)
        out["loss_pg"] = npr.weight * (sum(image_terms) + npr.text_weight * text_term)
        return out
