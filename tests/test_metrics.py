"""Confusion-matrix metrics (mmseg formulas) and the split evaluator with a fake model and fake shards."""

from __future__ import annotations

import json
import math
import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgseg_core.config import EvalConfig
from pgseg_core.errors import DataError
from pgseg_core.eval.runs import evaluate
from pgseg_core.eval.stream import evaluate_samples
from pgseg_core.eval.metrics import confusion_matrix, harmonic_mean, metrics_from_confusion


def _loop_metrics(preds: list[np.ndarray], gts: list[np.ndarray], c: int, ignore: int = 255) -> dict:
    """Independent per-class loop over the pixels (no confusion matrix)."""
    inter = np.zeros(c)
    area_pred = np.zeros(c)
    area_gt = np.zeros(c)
    for p, g in zip(preds, gts):
        valid = g != ignore
        for k in range(c):
            pk = (p == k) & valid
            gk = (g == k) & valid
            inter[k] += np.sum(pk & gk)
            area_pred[k] += np.sum(pk)
            area_gt[k] += np.sum(gk)
    iou, acc = [], []
    for k in range(c):
        union = area_pred[k] + area_gt[k] - inter[k]
        iou.append(inter[k] / union * 100 if union else float("nan"))
        acc.append(inter[k] / area_gt[k] * 100 if area_gt[k] else float("nan"))
    iou_ok = [v for v in iou if not math.isnan(v)]
    acc_ok = [v for v in acc if not math.isnan(v)]
    return {
        "iou": iou,
        "acc": acc,
        "mIoU": sum(iou_ok) / len(iou_ok),
        "mAcc": sum(acc_ok) / len(acc_ok),
        "aAcc": inter.sum() / area_gt.sum() * 100,
    }


def _assert_same(m: dict, ref: dict, names: list[str]) -> None:
    for i, n in enumerate(names):
        np.testing.assert_allclose(m["per_class"][n]["IoU"], ref["iou"][i], equal_nan=True)
        np.testing.assert_allclose(m["per_class"][n]["Acc"], ref["acc"][i], equal_nan=True)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert m[key] == pytest.approx(ref[key])


def test_random_maps_match_loop() -> None:
    rng = np.random.default_rng(0)
    c = 6
    preds, gts = [], []
    conf = np.zeros((c, c), dtype=np.int64)
    for _ in range(4):
        g = rng.integers(0, c, (17, 23))
        g[rng.random(g.shape) < 0.1] = 255
        p = rng.integers(0, c - 1, (17, 23))  # class c-1 is never predicted
        preds.append(p)
        gts.append(g)
        conf += confusion_matrix(p, g, c)
    names = [f"c{i}" for i in range(c)]
    m = metrics_from_confusion(conf, names)
    _assert_same(m, _loop_metrics(preds, gts, c), names)
    assert m["per_class"]["c5"]["IoU"] == 0.0


def test_hand_made_case() -> None:
    # classes: 0 bg, 1 cat, 2 dog (predicted, absent from GT), 3 car (absent from both)
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = np.array([[0, 2, 1, 1], [0, 3, 1, 0]])  # pred 3 only on an ignored pixel
    conf = confusion_matrix(pred, gt, 4)
    assert conf.dtype == np.int64 and conf.shape == (4, 4)
    assert conf.sum() == 7  # the ignored pixel is skipped
    assert conf[0, 0] == 2 and conf[0, 2] == 1 and conf[1, 1] == 3 and conf[1, 0] == 1
    names = ["background", "cat", "dog", "car"]
    m = metrics_from_confusion(conf, names)
    pc = m["per_class"]
    assert pc["background"]["IoU"] == pytest.approx(2 / 4 * 100)  # TP 2, FN 1 (dog), FP 1 (cat pixel)
    assert pc["cat"]["IoU"] == pytest.approx(3 / 4 * 100)
    assert pc["dog"]["IoU"] == 0.0  # predicted but absent from GT
    assert math.isnan(pc["dog"]["Acc"])
    assert math.isnan(pc["car"]["IoU"]) and math.isnan(pc["car"]["Acc"])  # absent from both: excluded
    assert m["mIoU"] == pytest.approx((50 + 75 + 0) / 3)
    assert m["mAcc"] == pytest.approx((2 / 3 * 100 + 3 / 4 * 100) / 2)
    assert m["aAcc"] == pytest.approx(5 / 7 * 100)
    assert m["num_classes_evaluated"] == 3
    _assert_same(m, _loop_metrics([pred], [gt], 4), names)


def test_confusion_accepts_tensors_and_checks_values() -> None:
    rng = np.random.default_rng(1)
    g = rng.integers(0, 3, (5, 7))
    p = rng.integers(0, 3, (5, 7))
    from_tensors = confusion_matrix(torch.from_numpy(p), torch.from_numpy(g).to(torch.uint8), 3)
    np.testing.assert_array_equal(from_tensors, confusion_matrix(p, g, 3))
    with pytest.raises(DataError):
        confusion_matrix(p, np.full((5, 7), 9), 3)
    with pytest.raises(ValueError):
        confusion_matrix(p, g[:4], 3)
    with pytest.raises(ValueError):
        metrics_from_confusion(np.zeros((3, 3)), ["a", "b"])


def test_harmonic_mean() -> None:
    assert harmonic_mean(50.0, 50.0) == pytest.approx(50.0)
    assert harmonic_mean(40.0, 60.0) == pytest.approx(48.0)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert math.isnan(harmonic_mean(float("nan"), 3.0))


# ------------------------------------------------------------------------------------------------------
# evaluator


class HalfModel(torch.nn.Module):
    """Fake PGSeg-contract model: two groups, left / right half of the token grid; group i ~ class axis i."""

    def encode_image(self, images: torch.Tensor, dense: bool = False) -> SimpleNamespace:
        b, _, h, w = images.shape
        gh, gw = h // 16, w // 16
        left = (torch.arange(gw) < gw / 2).float().expand(gh, gw).reshape(-1)
        a0 = torch.stack([left, 1 - left])[None].expand(b, 2, gh * gw) * 0.9 + 0.05
        return SimpleNamespace(
            image_emb=torch.ones(b, 2),
            group_emb=torch.eye(2).expand(b, 2, 2).clone(),
            assign_soft=[a0],
            assign_hard=[a0.round()],
            grid=(gh, gw),
        )

    def class_embeddings(self, names: list[str], templates: list[str]) -> torch.Tensor:
        emb = torch.zeros(len(names), 2)
        for i in range(len(names)):
            emb[i, i % 2] = 1.0
        return F.normalize(emb + 0.01, dim=-1)

    def logit_scale_value(self) -> float:
        return 100.0


def _half_sample(key: str, h: int = 32, w: int = 64, right_label: int = 2) -> SimpleNamespace:
    label = np.zeros((h, w), dtype=np.uint8)
    label[:, : w // 2] = 1
    label[:, w // 2 :] = right_label
    label[0, 0] = 255
    return SimpleNamespace(key=key, image=np.zeros((h, w, 3), np.uint8), label=label, classes=[], split="x")


def _cfg() -> EvalConfig:
    return EvalConfig(short_side=32, max_long=128, mode="whole", crop=32, stride=16, bg_thresh=0.5, top_k=0)


def test_evaluate_samples_perfect_and_size_mismatch() -> None:
    m = evaluate_samples(HalfModel(), [_half_sample("a"), _half_sample("b")], ["cat", "dog"], _cfg(), "cpu")
    assert m["num_images"] == 2
    assert m["per_class"]["cat"]["IoU"] == pytest.approx(100.0)
    assert m["per_class"]["dog"]["IoU"] == pytest.approx(100.0)
    assert math.isnan(m["per_class"]["background"]["IoU"])
    assert m["mIoU"] == pytest.approx(100.0) and m["mIoU_fg"] == pytest.approx(100.0)
    bad = _half_sample("broken-key")
    bad.label = bad.label[:10]
    with pytest.raises(DataError, match="broken-key"):
        evaluate_samples(HalfModel(), [bad], ["cat", "dog"], _cfg(), "cpu")
    wrong = _half_sample("bad-values", right_label=7)
    with pytest.raises(DataError, match="bad-values"):
        evaluate_samples(HalfModel(), [wrong], ["cat", "dog"], _cfg(), "cpu")


def test_evaluate_with_fake_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    index = {
        "schema": 1,
        "splits": {
            "train": {"shards": [], "count": 10},
            "val-caption": {"shards": [], "count": 3, "classes": ["cat", "dog"]},
            "val-heldout": {"shards": [], "count": 2, "classes": ["cow", "emu"]},
        },
    }
    samples = {
        "val-caption": [_half_sample(f"c{i}") for i in range(3)],
        # heldout: the right half is labelled "cow" (1) but predicted "emu" (2)
        "val-heldout": [_half_sample(f"h{i}", right_label=1) for i in range(2)],
    }
    shards_mod = ModuleType("pgseg_core.data.shards")
    shards_mod.read_index = lambda spec: index
    loader_mod = ModuleType("pgseg_core.data.loader")
    loader_mod.iter_val_samples = lambda spec, split: iter(samples[split])
    monkeypatch.setitem(sys.modules, "pgseg_core.data.shards", shards_mod)
    monkeypatch.setitem(sys.modules, "pgseg_core.data.loader", loader_mod)

    ticks: list[tuple[int, int | None]] = []
    res = evaluate(
        HalfModel(),
        "fake",
        splits=None,
        eval_cfg=_cfg(),
        device="cpu",
        progress=lambda d, t: ticks.append((d, t)),
    )
    assert list(res.splits) == ["val-caption", "val-heldout"]
    assert ticks[-1] == (5, 5)
    assert res.seen_mIoU == pytest.approx(100.0)
    held = res.splits["val-heldout"]
    assert held["per_class"]["cow"]["IoU"] == pytest.approx(1023 / 2047 * 100)  # left TP, right FN
    assert held["per_class"]["emu"]["IoU"] == 0.0
    assert res.unseen_mIoU == pytest.approx(1023 / 2047 * 100 / 2)
    assert res.hIoU == pytest.approx(harmonic_mean(res.seen_mIoU, res.unseen_mIoU))
    data = json.loads(res.to_json())
    assert data["splits"]["val-caption"]["per_class"]["background"]["IoU"] is None  # NaN -> null
    assert data["eval_config"]["mode"] == "whole"

    one = evaluate(HalfModel(), "fake", splits=["val-caption"], eval_cfg=_cfg(), device="cpu", max_images=1)
    assert one.splits["val-caption"]["num_images"] == 1 and one.hIoU is None
    with pytest.raises(DataError, match="val-nope"):
        evaluate(HalfModel(), "fake", splits=["val-nope"], eval_cfg=_cfg(), device="cpu")
    with pytest.raises(DataError, match="train"):
        evaluate(HalfModel(), "fake", splits=["train"], eval_cfg=_cfg(), device="cpu")
