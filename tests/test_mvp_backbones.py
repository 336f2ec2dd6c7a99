"""Frozen backbones: MaskCLIP dense readouts of open_clip models (random weights, built locally), prompt
insertion at the token-embedding level, and that MVP-SEG training changes only prompts and scales."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _mvp_fixtures import TINY_RN, tiny_open_clip
from pgseg_core.backbones import load_backbone
from pgseg_core.errors import ConfigError
from pgseg_core.mvp.config import MVPConfig
from pgseg_core.mvp.losses import classification_loss, image_labels, segmentation_loss, total_loss
from pgseg_core.mvp.model import MVPSeg


@pytest.fixture(scope="module")
def vit_ref(tmp_path_factory):
    return tiny_open_clip(tmp_path_factory.mktemp("vit"))


def test_vit_dense_is_value_path_of_last_block(vit_ref):
    bb = load_backbone(vit_ref)
    x = torch.randn(2, 3, 48, 64)
    dense = bb.dense(x)
    assert dense.shape == (2, 32, 3, 4)
    assert torch.allclose(dense.norm(dim=1), torch.ones(2, 3, 4), atol=1e-5)
    want = min(float(bb.clip.logit_scale.detach().exp()), 100.0)
    assert bb.logit_scale == pytest.approx(want, rel=1e-6)  # the baseline's softmax scale
    # independent computation: run the tower with the last block's attention replaced by its value path
    v = bb.clip.visual
    last = v.transformer.resblocks[-1]
    width = v.conv1.out_channels
    clip_x = x * bb._scale + bb._shift
    tokens = []

    def grab(_m, inp, _out):
        tokens.append(inp[0])

    handle = last.register_forward_hook(grab)
    v.output_tokens = True
    with torch.no_grad():
        # at 64x64 (the config size) no positional interpolation is needed
        v(F.interpolate(clip_x, size=(64, 64)))
    handle.remove()
    v.output_tokens = False
    y = last.ln_1(tokens[0])
    y = F.linear(y, last.attn.in_proj_weight[2 * width :], last.attn.in_proj_bias[2 * width :])
    y = v.ln_post(last.attn.out_proj(y)[:, 1:]) @ v.proj  # [2, 16, 32]
    expected = F.normalize(y, dim=-1).transpose(1, 2).reshape(2, 32, 4, 4)
    got = bb.dense(F.interpolate(x, size=(64, 64)))
    assert torch.allclose(got, expected, atol=1e-5)


def test_resnet_dense_is_v_then_c_projection(tmp_path):
    bb = load_backbone(tiny_open_clip(tmp_path, "pgseg-test-rn", TINY_RN))
    x = torch.randn(1, 3, 64, 96)
    dense = bb.dense(x)
    assert dense.shape == (1, 32, 2, 3)
    v = bb.clip.visual
    with torch.no_grad():
        feat = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x * bb._scale + bb._shift)))))
        pix = feat[0, :, 1, 2]
        expected = v.attnpool.c_proj(v.attnpool.v_proj(pix))
    assert torch.allclose(dense[0, :, 1, 2], F.normalize(expected, dim=0), atol=1e-5)


def test_prompt_context_equal_to_words_reproduces_the_plain_text(vit_ref):
    bb = load_backbone(vit_ref)
    ctx = bb.text.word_embeddings("a photo of a")
    assert ctx.shape == (4, 32)
    with torch.no_grad():
        prompted = bb.text.encode_prompted(ctx, ["cat", "potted plant"])
        plain = bb.text.encode_texts(["a photo of a cat.", "a photo of a potted plant."])
    assert torch.allclose(prompted, plain, atol=1e-5)


def test_bad_backbone_references(tmp_path):
    with pytest.raises(ConfigError, match="open_clip:MODEL:WEIGHTS"):
        load_backbone("clip:foo")
    with pytest.raises(ConfigError, match="WEIGHTS"):
        load_backbone("open_clip:ViT-B-16")


def test_only_prompts_and_scales_learn(vit_ref):
    bb = load_backbone(vit_ref)
    before = {k: v.clone() for k, v in bb.state_dict(keep_vars=False).items()}
    buffers = {k: v.clone() for k, v in bb.named_buffers()}
    model = MVPSeg(bb, MVPConfig(views=3, n_ctx=4), generator=torch.Generator().manual_seed(0))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == ["log_tau1", "log_tau2", "prompts.ctx"]
    ctx0 = model.prompts.ctx.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, 0] = 255
    for _ in range(2):
        with torch.no_grad():
            dense = bb.dense(torch.randn(2, 3, 64, 64))
        out = model(dense, model.class_embeddings(["cat", "dog", "tree"]))
        loss = total_loss(
            segmentation_loss(out.gated, target),
            classification_loss(out.scores, image_labels(target, 3)),
            model.oc_loss(),
            (1.0, 0.5, 0.1),
        )
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for n, p in bb.named_parameters())
        opt.step()
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in bb.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert not torch.equal(model.prompts.ctx.detach(), ctx0)
    assert set(model.trainable_state()) == {"log_tau1", "log_tau2", "prompts.ctx"}


def test_forward_composes_views_fusion_and_gate_by_hand(vit_ref):
    model = MVPSeg(
        load_backbone(vit_ref), MVPConfig(views=2, n_ctx=2, ctx_init="", gamma=3.0, tau1=7.0, tau2=0.5)
    )
    g = torch.Generator().manual_seed(0)
    dense = F.normalize(torch.randn(1, 32, 2, 3, generator=g), dim=1)
    emb = F.normalize(torch.randn(3, 4, 32, generator=g), dim=-1)  # P = 3 prompts, C = 4 classes
    with torch.no_grad():
        out = model(dense, emb)
    b, y, x, c = 0, 1, 2, 3
    cos = [[float(dense[b, :, y, x] @ emb[p, k]) for k in range(4)] for p in range(3)]
    logits = [7.0 * (cos[1][k] + cos[2][k]) for k in range(4)]
    fused = torch.softmax(torch.tensor(logits), 0)[c]
    m0 = torch.einsum("dhw,d->hw", dense[b], emb[0, c]).flatten()
    score = torch.sigmoid((m0 * torch.softmax(3.0 * m0, 0)).sum() / 0.5)
    assert float(out.fused[b, c, y, x]) == pytest.approx(float(fused), rel=1e-4)
    assert float(out.scores[b, c]) == pytest.approx(float(score), rel=1e-4)
    assert float(out.gated[b, c, y, x]) == pytest.approx(float(fused * score), rel=1e-4)
    model.cfg.gpr = False
    with torch.no_grad():
        assert torch.equal(model(dense, emb).gated, out.fused)
