"""Protocol presets, the prob rule, metrics vs an independent computation, slide coverage, benchmark-dataset
evaluation (fake dataset), sweeps, and the ``pgseg eval --dataset`` CLI path."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _eval_fakes import CountingColourModel, FakeDataset
from pgseg_core.config import EvalConfig
from pgseg_core.errors import ConfigError, DataError
from pgseg_core.eval.runs import evaluate_dataset
from pgseg_core.eval.metrics import ConfusionAccumulator, metrics_from_confusion
from pgseg_core.eval.protocol import list_protocols, model_family, resolve_protocol
from pgseg_core.eval.sweep import parse_sweep
from pgseg_core.inference import (
    ClassSpec,
    embed_classes,
    extract_image_features,
    predict,
    scores_from_features,
)


def _cfg(**kw) -> EvalConfig:
    base = dict(short_side=64, max_long=256, mode="slide", crop=48, stride=32, bg_thresh=0.5, top_k=0)
    base.update(kw)
    return EvalConfig(**base)


# ------------------------------------------------------------------------------------------------------
# metrics against an independent computation


def _independent(preds, gts, c, ignore=255):
    """Per-class sets of pixel coordinates, no confusion matrix, no bincount."""
    tp, fp, fn, labelled = [0] * c, [0] * c, [0] * c, 0
    for p, g in zip(preds, gts):
        for pv, gv in zip(p.ravel().tolist(), g.ravel().tolist()):
            if gv == ignore:
                continue
            labelled += 1
            if pv == gv:
                tp[gv] += 1
            else:
                fp[pv] += 1
                fn[gv] += 1
    iou = [tp[k] / (tp[k] + fp[k] + fn[k]) * 100 if tp[k] + fp[k] + fn[k] else math.nan for k in range(c)]
    acc = [tp[k] / (tp[k] + fn[k]) * 100 if tp[k] + fn[k] else math.nan for k in range(c)]
    return iou, acc, sum(tp) / labelled * 100


def test_metrics_match_independent_computation_with_ignore_and_absent_classes() -> None:
    rng = np.random.default_rng(5)
    c = 6  # class 4: absent from prediction and ground truth; class 5: predicted only
    preds, gts = [], []
    acc = ConfusionAccumulator(c, "cpu")
    for _ in range(3):
        g = rng.choice([0, 1, 2, 3, 255], size=(17, 23)).astype(np.uint8)
        p = rng.choice([0, 1, 2, 3, 5], size=(17, 23)).astype(np.int64)
        preds.append(p)
        gts.append(g)
        acc.update(torch.from_numpy(p), g)
    m = metrics_from_confusion(acc.numpy(), [f"c{i}" for i in range(c)])
    iou, accs, a_acc = _independent(preds, gts, c)
    for k in range(c):
        np.testing.assert_allclose(m["per_class"][f"c{k}"]["IoU"], iou[k], equal_nan=True)
        np.testing.assert_allclose(m["per_class"][f"c{k}"]["Acc"], accs[k], equal_nan=True)
    assert math.isnan(m["per_class"]["c4"]["IoU"]) and m["per_class"]["c5"]["IoU"] == 0.0
    assert math.isnan(m["per_class"]["c5"]["Acc"])
    assert m["mIoU"] == pytest.approx(np.nanmean(iou))  # class 4 excluded, class 5 counts as 0
    assert m["mAcc"] == pytest.approx(np.nanmean(accs))
    assert m["aAcc"] == pytest.approx(a_acc)
    assert m["num_classes_evaluated"] == 5
    with pytest.raises(DataError, match="label value 9"):
        acc.update(torch.zeros(2, 2, dtype=torch.long), np.full((2, 2), 9, np.uint8))


def test_without_background_shifts_the_classes_and_ignores_background() -> None:
    from pgseg_core.data.loader import ValSample
    from pgseg_core.eval.stream import without_background

    label = np.array([[0, 1, 2], [5, 255, 0]], dtype=np.uint8)
    sample = ValSample("k", np.zeros((2, 3, 3), np.uint8), label.copy(), ["a", "b", "c", "d", "e"], "val")
    (out,) = list(without_background([sample]))
    assert out.label.dtype == np.uint8 and out.label.tolist() == [[255, 0, 1], [4, 255, 255]]
    assert np.array_equal(sample.label, label) and out.key == "k"  # the input is not changed


@pytest.mark.cuda
def test_confusion_accumulates_on_cuda() -> None:
    acc = ConfusionAccumulator(3, "cuda")
    acc.update(torch.tensor([[0, 1], [2, 2]], device="cuda"), torch.tensor([[0, 1], [1, 255]], device="cuda"))
    assert acc.counts.device.type == "cuda"
    np.testing.assert_array_equal(acc.numpy(), [[1, 0, 0], [0, 1, 1], [0, 0, 0]])


# ------------------------------------------------------------------------------------------------------
# slide inference geometry


@pytest.mark.parametrize(
    "hw,crop,stride", [((50, 90), 48, 32), ((64, 64), 48, 16), ((30, 200), 64, 40), ((70, 71), 32, 32)]
)
def test_slide_windows_cover_every_pixel_as_the_stride_rule_says(hw, crop, stride) -> None:
    img = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    cfg = _cfg(crop=crop, stride=stride)
    feats = extract_image_features(CountingColourModel(), img, cfg, "cpu")
    h, w = feats.resized_size

    # mmseg slide_inference, written out per axis: start i·stride, end min(start + crop, size), start pulled
    # back to max(end - crop, 0); grids = max(size - crop + stride - 1, 0) // stride + 1
    def starts(size):
        grids = max(size - crop + stride - 1, 0) // stride + 1
        out = []
        for i in range(grids):
            end = min(i * stride + crop, size)
            out.append((max(end - crop, 0), end))
        return out

    expected = [(y1, y2, x1, x2) for y1, y2 in starts(h) for x1, x2 in starts(w)]
    assert feats.windows == expected
    cover = np.zeros((h, w), dtype=np.int64)
    for y1, y2, x1, x2 in feats.windows:
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1  # every pixel covered
    assert feats.group_emb.shape[0] == len(expected) == feats.image_emb.shape[0]
    assert feats.padded_size[0] % 16 == 0 and feats.padded_size[1] % 16 == 0
    assert feats.grid == (feats.padded_size[0] // 16, feats.padded_size[1] // 16)


def test_predict_equals_features_plus_scores() -> None:
    model = CountingColourModel()
    spec = ClassSpec.from_names(["red", "green"])
    ce = embed_classes(model, spec, ["a photo of a {}."])
    img = np.random.default_rng(1).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    predict(model, img, ce, _cfg(), "cpu")  # warm-up: the first forward may round differently
    l1, s1 = predict(model, img, ce, _cfg(), "cpu")
    l2, s2 = scores_from_features(extract_image_features(model, img, _cfg(), "cpu"), ce, _cfg())
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(s1, s2)


# ------------------------------------------------------------------------------------------------------
# prob rule (SCLIP family, applied to group embeddings)


def test_prob_rule_threshold_and_background_words() -> None:
    model = CountingColourModel()
    img = np.zeros((48, 96, 3), dtype=np.uint8)
    img[:, :32, 0] = 220  # red
    img[:, 32:64, 1] = 220  # green
    img[:, 64:, 2] = 220  # blue: no class of that colour
    cfg = _cfg(rule="prob", logit_scale=20.0, prob_thresh=0.0, mode="whole")
    feats = extract_image_features(model, img, cfg, "cpu")
    ce = embed_classes(model, ClassSpec.from_names(["red", "green"]), ["{}"])
    label, scores = scores_from_features(feats, ce, cfg)
    assert scores.shape == (3, 48, 96)
    np.testing.assert_allclose(scores[1:].sum(0), 1.0, atol=1e-5)  # softmax over the classes
    assert (label[:, :24] == 1).all() and (label[:, 40:56] == 2).all()
    assert set(np.unique(label[:, 72:])) <= {1, 2}  # threshold 0: every pixel takes a class
    # the blue pixels' max probability is 0.5 (two equal classes): a threshold above it makes them background
    label_t, _ = scores_from_features(feats, ce, replace(cfg, prob_thresh=0.6))
    assert (label_t[:, 72:] == 0).all() and (label_t[:, :24] == 1).all()
    # a background word of the blue colour wins the blue pixels; its probability is channel 0
    ce_bg = embed_classes(model, ClassSpec.from_names(["red", "green"], ["sky"]), ["{}"])
    label_b, scores_b = scores_from_features(feats, ce_bg, cfg)
    assert (label_b[:, 72:] == 0).all() and (label_b[:, :24] == 1).all()
    assert scores_b[0, :, 72:].min() > 0.5
    # without background: labels are class indices, no background channel; background words refused
    ce3 = embed_classes(model, ClassSpec.from_names(["red", "green", "blue"]), ["{}"])
    label_n, scores_n = scores_from_features(feats, ce3, cfg, with_background=False)
    assert scores_n.shape == (3, 48, 96)
    assert (label_n[:, :24] == 0).all() and (label_n[:, 72:] == 2).all()
    with pytest.raises(ConfigError, match="background words"):
        scores_from_features(feats, ce_bg, cfg, with_background=False)
    with pytest.raises(ConfigError, match="eval.rule"):
        scores_from_features(feats, ce, replace(cfg, rule="nope"))


# ------------------------------------------------------------------------------------------------------
# protocol presets


def test_protocol_presets_load_and_overrides_apply() -> None:
    assert {"groupvit", "sclip"} <= set(list_protocols())
    gv = resolve_protocol("groupvit", "pc60", "groupvit")
    pg = resolve_protocol("groupvit", "pc60", "pgseg")
    assert gv.eval_cfg.bg_thresh == 0.35 and pg.eval_cfg.bg_thresh == 0.36
    assert resolve_protocol("groupvit", "coco-object", "pgseg").eval_cfg.bg_thresh == 0.85
    assert resolve_protocol("groupvit", "coco-object", "groupvit").eval_cfg.bg_thresh == 0.95
    e = gv.eval_cfg
    assert (e.rule, e.short_side, e.crop, e.stride, e.top_k, e.templates) == (
        "groupvit",
        448,
        448,
        224,
        5,
        ["a photo of a {}."],
    )
    assert any("NPR" in n for n in pg.notes) and gv.class_names == "groupvit"
    sc = resolve_protocol("sclip", "voc21", "pgseg")
    assert (sc.eval_cfg.rule, sc.eval_cfg.short_side, sc.eval_cfg.crop, sc.eval_cfg.stride) == (
        "prob",
        336,
        224,
        112,
    )
    assert sc.eval_cfg.logit_scale == 65.0 and sc.eval_cfg.prob_thresh == 0.1 and sc.class_names == "sclip"
    assert resolve_protocol("sclip", "pc60").eval_cfg.logit_scale == 50.0
    assert resolve_protocol("sclip", "ade20k-150").eval_cfg.logit_scale == 40.0
    assert resolve_protocol("sclip", "cityscapes").eval_cfg.short_side == 560
    assert resolve_protocol("sclip", "coco-stuff-171").eval_cfg.short_side == 448
    # user overrides come last, CLI strings are parsed
    ov = resolve_protocol(
        "groupvit",
        "voc21",
        "pgseg",
        {"eval.bg_thresh": "0.4", "top_k": 3, "eval.templates": "a {}.,itap of a {}."},
    )
    assert ov.eval_cfg.bg_thresh == 0.4 and ov.eval_cfg.top_k == 3
    assert ov.eval_cfg.templates == ["a {}.", "itap of a {}."]
    with pytest.raises(ConfigError, match="did you mean 'bg_thresh'"):
        resolve_protocol("groupvit", "voc21", "pgseg", {"eval.bg_thres": "0.4"})
    with pytest.raises(ConfigError, match="did you mean 'sclip'"):
        resolve_protocol("sclp", "voc21")
    with pytest.raises(ConfigError, match="not an eval setting"):
        resolve_protocol("groupvit", "voc21", "pgseg", {"train.lr": "1"})


def test_model_family_follows_npr() -> None:
    from pgseg_core.config import load_config

    assert model_family(load_config("pgseg-s").model) == "pgseg"
    assert model_family(load_config("groupvit-s").model) == "groupvit"


def test_parse_sweep() -> None:
    s = parse_sweep("bg_thresh=0.3:0.99:0.05")
    assert s.key == "bg_thresh" and len(s.values) == 14 and s.values[0] == 0.3 and s.values[-1] == 0.95
    assert parse_sweep("bg_thresh=0.3:1.0:0.05").values[-1] == 1.0  # 15 points, stop included
    assert parse_sweep("top_k=1:5:2").values == (1, 3, 5)
    assert parse_sweep("eval.prob_thresh=0.1,0.2").values == (0.1, 0.2)
    assert parse_sweep("bg_thresh=0.5").values == (0.5,)
    for bad, msg in [
        ("crop=1:2:1", "cannot sweep"),
        ("bg_thresh=a:b:c", "must look like"),
        ("bg_thresh=", "has no"),
        ("bg_thresh=0.9:0.1:0.1", "STOP >= START"),
        ("top_k=1:2:0.5", "whole numbers"),
        ("bg_thresh", "must look like"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_sweep(bad)


# ------------------------------------------------------------------------------------------------------
# benchmark datasets through the dataset interface


def test_dataset_with_and_without_background() -> None:
    model = CountingColourModel()
    with_bg = FakeDataset(3, has_background=True)
    res = evaluate_dataset(model, with_bg, class_names="sclip", eval_cfg=_cfg(), device="cpu")
    m = res.splits["val"]
    assert with_bg.spec_calls == ["sclip"]
    assert list(m["per_class"]) == ["background", "red", "green"]
    assert m["num_images"] == 3 and res.dataset["has_background"] and res.dataset["num_classes"] == 2
    assert m["mIoU"] > 60  # the colour model segments the bands
    no_bg = FakeDataset(3, has_background=False)
    res2 = evaluate_dataset(model, no_bg, class_names="groupvit", eval_cfg=_cfg(), device="cpu")
    m2 = res2.splits["val"]
    assert list(m2["per_class"]) == ["red", "green", "blue"]  # no background channel
    assert not m2["has_background"] and m2["mIoU_fg"] == pytest.approx(m2["mIoU"])
    # the same pixels, relabelled: the per-class IoU of red / green / (blue = background) agree
    for a, b in [("red", "red"), ("green", "green"), ("background", "blue")]:
        assert m["per_class"][a]["IoU"] == pytest.approx(m2["per_class"][b]["IoU"])


def test_dataset_skips_and_counts_bad_samples() -> None:
    ds = FakeDataset(3, bad_keys=("img_001",))
    res = evaluate_dataset(CountingColourModel(), ds, class_names="groupvit", eval_cfg=_cfg(), device="cpu")
    assert res.splits["val"]["num_images"] == 2
    assert res.splits["val"]["skipped"] == {"count": 1, "keys": ["img_001"]}
    assert res.dataset["skipped"] == 1


def test_sweep_values_equal_separate_runs() -> None:
    model = CountingColourModel()
    ds = FakeDataset(3)
    sweep = parse_sweep("bg_thresh=0.2:0.8:0.3")
    res = evaluate_dataset(model, ds, class_names="groupvit", eval_cfg=_cfg(), device="cpu", sweep=sweep)
    points = res.splits["val"]["sweep"]["points"]
    assert [p["value"] for p in points] == [0.2, 0.5, 0.8]
    for p in points:
        alone = evaluate_dataset(
            model, ds, class_names="groupvit", eval_cfg=_cfg(bg_thresh=p["value"]), device="cpu"
        )
        assert alone.splits["val"]["mIoU"] == p["mIoU"] and alone.splits["val"]["aAcc"] == p["aAcc"]
    assert len({p["mIoU"] for p in points}) > 1  # the threshold matters on this data
    prob = evaluate_dataset(
        model,
        ds,
        class_names="groupvit",
        eval_cfg=_cfg(rule="prob", logit_scale=20.0),
        device="cpu",
        sweep=parse_sweep("prob_thresh=0.3,0.9"),
    )
    for p in prob.splits["val"]["sweep"]["points"]:
        alone = evaluate_dataset(
            model,
            ds,
            class_names="groupvit",
            eval_cfg=_cfg(rule="prob", logit_scale=20.0, prob_thresh=p["value"]),
            device="cpu",
        )
        assert alone.splits["val"]["mIoU"] == p["mIoU"]


def test_sweep_encodes_each_image_once() -> None:
    model = CountingColourModel()
    ds = FakeDataset(2)
    evaluate_dataset(model, ds, class_names="groupvit", eval_cfg=_cfg(), device="cpu")
    one_pass = model.encode_calls
    model.encode_calls = 0
    evaluate_dataset(
        model,
        ds,
        class_names="groupvit",
        eval_cfg=_cfg(),
        device="cpu",
        sweep=parse_sweep("bg_thresh=0.3:1.0:0.05"),
    )
    assert model.encode_calls == one_pass


# ------------------------------------------------------------------------------------------------------
# CLI: pgseg eval --dataset on a pgseg-tiny checkpoint


def test_cli_eval_dataset_protocol_cache_sweep(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    import pgseg_core.api as api
    from pgseg_cli.app import app

    opened: list[tuple] = []

    def fake_open(name, root, split):
        opened.append((name, str(root), split))
        return FakeDataset(2, has_background=True)

    monkeypatch.setattr(api, "_open_dataset", fake_open)
    runner = CliRunner()
    out = tmp_path / "m.json"
    args = [
        "eval",
        "--checkpoint",
        str(tiny_checkpoint),
        "--dataset",
        "pc60",
        "--data-root",
        str(tmp_path),
        "--protocol",
        "groupvit",
        "--cache",
        str(tmp_path / "f.h5"),
        "--sweep",
        "bg_thresh=0.3:0.9:0.3",
        "--output",
        str(out),
        "--device",
        "cpu",
        "--eval.short_side",
        "64",
        "--eval.crop",
        "64",
        "--eval.stride",
        "32",
    ]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert opened == [("pc60", str(tmp_path), "val")]
    assert "sweep of bg_thresh" in result.output and "mIoU" in result.output
    assert "0.36" in result.output  # the PGSeg bg_thresh for Context, chosen because the model has NPR
    m = json.loads(out.read_text())
    assert m["protocol"]["name"] == "groupvit" and m["protocol"]["family"] == "pgseg"
    assert m["eval_config"]["bg_thresh"] == 0.36 and m["eval_config"]["short_side"] == 64
    assert len(m["checkpoint"]["sha256"]) == 64 and m["config_hash"]
    assert m["dataset"]["num_images"] == 2 and m["dataset"]["has_background"]
    assert [p["value"] for p in m["splits"]["val"]["sweep"]["points"]] == [0.3, 0.6, 0.9]
    assert m["cache"]["images_encoded"] == 2 and m["cache"]["images_from_cache"] == 0
    # second run: everything from the cache, same metrics
    result2 = runner.invoke(app, args, catch_exceptions=False)
    assert result2.exit_code == 0, result2.output
    m2 = json.loads(out.read_text())
    assert m2["cache"]["images_from_cache"] == 2 and m2["cache"]["images_encoded"] == 0
    assert m2["splits"]["val"]["mIoU"] == m["splits"]["val"]["mIoU"]
    # another class-independent setting: the cache is refused in one line
    result3 = runner.invoke(app, args[:-2] + ["--eval.stride", "16"])
    assert result3.exit_code == 1
    err = [ln for ln in result3.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "config_hash" in result3.output and "Traceback" not in result3.output
    # bad inputs: unknown protocol, missing --data-root, both --data and --dataset
    bad = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(tiny_checkpoint),
            "--dataset",
            "pc60",
            "--data-root",
            str(tmp_path),
            "--protocol",
            "sclp",
            "--device",
            "cpu",
        ],
    )
    assert bad.exit_code == 1 and "did you mean 'sclip'" in bad.output
    bad = runner.invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "pc60"])
    assert bad.exit_code == 2 and "'--data-root': --dataset pc60 needs" in bad.output  # usage error
    bad = runner.invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint)])
    assert bad.exit_code == 2 and "give either demo shards or a benchmark dataset" in bad.output


def test_channel_argmax_matches_torch_argmax_including_ties() -> None:
    from pgseg_core.inference import channel_argmax

    x = torch.rand(7, 13, 17, generator=torch.Generator().manual_seed(0))
    x[2, :4] = x[5, :4] = 3.0  # ties: the first channel wins
    x[:, 8:] = 0.0  # all equal: channel 0
    assert torch.equal(channel_argmax(x), x.argmax(dim=0))
