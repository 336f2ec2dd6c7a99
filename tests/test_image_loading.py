"""Robust image loading for segment: EXIF orientation, odd modes, alpha, and files that must be refused."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgseg_core.data.transforms import load_image_rgb
from pgseg_core.errors import DataError


def write_tiff(path: Path, h: int, w: int, samples: int, bits: int, sample_format: int) -> Path:
    """Minimal uncompressed little-endian TIFF (one strip) with any sample layout."""
    dtype = {(32, 3): np.float32, (8, 1): np.uint8, (16, 1): np.uint16}[(bits, sample_format)]
    data = np.zeros((h, w, samples), dtype=dtype).tobytes()
    entries = [
        (256, 3, w),
        (257, 3, h),
        (258, 3, bits),
        (262, 3, 2),
        (273, 4, 0),
        (277, 3, samples),
        (278, 3, h),
        (279, 4, len(data)),
        (339, 3, sample_format),
    ]
    offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        value = offset if tag == 273 else value
        ifd += (
            struct.pack("<HHIHH", tag, typ, 1, value, 0)
            if typ == 3
            else struct.pack("<HHII", tag, typ, 1, value)
        )
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data)
    return path


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = np.asarray(load_image_rgb(tmp_path / "rot.jpg"))
    assert out.shape == (40, 20, 3)
    assert out[2, 10, 0] > 200 and out[-3, 10, 0] < 60  # red half is now on top


@pytest.mark.parametrize("kind", ["L", "I;16", "LA", "RGBA", "P-transparent", "CMYK", "1", "RGB16"])
def test_modes_become_rgb(tmp_path, kind):
    h, w = 12, 10
    if kind == "L":
        img, path = Image.new("L", (w, h), 77), tmp_path / "g.png"
        expected = (77, 77, 77)
    elif kind == "I;16":
        img = Image.fromarray(np.full((h, w), 65535, dtype=np.uint16))
        path, expected = tmp_path / "g16.png", (255, 255, 255)
    elif kind == "LA":
        img, path, expected = Image.new("LA", (w, h), (0, 0)), tmp_path / "la.png", (255, 255, 255)
    elif kind == "RGBA":  # half-transparent red over the documented white background
        img, path, expected = Image.new("RGBA", (w, h), (255, 0, 0, 128)), tmp_path / "a.png", (255, 127, 127)
    elif kind == "P-transparent":
        img = Image.new("P", (w, h), 3)
        img.putpalette([0, 0, 0] * 3 + [0, 0, 255] + [0, 0, 0] * 252)
        img.info["transparency"] = 3
        path, expected = tmp_path / "p.png", (255, 255, 255)
    elif kind == "CMYK":
        img, path, expected = Image.new("CMYK", (w, h), (0, 255, 255, 0)), tmp_path / "c.jpg", (255, 0, 0)
    elif kind == "1":
        img, path, expected = Image.new("1", (w, h), 1), tmp_path / "b.png", (255, 255, 255)
    else:  # 16 bits per channel RGB, written as a raw TIFF strip
        path = write_tiff(tmp_path / "rgb16.tif", h, w, 3, 16, 1)
        img, expected = None, (0, 0, 0)
    if img is not None:
        img.save(path)
    out = load_image_rgb(path)
    assert out.mode == "RGB" and out.size == (w, h)
    np.testing.assert_allclose(np.asarray(out)[h // 2, w // 2], expected, atol=3)


def test_alpha_background_colour_is_configurable(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert tuple(np.asarray(load_image_rgb(tmp_path / "t.png", background=(0, 128, 0)))[0, 0]) == (0, 128, 0)


def test_truncated_file_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_image_rgb(tmp_path / "cut.png")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(DataError, match="not a readable image"):
        load_image_rgb(tmp_path / "notes.jpg")


def test_unsupported_mode(tmp_path):
    path = write_tiff(tmp_path / "float.tif", 4, 4, 3, 32, 3)  # float32 RGB: PIL has no mode for it
    with pytest.raises(DataError, match="unsupported image mode"):
        load_image_rgb(path)


@pytest.mark.parametrize("factor", [1.5, 3])  # PIL warns below 2x the limit and raises above: both refused
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, factor):
    Image.new("L", (30, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(900 / factor))
    with pytest.raises(DataError, match="decompression-bomb limit"):
        load_image_rgb(tmp_path / "big.png")
