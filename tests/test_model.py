"""The full model on the tiny preset: training losses, gradients, image/text encoding, class embeddings,
NPR buffer behaviour, and the parameter counts and image-branch FLOPs of the paper presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pgseg_core.config import load_config
from pgseg_core.models.factory import create_model

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = ["a cat sitting on a red mat", "two dogs in the snow", "a tree", "an old car on a road"]

VARIANTS = {
    "pgseg": {},
    "released": {"model.npr.released_code": True},
    "groupvit": {"model.npr.enabled": False},
}


def _model(variant="pgseg", seed=0, **extra):
    torch.manual_seed(seed)
    cfg = load_config("pgseg-tiny", {**VARIANTS[variant], **extra})
    return create_model(cfg), cfg


def _grouping_blocks(model):
    return [layer.downsample for layer in model.img_encoder.layers if layer.downsample is not None]


def _images(b=4, h=64, w=64, seed=0):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_train_keys_and_finite(variant):
    model, cfg = _model(variant)
    model.train()
    out = model.forward_train(CAPTIONS, _images())
    if variant == "groupvit":
        assert set(out) == {"loss", "loss_itc"}
        assert model.text_npr is None and not hasattr(model.img_encoder, "logit_scale")
    else:
        parts = {
            "loss_pg",
            "loss_pg_1",
            "loss_pg_2",
            "loss_pg_text",
            "hrs_kept_1",
            "hrs_kept_2",
            "hrs_kept_text",
        }
        assert set(out) == {"loss", "loss_itc"} | parts
        for k in ("hrs_kept_1", "hrs_kept_2", "hrs_kept_text"):
            assert 0.0 <= out[k].item() <= 1.0 and not out[k].requires_grad
    for k, v in out.items():
        assert v.ndim == 0 and torch.isfinite(v), k
    assert out["loss"].requires_grad
    # ln(B) is the chance level of a symmetric InfoNCE; a random model is near it
    assert 0.0 < out["loss_itc"].item() < 3 * math.log(len(CAPTIONS))


@pytest.mark.parametrize("variant", ["pgseg", "released"])
def test_total_loss_is_recomposed_from_parts(variant):
    model, cfg = _model(variant)
    model.train()
    out = model.forward_train(CAPTIONS, _images())
    npr = cfg.model.npr
    parts = {k: v.item() for k, v in out.items()}
    pg = npr.weight * (parts["loss_pg_1"] + parts["loss_pg_2"] + npr.text_weight * parts["loss_pg_text"])
    assert parts["loss_pg"] == pytest.approx(pg, rel=1e-5, abs=1e-7)
    assert parts["loss"] == pytest.approx(parts["loss_itc"] + pg, rel=1e-5, abs=1e-7)
    for k in ("loss_pg_1", "loss_pg_2", "loss_pg_text"):
        assert not out[k].requires_grad  # logged parts are detached copies
        assert parts[k] >= 0.0


def test_groupvit_total_is_itc():
    model, _ = _model("groupvit")
    out = model.forward_train(CAPTIONS, _images())
    assert out["loss"].item() == out["loss_itc"].item()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_backward_reaches_every_parameter(variant):
    model, _ = _model(variant)
    model.train()
    model.forward_train(CAPTIONS, _images())["loss"].backward()
    named = dict(model.named_parameters())
    must = [
        "img_encoder.patch_embed.proj.weight",
        "img_encoder.pos_embed",
        "img_encoder.layers.0.group_token",
        "img_encoder.layers.1.group_token",
        "img_encoder.layers.0.blocks.0.attn.qkv.weight",
        "img_encoder.layers.0.downsample.assign.q_proj.weight",
        "img_encoder.layers.0.downsample.assign.k_proj.weight",
        "text_encoder.token_embedding.weight",
        "text_encoder.transformer.resblocks.0.attn.in_proj_weight",
        "img_projector.linear_out.weight",
        "text_projector.linear_out.weight",
        "logit_scale",
    ]
    if variant != "groupvit":
        must += [
            "img_encoder.logit_scale",
            "img_encoder.layers.0.downsample_spatial.mapping_x.linear_out.weight",
            "img_encoder.layers.1.downsample_spatial.mapping_x.linear_hidden.0.weight",
        ]
    for name in must:
        assert name in named, name
    for name, p in named.items():
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient"


def test_pg_loss_alone_reaches_pg_scale_and_mapping_x():
    model, _ = _model("pgseg")
    model.train()
    out = model.forward_train(CAPTIONS, _images())
    out["loss_pg"].backward()
    enc = model.img_encoder
    assert enc.logit_scale.grad is not None and float(enc.logit_scale.grad) != 0.0
    assert enc.layers[0].downsample_spatial.mapping_x.linear_out.weight.grad.abs().sum() > 0
    assert model.logit_scale.grad is None or float(model.logit_scale.grad) == 0.0


def test_logit_scale_inits_and_value():
    model, cfg = _model("pgseg")
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert model.img_encoder.logit_scale.item() == pytest.approx(math.log(1 / 0.1), rel=1e-6)
    assert model.logit_scale_value() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.logit_scale_value() == 100.0


def test_encode_image_non_square_eval():
    model, cfg = _model("pgseg")
    model.eval()
    B = 2
    with torch.no_grad():
        out = model.encode_image(_images(B, 96, 128), dense=True)
    v = cfg.model.vision
    S0, S1 = v.num_output_groups
    assert out.grid == (6, 8)
    assert out.image_emb.shape == (B, cfg.model.embed_dim)
    assert out.group_emb.shape == (B, S1, cfg.model.embed_dim)
    assert [tuple(a.shape) for a in out.assign_soft] == [(B, S0, 48), (B, S1, S0)]
    assert [tuple(a.shape) for a in out.assign_hard] == [(B, S0, 48), (B, S1, S0)]
    for soft, hard in zip(out.assign_soft, out.assign_hard):
        torch.testing.assert_close(soft.sum(1), torch.ones(soft.shape[0], soft.shape[2]))
        assert ((soft >= 0) & (soft <= 1)).all()
        # eval hard assignment = argmax of the soft one, one-hot over groups
        torch.testing.assert_close(hard.sum(1), torch.ones(hard.shape[0], hard.shape[2]))
        assert torch.equal(hard.argmax(1), soft.argmax(1))
    # embeddings: projector of the mean token / of each token (eval: running BN stats)
    with torch.no_grad():
        toks = out.vision.tokens
        torch.testing.assert_close(out.image_emb, model.img_projector(toks.mean(1)))
        torch.testing.assert_close(out.group_emb[:, 2], model.img_projector(toks[:, 2]))


def test_encode_image_rejects_non_multiple_of_patch():
    model, _ = _model("groupvit")
    model.eval()
    with pytest.raises(ValueError):
        model.encode_image(_images(1, 70, 64))


def test_encode_image_eval_is_deterministic_and_batch_independent():
    model, _ = _model("pgseg")
    model.eval()
    imgs = _images(3, 64, 96)
    with torch.no_grad():
        a = model.encode_image(imgs).image_emb
        b = model.encode_image(imgs[1:2]).image_emb
    torch.testing.assert_close(a[1:2], b, rtol=1e-4, atol=1e-5)


def test_training_assignment_hard_by_default_and_soft_after_switch():
    model, _ = _model("pgseg")
    model.train()
    with torch.no_grad():
        out = model.encode_image(_images(2))
    for hard in out.assign_hard:
        assert torch.all((hard.abs() < 1e-6) | ((hard - 1).abs() < 1e-6))
    model.img_encoder.set_hard_assignment(False)
    assert all(blk.assign.hard is False for blk in _grouping_blocks(model))
    with torch.no_grad():
        out = model.encode_image(_images(2))
    for used, soft in zip(out.assign_hard, out.assign_soft):
        torch.testing.assert_close(used, soft)  # the assignment used is the plain softmax over groups
        assert ((used > 1e-6) & (used < 1 - 1e-6)).any()
    model.img_encoder.set_hard_assignment(True)
    assert all(blk.assign.hard is True for blk in _grouping_blocks(model))


def test_set_hard_assignment_respects_config():
    model, _ = _model("pgseg", **{"model.vision.hard_assignment": False})
    model.img_encoder.set_hard_assignment(True)
    assert all(blk.assign.hard is False for blk in _grouping_blocks(model))


def test_encode_text_strings_and_ids_agree():
    from pgseg_core.models.text import tokenize

    model, cfg = _model("pgseg")
    model.eval()
    with torch.no_grad():
        a = model.encode_text(CAPTIONS[:2])
        b = model.encode_text(tokenize(CAPTIONS[:2], cfg.model.text.context_length))
    assert a.shape == (2, cfg.model.embed_dim)
    torch.testing.assert_close(a, b)


def test_class_embeddings_are_normalised_raw_template_means():
    """GroupViT's build_text_embedding: average the projected (unnormalised) embeddings, then normalise."""
    model, cfg = _model("pgseg")
    model.train()
    names = ["cat", "dog", "tree"]
    templates = ["a photo of a {}.", "art of the {}.", "a {} in a video game."]
    emb = model.class_embeddings(names, templates, batch_size=4)
    assert model.training  # mode restored
    assert emb.shape == (3, cfg.model.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    model.eval()
    with torch.no_grad():
        for i, n in enumerate(names):
            per_t = torch.stack([model.encode_text([t.format(n)])[0] for t in templates])
            ref = F.normalize(per_t.mean(0), dim=-1)
            torch.testing.assert_close(emb[i], ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        model.class_embeddings([], templates)


def test_image_npr_buffers_update_in_default_mode_only():
    for variant, should_change in (("pgseg", True), ("released", False)):
        model, _ = _model(variant)
        model.train()
        bufs = {
            i: layer.downsample_spatial.mu.clone()
            for i, layer in enumerate(model.img_encoder.layers)
            if layer.downsample_spatial is not None
        }
        text_mu = model.text_npr.mu.clone()
        model.forward_train(CAPTIONS, _images())
        for i, mu0 in bufs.items():
            changed = not torch.equal(model.img_encoder.layers[i].downsample_spatial.mu, mu0)
            assert changed == should_change, (variant, i)
        assert not torch.equal(model.text_npr.mu, text_mu), variant  # text buffer updates in training
        # eval forwards never move the image buffers
        model.eval()
        bufs = {i: model.img_encoder.layers[i].downsample_spatial.mu.clone() for i in bufs}
        with torch.no_grad():
            model.encode_image(_images(2))
        for i, mu0 in bufs.items():
            assert torch.equal(model.img_encoder.layers[i].downsample_spatial.mu, mu0)


def test_released_text_prototypes_are_one_dimensional():
    model, cfg = _model("released")
    assert model.text_npr.mu.shape == (1, cfg.model.npr.text_prototypes, 1)
    model2, cfg2 = _model("pgseg")
    assert model2.text_npr.mu.shape == (1, cfg2.model.npr.text_prototypes, cfg2.model.embed_dim)


def test_npr_reconstruction_changes_grouping_input():
    """With NPR the grouping of a stage sees tokens + recon: zeroing mapping_x's output layer reproduces the
    grouping of the same weights without that residual."""
    model, _ = _model("pgseg")
    model.eval()
    imgs = _images(2)
    with torch.no_grad():
        a = model.encode_image(imgs).image_emb
        for layer in model.img_encoder.layers:
            if layer.downsample_spatial is not None:
                layer.downsample_spatial.mapping_x.linear_out.weight.zero_()
                layer.downsample_spatial.mapping_x.linear_out.bias.zero_()
        b = model.encode_image(imgs).image_emb
        for layer in model.img_encoder.layers:
            layer.downsample_spatial = None
        c = model.encode_image(imgs).image_emb
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, c)


# ---------------------------------------------------------------------------------------------------------
# parameter counts of the paper presets (docs/METHOD.md §1.6)


def _image_branch_flops(model, size: int = 224) -> int:
    """FLOPs (2 x MACs, torch.utils.flop_counter) of encode_image + projector, batch 1, eval, dense=False.

    The CPU SDPA kernel has no FLOP formula in FlopCounterMode (it counts 0); it is given the standard
    attention formula (2 matmuls) so the count matches the reference, whose attention is explicit matmuls.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop(query_shape, key_shape, value_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    model.eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model.encode_image(x, dense=False)
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def paper_param_counts():
    counts = {}
    torch.manual_seed(0)
    m = create_model("groupvit-s")
    counts["groupvit-s"] = sum(p.numel() for p in m.parameters())
    counts["groupvit-s flops"] = _image_branch_flops(m)
    del m
    m = create_model(load_config("pgseg-s", {"model.npr.with_mapping_text": True}))
    counts["pgseg-s+mapping_text"] = sum(p.numel() for p in m.parameters())
    counts["mapping_text"] = sum(p.numel() for p in m.img_encoder.mapping_text.parameters())
    counts["pgseg-s flops"] = _image_branch_flops(m)  # mapping_text is not on the image path
    del m
    return counts


def test_groupvit_s_parameter_count(paper_param_counts):
    assert paper_param_counts["groupvit-s"] == 55_726_609


def test_pgseg_s_parameter_count(paper_param_counts):
    assert paper_param_counts["pgseg-s+mapping_text"] == 64_677_394
    assert 2.6e6 < paper_param_counts["mapping_text"] < 2.7e6  # "2.63M in an unused mapping_text head"


# FLOPs of the image branch at 224x224 (docs/METHOD.md §1.6: torch FlopCounter, batch 1, eval, 2 x MACs)


def test_groupvit_s_image_flops(paper_param_counts):
    assert paper_param_counts["groupvit-s flops"] == pytest.approx(7.98e9, rel=0.02)


def test_pgseg_s_image_flops(paper_param_counts):
    assert paper_param_counts["pgseg-s flops"] == pytest.approx(9.84e9, rel=0.02)


def test_text_prototypes_must_match_the_final_groups():
    """The text term matches text prototypes to final groups one to one: a mismatch is a config error up front
    (it used to surface as an IndexError inside the first training step)."""
    from pgseg_core.errors import ConfigError

    cfg = load_config("pgseg-tiny")
    final = cfg.model.vision.num_output_groups[-1]
    bad = load_config("pgseg-tiny", {"model.npr.text_prototypes": final + 1})
    with pytest.raises(
        ConfigError, match=f"text_prototypes \\({final + 1}\\).*num_output_groups \\({final}\\)"
    ):
        create_model(bad.model)
    plain = load_config("pgseg-tiny", {"model.npr.text_prototypes": final + 1, "model.npr.enabled": False})
    assert create_model(plain.model).text_npr is None  # no NPR, nothing to match


def test_stage_lists_of_different_lengths_are_a_config_error():
    from pgseg_core.errors import ConfigError

    bad = load_config("pgseg-tiny", {"model.vision.depths": [1, 1]})
    with pytest.raises(ConfigError, match=r"depths \(2\).*one entry per stage"):
        create_model(bad.model)
