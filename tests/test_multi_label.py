"""GroupViT's multi-label contrastive loss (docs/METHOD.md §2.2): caption phrase splitting, the loss
against a plain numpy re-computation, the per-group (max) variant, and the model option."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from pgseg_core.config import load_config
from pgseg_core.losses.caption_nouns import caption_nouns
from pgseg_core.data.sources.demo.vocab import CAPTION_TEMPLATES as _TEMPLATES, class_phrase as _phrase
from pgseg_core.losses.multi_label import multi_label_contrastive, share_sizes, share_slices
from pgseg_core.models.factory import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------------------
# caption phrases


def _vocab():
    from pgseg_core.data.sources.demo import load_vocab

    return load_vocab()


def test_caption_nouns_recover_every_demo_template():
    """Every demo caption template with every class phrase (articles, "a bunch of") gives back the names."""
    specs = _vocab()["caption"] + _vocab()["heldout"]
    names = [s["name"] for s in specs]
    phrases = [_phrase(s) for s in specs]
    checked = 0
    for n, templates in _TEMPLATES.items():
        for template in templates:
            for i in range(len(specs)):
                idx = [(i + 7 * j) % len(specs) for j in range(n)]
                caption = template.format(*[phrases[k] for k in idx])
                assert caption_nouns(caption) == [names[k] for k in idx], caption
                checked += 1
    assert checked == len(specs) * sum(len(t) for t in _TEMPLATES.values())


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("A Photo of a  Cat.", ["cat"]),
        ("two dogs and the snow!", ["dogs", "snow"]),
        ("a cat, a cat and a dog.", ["cat", "dog"]),  # duplicates kept once
        ("a photo of.", []),
        ("", []),
    ],
)
def test_caption_nouns_other_shapes(caption, expected):
    assert caption_nouns(caption) == expected


# ---------------------------------------------------------------------------------------------------------
# the loss against numpy


def _l2(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _log_softmax(row):
    m = row.max()
    return row - (m + math.log(sum(math.exp(v - m) for v in row)))


def np_groupvit_multi_label(img, prompts, scale):
    """GroupViT's formulation: img [B, D], prompts [B, M, D] (each image's own M prompts, all distinct).
    i2t: image vs all B·M prompts, soft target 1/M on its own; t2i: each prompt vs the B images, target 1."""
    b, m, _ = prompts.shape
    i, p = _l2(img), _l2(prompts.reshape(b * m, -1))
    logits = scale * i @ p.T  # [B, B·M]
    i2t = np.mean([-np.sum(_log_softmax(logits[r])[r * m : (r + 1) * m]) / m for r in range(b)])
    t2i = np.mean([-_log_softmax(logits[:, c])[c // m] for c in range(b * m)])
    return 0.5 * (i2t + t2i)


def test_loss_equals_groupvit_when_no_prompt_is_shared():
    g = torch.Generator().manual_seed(0)
    b, m, d = 5, 3, 16
    img = torch.randn(b, d, generator=g)
    prompts = torch.randn(b, m, d, generator=g)
    targets = torch.zeros(b, b * m, dtype=torch.bool)
    for r in range(b):
        targets[r, r * m : (r + 1) * m] = True
    scale = torch.tensor(math.log(10.0))
    got = multi_label_contrastive(img, prompts.reshape(b * m, d), targets, scale)
    want = np_groupvit_multi_label(img.double().numpy(), prompts.double().numpy(), 10.0)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_shared_prompts_are_positives_for_every_image_naming_them():
    """Independent loop computation with prompts shared between images (merged columns)."""
    g = torch.Generator().manual_seed(1)
    img = torch.randn(4, 8, generator=g)
    prm = torch.randn(3, 8, generator=g)
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.bool)
    s = 5.0
    logits = s * _l2(img.double().numpy()) @ _l2(prm.double().numpy()).T
    t = targets.numpy()
    i2t = np.mean(
        [-sum(_log_softmax(logits[r])[c] for c in range(3) if t[r, c]) / t[r].sum() for r in range(4)]
    )
    t2i = np.mean(
        [-sum(_log_softmax(logits[:, c])[r] for r in range(4) if t[r, c]) / t[:, c].sum() for c in range(3)]
    )
    got = multi_label_contrastive(img, prm, targets, torch.tensor(math.log(s)))
    assert float(got) == pytest.approx(0.5 * (i2t + t2i), rel=1e-5)


def test_scale_is_clamped_at_100():
    g = torch.Generator().manual_seed(2)
    img, prm = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    t = torch.eye(3, dtype=torch.bool)
    assert float(multi_label_contrastive(img, prm, t, torch.tensor(9.0))) == pytest.approx(
        float(multi_label_contrastive(img, prm, t, torch.tensor(math.log(100.0)))), rel=1e-6
    )


def test_group_variant_scores_the_best_group():
    """[B, S, D]: equals the image-level loss on the per-prompt best group; only best groups get gradient."""
    g = torch.Generator().manual_seed(3)
    groups = torch.randn(3, 4, 8, generator=g, requires_grad=True)
    prm = torch.randn(2, 8, generator=g)
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    scale = torch.tensor(math.log(7.0))
    loss = multi_label_contrastive(groups, prm, targets, scale)
    gn = _l2(groups.detach().double().numpy())
    pn = _l2(prm.double().numpy())
    sim = np.einsum("bsd,pd->bsp", gn, pn).max(axis=1)
    logits = 7.0 * sim
    t = targets.numpy()
    i2t = np.mean(
        [-sum(_log_softmax(logits[r])[c] for c in range(2) if t[r, c]) / t[r].sum() for r in range(3)]
    )
    t2i = np.mean(
        [-sum(_log_softmax(logits[:, c])[r] for r in range(3) if t[r, c]) / t[:, c].sum() for c in range(2)]
    )
    assert float(loss.detach()) == pytest.approx(0.5 * (i2t + t2i), rel=1e-5)
    loss.backward()
    best_pairs = {(b, s) for b in range(3) for s in np.einsum("bsd,pd->bsp", gn, pn)[b].argmax(axis=0)}
    for b, s in itertools.product(range(3), range(4)):
        has_grad = bool(groups.grad[b, s].abs().sum() > 0)
        assert has_grad == ((b, s) in best_pairs)


def test_one_group_equals_image_level():
    g = torch.Generator().manual_seed(4)
    img = torch.randn(3, 8, generator=g)
    prm = torch.randn(3, 8, generator=g)
    t = torch.eye(3, dtype=torch.bool)
    scale = torch.tensor(2.0)
    assert float(multi_label_contrastive(img[:, None], prm, t, scale)) == pytest.approx(
        float(multi_label_contrastive(img, prm, t, scale)), rel=1e-6
    )


@pytest.mark.parametrize("n,parts", [(7, 3), (2, 4), (0, 2), (9, 1), (12, 4)])
def test_share_slices_cover_the_rows_in_near_equal_contiguous_parts(n, parts):
    slices = share_slices(n, parts)
    rows = [i for s in slices for i in range(n)[s]]
    assert rows == list(range(n)) and len(slices) == parts
    sizes = [len(range(n)[s]) for s in slices]
    assert sizes == share_sizes(n, parts) and sizes == sorted(sizes, reverse=True)
    assert max(sizes) - min(sizes) <= 1


def test_bad_targets_raise():
    img, prm = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match="targets must be"):
        multi_label_contrastive(img, prm, torch.ones(2, 3, dtype=torch.bool), torch.tensor(0.0))
    with pytest.raises(ValueError, match="every image needs a prompt"):
        multi_label_contrastive(img, prm, torch.tensor([[1, 0], [0, 0]], dtype=torch.bool), torch.tensor(0.0))


# ---------------------------------------------------------------------------------------------------------
# the model option


def _model(**extra):
    torch.manual_seed(0)
    cfg = load_config("pgseg-tiny", extra)
    return create_model(cfg), cfg


CAPTIONS = ["a photo of a cat and a dog.", "a cat.", "there is a bus next to an apple.", "two trees"]


def test_default_and_paper_presets_have_no_multi_label_parameter():
    for name in ("pgseg-tiny", "groupvit-s", "pgseg-s"):
        cfg = load_config(name)
        assert cfg.model.multi_label == 0
    model, _ = _model()
    assert not hasattr(model, "multi_label_logit_scale")
    assert "loss_multi_label" not in model.forward_train(CAPTIONS, torch.randn(4, 3, 64, 64))


SINGLE = {
    "model.multi_label_templates": "single",
    "model.multi_label_pad": False,
    "model.multi_label_nouns": "rules",
}


def test_caption_prompts_targets():
    model, _ = _model(**{"model.multi_label": 2, **SINGLE})
    prompts, targets = model.caption_prompts(CAPTIONS)
    assert prompts == [
        "a photo of a cat.",
        "a photo of a dog.",
        "a photo of a bus.",
        "a photo of a apple.",
        "a photo of a trees.",
    ]
    assert targets.tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="caption strings"):
        model.caption_prompts(torch.zeros(2, 5, dtype=torch.long))


def test_caption_prompts_sample_at_most_m_nouns():
    model, _ = _model(**{"model.multi_label": 1, **SINGLE})
    _, targets = model.caption_prompts(["a cat, a dog and a bus."] * 3)
    assert targets.sum(dim=1).tolist() == [1, 1, 1]


@pytest.mark.parametrize("pool", ["image", "groups"])
def test_forward_train_adds_the_weighted_term_with_gradients(pool):
    model, _ = _model(
        **{"model.multi_label": 3, "model.multi_label_pool": pool, "model.multi_label_weight": 0.5}
    )
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    out = model.forward_train(CAPTIONS, images)
    assert out["loss_multi_label"].ndim == 0 and torch.isfinite(out["loss_multi_label"])
    rest = out["loss_itc"] + out["loss_pg"]
    assert float(out["loss"]) == pytest.approx(float(rest + 0.5 * out["loss_multi_label"]), rel=1e-5)
    out["loss"].backward()
    assert model.multi_label_logit_scale.grad is not None and model.multi_label_logit_scale.grad.abs() > 0
    assert model.text_projector.linear_out.weight.grad.abs().sum() > 0
    assert model.img_projector.linear_out.weight.grad.abs().sum() > 0


def test_multi_label_checkpoint_round_trip(tmp_path):
    from pgseg_core.checkpoint import load_checkpoint, save_checkpoint

    model, cfg = _model(**{"model.multi_label": 3})
    with torch.no_grad():
        model.multi_label_logit_scale.fill_(1.25)
    save_checkpoint(tmp_path / "last.pt", model, cfg, 3)
    loaded, info = load_checkpoint(tmp_path / "last.pt")
    assert info.config.model.multi_label == 3
    assert float(loaded.multi_label_logit_scale) == pytest.approx(1.25)
    json.dumps(info.config.to_dict())
