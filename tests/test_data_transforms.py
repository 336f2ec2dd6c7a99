"""Image preprocessing and robust loading (pgseg_core.data.transforms)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pgseg_core.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    eval_resize,
    load_image_rgb,
    normalize,
    to_tensor_normalized,
    train_transform,
)
from pgseg_core.errors import DataError


def test_normalize_roundtrip_batched_and_single():
    x = torch.rand(2, 3, 8, 10)
    y = normalize(x)
    assert y.shape == x.shape
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(y, (x - mean) / std)
    assert torch.allclose(denormalize(y), x, atol=1e-6)
    assert normalize(x[0]).shape == (3, 8, 10)
    with pytest.raises(ValueError):
        normalize(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError):
        normalize(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_to_tensor_normalized_pil_and_array():
    arr = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    a = to_tensor_normalized(arr)
    b = to_tensor_normalized(Image.fromarray(arr))
    assert a.shape == (3, 6, 7) and a.dtype == torch.float32
    assert torch.allclose(a, b)
    expect = (arr[2, 3, 1] / 255.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert a[1, 2, 3].item() == pytest.approx(expect, abs=1e-5)
    assert to_tensor_normalized(Image.fromarray(arr[..., 0])).shape == (3, 6, 7)  # greyscale PIL
    with pytest.raises(ValueError):
        to_tensor_normalized(arr.astype(np.float32))


def test_train_transform_and_eval_resize():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 80, 3), dtype=np.uint8))
    t = train_transform(32, crop_scale=(0.5, 1.0), hflip=True)
    x = t(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert lo - 1e-4 <= x.min().item() and x.max().item() <= hi + 1e-4
    assert eval_resize(img, 24).size == (24, 24)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_load_grey_16bit_alpha_palette_cmyk(tmp_path):
    grey = _save(Image.new("L", (5, 4), 77), tmp_path / "g.png")
    out = load_image_rgb(grey)
    assert out.mode == "RGB" and out.size == (5, 4) and out.getpixel((0, 0)) == (77, 77, 77)

    arr16 = np.full((4, 5), 65535, dtype=np.uint16)
    arr16[0, 0] = 0
    p16 = _save(Image.fromarray(arr16), tmp_path / "g16.png")
    out = np.asarray(load_image_rgb(p16))
    assert out.dtype == np.uint8 and out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent -> white background
    out = load_image_rgb(_save(rgba, tmp_path / "a.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((2, 2)) == (255, 0, 0)
    assert load_image_rgb(tmp_path / "a.png", background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)

    la = Image.new("LA", (3, 3), (10, 0))
    assert load_image_rgb(_save(la, tmp_path / "la.png")).getpixel((1, 1)) == (255, 255, 255)

    pal = Image.new("P", (3, 3), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    assert load_image_rgb(_save(pal, tmp_path / "p.png")).getpixel((1, 1)) == (0, 200, 0)
    pal.info["transparency"] = 1
    assert load_image_rgb(_save(pal, tmp_path / "pt.png", transparency=1)).getpixel((1, 1)) == (255, 255, 255)

    cmyk = Image.new("CMYK", (6, 6), (0, 255, 255, 0))  # red in CMYK
    out = load_image_rgb(_save(cmyk, tmp_path / "c.jpg", quality=95))
    r, g, b = out.getpixel((3, 3))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_load_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    assert load_image_rgb(path).size == (20, 40)


def test_load_errors_are_data_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        load_image_rgb(tmp_path / "missing.png")
    text = tmp_path / "notes.jpg"
    text.write_text("hello, not an image")
    with pytest.raises(DataError, match="not a readable image"):
        load_image_rgb(text)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match="trunc.jpg"):
        load_image_rgb(trunc)
    with pytest.raises(DataError, match="directory"):
        load_image_rgb(tmp_path)
    big = _save(Image.new("RGB", (64, 64)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px > 2 x 100 -> a "bomb"
    with pytest.raises(DataError, match="too many pixels"):
        load_image_rgb(big)
