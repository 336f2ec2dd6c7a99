"""Segmenter facade, per-image output files, palette and overlay."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pgseg_core.config import EvalConfig
from pgseg_core.errors import ConfigError
from pgseg_core.inference import ClassSpec, TorchEncoder, embed_classes
from pgseg_core.segment.segmenter import Segmenter
from pgseg_core.viz.overlay import render_overlay
from pgseg_core.viz.palette import PALETTE, colorize, label_to_palette_png

COLOURS = {"red": 0, "green": 1, "blue": 2}


class ColourModel(torch.nn.Module):
    """Fake PGSeg-contract model: one stage of 3 groups = dominant colour channel of each 16×16 patch."""

    def encode_image(self, images: torch.Tensor, dense: bool = False) -> SimpleNamespace:
        b = images.shape[0]
        tokens = F.avg_pool2d(images, 16)  # [B,3,h,w]
        a0 = (20.0 * tokens.flatten(2)).softmax(dim=1)  # [B,3,N]
        return SimpleNamespace(
            image_emb=tokens.mean(dim=(2, 3)),
            group_emb=torch.eye(3).expand(b, 3, 3).clone(),
            assign_soft=[a0],
            assign_hard=[a0],
            grid=tuple(tokens.shape[-2:]),
        )

    def class_embeddings(self, names: list[str], templates: list[str]) -> torch.Tensor:
        emb = torch.full((len(names), 3), 0.05)
        for i, n in enumerate(names):
            emb[i, COLOURS[n]] = 1.0
        return F.normalize(emb, dim=-1)

    def logit_scale_value(self) -> float:
        return 100.0


def _cfg() -> EvalConfig:
    return EvalConfig(short_side=48, max_long=256, mode="slide", crop=48, stride=32, bg_thresh=0.5, top_k=0)


def _red_green(h: int = 48, w: int = 80) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, : w // 2, 0] = 255
    img[:, w // 2 :, 1] = 255
    return img


def test_segmenter_predict() -> None:
    seg = Segmenter(ColourModel(), ["green", "red"], _cfg(), "cpu")
    res = seg.predict(_red_green())
    assert res.classes == ["green", "red"]
    assert res.label.shape == (48, 80) and res.scores.shape == (3, 48, 80)
    assert (res.label[:, :30] == 2).all() and (res.label[:, 50:] == 1).all()
    with pytest.raises(ConfigError):
        Segmenter(ColourModel(), ["red", "red"], _cfg(), "cpu")


def test_segmenter_run_outputs_and_failures(tmp_path: Path) -> None:
    good = tmp_path / "in" / "photo.png"
    good.parent.mkdir()
    Image.fromarray(_red_green()).save(good)
    same_stem = tmp_path / "in2" / "photo.jpg"
    same_stem.parent.mkdir()
    Image.fromarray(_red_green(40, 40)).save(same_stem)
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"this is not an image")
    missing = tmp_path / "in" / "missing.png"
    out = tmp_path / "out"
    ticks: list[tuple[int, int]] = []

    names = ["red", "green", "blue"]
    ce = embed_classes(ColourModel(), ClassSpec.from_names(names), ["{}"], "cpu")
    segmenter = Segmenter(ColourModel(), names, _cfg(), "cpu", ce, encoder=TorchEncoder(ColourModel(), "cpu"))
    summary = segmenter.run(
        [good, broken, same_stem], out,
        missing=[(str(missing), "not found")], progress=lambda d, t, info: ticks.append((d, t)),
    )  # fmt: skip
    assert summary.processed == 2
    assert summary.num_failed == 2 and len(summary.failed) == 2
    assert {Path(f["image"]).name for f in summary.failed} == {"broken.jpg", "missing.png"}
    assert all(f["error"] for f in summary.failed)
    as_dict = summary.to_dict()
    assert as_dict["num_failed"] == 2 and as_dict["text_cache"] == "off" and "feature_cache" not in as_dict
    assert ticks == [(1, 4), (2, 4), (3, 4), (4, 4)]

    label_img = Image.open(out / "photo_label.png")
    assert label_img.mode == "P" and label_img.size == (80, 48)
    label = np.asarray(label_img)
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    assert (label[:, :30] == 1).all() and (label[:, 50:] == 2).all()
    assert label_img.getpalette()[:9] == list(PALETTE[:3].reshape(-1))

    overlay = Image.open(out / "photo_overlay.png")
    assert overlay.mode == "RGB" and overlay.size[0] == 80 and overlay.size[1] > 48

    meta = json.loads((out / "photo.json").read_text())
    assert set(meta) == {"image", "width", "height", "classes", "background_pixels", "bg_thresh"}
    assert (meta["width"], meta["height"], meta["bg_thresh"]) == (80, 48, 0.5)
    assert {c["name"] for c in meta["classes"]} == {"red", "green"}
    for c in meta["classes"]:
        assert set(c) == {"name", "index", "pixels", "fraction", "score"}
        assert c["pixels"] == int((label == c["index"]).sum())
        assert c["fraction"] == pytest.approx(c["pixels"] / (80 * 48))
        assert 0.0 < c["score"] <= 1.0
    assert meta["background_pixels"] + sum(c["pixels"] for c in meta["classes"]) == 80 * 48

    # the second "photo" got its own stem; no temporary files are left behind
    assert (out / "photo-1_label.png").exists() and (out / "photo-1.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_palette_png_roundtrip_and_colours(tmp_path: Path) -> None:
    label = np.array([[0, 1, 2], [255, 3, 254]], dtype=np.int64)
    path = label_to_palette_png(label, tmp_path / "sub" / "l.png")
    img = Image.open(path)
    assert img.mode == "P"
    np.testing.assert_array_equal(np.asarray(img), label)
    assert tuple(PALETTE[0]) == (0, 0, 0) and tuple(PALETTE[255]) == (255, 255, 255)
    assert len({tuple(c) for c in PALETTE[1:255]}) == 254  # all class colours distinct
    assert colorize(label).shape == (2, 3, 3)
    with pytest.raises(ValueError):
        label_to_palette_png(np.array([[300]]), tmp_path / "bad.png")


def test_render_overlay_legend() -> None:
    img = np.full((40, 200, 3), 128, dtype=np.uint8)
    label = np.zeros((40, 200), dtype=np.int64)
    label[:, 100:] = 2
    label[0, 0] = 255
    out = render_overlay(img, label, ["cat", "dog"], alpha=0.5)
    assert out.mode == "RGB" and out.size[0] == 200 and out.size[1] > 40
    arr = np.asarray(out)
    np.testing.assert_array_equal(arr[5, 10], [128, 128, 128])  # background untinted
    expected = np.round(0.5 * 128 + 0.5 * PALETTE[2].astype(float))
    np.testing.assert_allclose(arr[5, 150], expected, atol=1)
    legend = arr[40:]
    assert (np.abs(legend.astype(int) - PALETTE[2]).sum(axis=-1) == 0).any()  # dog's patch is drawn
    assert not (np.abs(legend.astype(int) - PALETTE[1]).sum(axis=-1) == 0).any()  # cat absent
    with pytest.raises(ValueError):
        render_overlay(img, label[:10], ["cat", "dog"])


def test_segmenter_with_synonyms_and_background_words() -> None:
    spec = ClassSpec((("green",), ("red", "blue")), ())
    res = Segmenter(ColourModel(), spec, _cfg(), "cpu").predict(_red_green())
    assert res.classes == ["green", "red"]
    assert (res.label[:, :30] == 2).all() and (res.label[:, 50:] == 1).all()
    # "red" as a background word: the red half becomes background
    res = Segmenter(ColourModel(), ClassSpec((("green",),), ("red",)), _cfg(), "cpu").predict(_red_green())
    assert (res.label[:, :30] == 0).all() and (res.label[:, 50:] == 1).all()
