"""Segment building blocks: input resolution, output planning, COCO RLE, batched inference, text cache."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pgseg_core.checkpoint import checkpoint_sha256
from pgseg_core.config import EvalConfig
from pgseg_core.errors import ConfigError
from pgseg_core.inference import (
    ClassSpec,
    TorchEncoder,
    embed_classes,
    predict,
    predict_batch,
    prepare_image,
    slide_windows,
)
from pgseg_core.segment.inputs import resolve_inputs
from pgseg_core.segment.outputs import coco_rle_record, parse_formats, plan_outputs
from pgseg_core.segment.text_cache import cached_class_embeddings
from test_segment_outputs import ColourModel


def _tree(root: Path) -> Path:
    for rel in ("a.jpg", "b.PNG", "notes.txt", "sub/c.jpg", "sub/deeper/d.png", ".hidden/e.jpg"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".txt":
            p.write_text("x")
        else:
            Image.new("RGB", (4, 4)).save(p)
    return root


def _rels(res) -> list[str]:
    return [im.rel for im in res.images]


def test_directory_flat_and_recursive(tmp_path):
    root = _tree(tmp_path / "photos")
    assert _rels(resolve_inputs([str(root)])) == ["a.jpg", "b.PNG"]
    assert _rels(resolve_inputs([str(root)], recursive=True)) == [
        "a.jpg",
        "b.PNG",
        "sub/c.jpg",
        "sub/deeper/d.png",
    ]


def test_files_globs_duplicates_and_missing(tmp_path, monkeypatch):
    root = _tree(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    res = resolve_inputs(["photos/a.jpg", "photos/**/*.jpg", "photos/a.jpg", "nope.jpg", "photos/*.gif"])
    assert _rels(res) == ["a.jpg", "sub/c.jpg"]  # '**' below the fixed prefix 'photos'; a.jpg once
    assert res.missing == [("nope.jpg", "not found"), ("photos/*.gif", "pattern matched no image")]
    assert [im.path for im in res.images][0] == Path("photos/a.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "add --recursive" in resolve_inputs([str(empty)]).missing[0][1]
    assert root.is_dir()


def test_stdin_lines(tmp_path):
    root = _tree(tmp_path / "photos")
    stdin = io.StringIO(f"{root / 'a.jpg'}\n\n{root / 'sub'}\n{root / 'missing.png'}\r\n")
    res = resolve_inputs(["-"], stdin=stdin)
    assert _rels(res) == ["a.jpg", "c.jpg"]
    assert res.missing == [(str(root / "missing.png"), "not found")]
    assert resolve_inputs(["-"]).missing[0][0] == "-"  # no stdin given


def test_plan_outputs_mirror_and_clashes(tmp_path):
    plans = plan_outputs(["cat.jpg", "sub/dog.png", "cat.png", "CAT.jpg"], tmp_path, ("png", "coco-rle"))
    assert [p.stem_rel for p in plans] == ["cat", "sub/dog", "cat-1", "CAT-2"]
    assert plans[1].files == {
        "png": tmp_path / "sub/dog_label.png",
        "coco-rle": tmp_path / "sub/dog_rle.json",
    }
    assert parse_formats("json, rle,png") == ("png", "json", "coco-rle")
    with pytest.raises(ConfigError, match="unknown output format svg"):
        parse_formats("png,svg")


def test_coco_rle_decodes_to_the_label_map():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (23, 31))
    label[:5] = 0
    scores = rng.random((4, 23, 31)).astype(np.float32)
    rec = coco_rle_record(label, scores, ["cat", "dog", "sky"], "x.jpg")
    assert [a["category_id"] for a in rec["annotations"]] == [1, 2, 3]
    for ann in rec["annotations"]:
        assert isinstance(ann["segmentation"]["counts"], str)
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        decoded = mask_utils.decode(rle)
        np.testing.assert_array_equal(decoded, (label == ann["category_id"]).astype(np.uint8))
        assert ann["area"] == int((label == ann["category_id"]).sum())
    assert rec["categories"][2] == {"id": 3, "name": "sky"}


class _SynonymColours(ColourModel):
    """ColourModel that also knows 'crimson' (= red) and 'black' (no colour)."""

    def class_embeddings(self, names, templates):
        known = {"crimson": "red"}
        emb = super().class_embeddings([known.get(n, n) if n != "black" else "red" for n in names], templates)
        for i, n in enumerate(names):
            if n == "black":
                emb[i] = torch.nn.functional.normalize(torch.ones(3), dim=0)
        return emb


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_predict_batch_equals_predict(mode):
    model = _SynonymColours()
    cfg = EvalConfig(short_side=48, max_long=256, mode=mode, crop=48, stride=32, bg_thresh=0.5, top_k=2)
    spec = ClassSpec((("red", "crimson"), ("green",), ("blue",)), ("black",))
    ce = embed_classes(model, spec, ["{}"], "cpu")
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 255, s, dtype=np.uint8) for s in [(48, 80, 3), (60, 48, 3), (48, 80, 3), (30, 30, 3)]
    ]
    encoder = TorchEncoder(model, "cpu")
    got = predict_batch(
        encoder, [prepare_image(im, cfg) for im in images], ce, 100.0, cfg, "cpu", max_crops=64
    )
    for im, (label, scores) in zip(images, got):
        ref_label, ref_scores = predict(model, im, ce, cfg, "cpu")
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
        np.testing.assert_array_equal(label, ref_label)
    # crops of the same size share one forward: one call per distinct crop size
    sizes = set()
    for im in images:
        h, w = prepare_image(im, cfg).x.shape[-2:]
        windows = slide_windows(h, w, 48, 32) if mode == "slide" else [(0, h, 0, w)]
        sizes |= {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in windows}
    assert encoder.calls == len(sizes) < len(images)


@pytest.mark.parametrize("rule", ["groupvit", "prob"])
@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_batched_and_single_image_paths_are_identical_under_either_rule(rule, mode):
    """predict_batch (several images, same-size crops through one forward) and predict (one image, then
    the feature-cache scoring) pick the rule from eval.rule and share the window accumulator: equal bits."""
    model = _SynonymColours()
    cfg = EvalConfig(
        short_side=48, max_long=256, mode=mode, crop=48, stride=32, bg_thresh=0.5, top_k=2, rule=rule,
        prob_thresh=0.4,
    )  # fmt: skip
    spec = ClassSpec((("red", "crimson"), ("green",), ("blue",)), ("black",))
    ce = embed_classes(model, spec, ["{}"], "cpu")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, s, dtype=np.uint8) for s in [(48, 80, 3), (60, 48, 3), (48, 80, 3)]]
    got = predict_batch(
        TorchEncoder(model, "cpu"), [prepare_image(im, cfg) for im in images], ce, 100.0, cfg, "cpu"
    )
    labels = set()
    for im, (label, scores) in zip(images, got):
        ref_label, ref_scores = predict(model, im, ce, cfg, "cpu")
        assert scores.shape == ref_scores.shape == (4, *im.shape[:2])
        np.testing.assert_array_equal(scores, ref_scores)
        np.testing.assert_array_equal(label, ref_label)
        labels |= set(np.unique(label).tolist())
    assert len(labels) >= 2, "agreement on a constant label map would prove little"


def test_text_cache_hit_skips_the_text_tower(tmp_path):
    calls = []

    class Counting(ColourModel):
        def class_embeddings(self, names, templates):
            calls.append(list(names))
            return super().class_embeddings(names, templates)

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights v1")
    spec = ClassSpec.from_names(["red", "green"])
    digest = checkpoint_sha256(ckpt)[:16]
    first, hit1 = cached_class_embeddings(
        Counting(), spec, ["{}"], "cpu", digest=digest, cache_dir=tmp_path / "c"
    )
    second, hit2 = cached_class_embeddings(
        Counting(), spec, ["{}"], "cpu", digest=digest, cache_dir=tmp_path / "c"
    )
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    torch.testing.assert_close(first.emb, second.emb)
    # another template, another class list or new weights: a miss
    cached_class_embeddings(Counting(), spec, ["a {}"], "cpu", digest=digest, cache_dir=tmp_path / "c")
    cached_class_embeddings(
        Counting(), ClassSpec.from_names(["red"]), ["{}"], "cpu", digest=digest, cache_dir=tmp_path / "c"
    )
    ckpt.write_bytes(b"weights v2")
    cached_class_embeddings(
        Counting(), spec, ["{}"], "cpu", digest=checkpoint_sha256(ckpt)[:16], cache_dir=tmp_path / "c"
    )
    assert len(calls) == 4 and len(os.listdir(tmp_path / "c")) == 4


@pytest.mark.cuda
def test_bf16_autocast_on_cuda_agrees_with_fp32():
    import math

    from pgseg_core.config import load_config
    from pgseg_core.models.factory import create_model

    cfg = load_config("pgseg-tiny")
    torch.manual_seed(3)
    model = create_model(cfg.model).eval().cuda()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
        model.logit_scale.fill_(math.log(100.0))
    eval_cfg = EvalConfig(short_side=64, mode="whole", bg_thresh=0.0, top_k=0)
    ce = embed_classes(
        model, ClassSpec.from_names(["cat", "dog", "tree", "car"]), ["a photo of a {}."], "cuda"
    )
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    prepared = [prepare_image(image, eval_cfg)]
    bf16 = TorchEncoder(model, "cuda", bf16=True)
    fp32 = TorchEncoder(model, "cuda", bf16=False)
    assert bf16.bf16 and not fp32.bf16
    ((lb, sb),) = predict_batch(bf16, prepared, ce, model.logit_scale_value(), eval_cfg, "cuda")
    ((lf, sf),) = predict_batch(fp32, prepared, ce, model.logit_scale_value(), eval_cfg, "cuda")
    assert sb.dtype == np.float32 and (lb == lf).mean() > 0.9
