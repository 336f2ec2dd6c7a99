"""Training-image decoding: the DCT-domain (Image.draft) path against the plain PIL reference, the crop
distribution it keeps, data.decode gpu without CUDA, and fsspec shard URLs."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from PIL import Image

from _webdata import jpeg_bytes, write_img2dataset_shard
from pgseg_core.config import DataConfig
from pgseg_core.data.decode import (
    DraftDecoder,
    TurboDecoder,
    dct_eighths,
    draft_reduction,
    train_sample_decoder,
)
from pgseg_core.data.loader import make_train_loader
from pgseg_core.data.remote import shard_urls
from pgseg_core.errors import DeviceError


def test_draft_reduction_keeps_the_crop_at_least_the_output_size():
    assert draft_reduction(512, 400, 224) == 1
    assert draft_reduction(1000, 900, 224) == 4  # 250 x 225 >= 224
    assert draft_reduction(2000, 1800, 224) == 8
    assert draft_reduction(300, 2000, 64) == 4


def test_draft_decoder_matches_the_reference_crop_for_crop():
    ref_cfg = DataConfig(img_size=64, crop_scale=[0.3, 1.0], decode="cpu")
    fast, ref = DraftDecoder(64, [0.3, 1.0], True), train_sample_decoder(ref_cfg, 64)
    big, small = jpeg_bytes(1, (640, 480), quality=95), jpeg_bytes(2, (80, 64))
    for data, exact in ((small, True), (big, False)):
        torch.manual_seed(5)
        a = torch.stack([fast(data) for _ in range(6)])
        torch.manual_seed(5)
        b = torch.stack([ref(data) for _ in range(6)])
        assert a.shape == b.shape == (6, 3, 64, 64)
        if exact:  # no reduction possible: bit-identical to torchvision's RandomResizedCrop
            assert torch.equal(a, b)
        else:  # same crops (same random numbers), pixels differ only by the DCT-domain filter
            err = (a - b).abs().mean().item()
            assert err < 0.08, err  # normalised units (~0.02 of the 0..255 range)
            assert (a - b).abs().mean(dim=(1, 2, 3)).max() < 0.15


def test_dct_eighths_keeps_the_crop_at_least_the_output_size():
    assert dct_eighths(200, 500, 224) == 8  # smaller than the output: no scaling
    assert dct_eighths(300, 260, 224) == 7  # 260 * 7/8 = 227.5 >= 224, 6/8 would give 195
    assert dct_eighths(448, 460, 224) == 4
    assert dct_eighths(2000, 1800, 224) == 1
    for w, h in itertools.product(range(224, 1400, 37), range(230, 1400, 53)):
        m = dct_eighths(w, h, 224)
        assert min(w, h) * m / 8 >= 224 and (m == 1 or min(w, h) * (m - 1) / 8 < 224)


def _turbo_and_reference(size=64, scale=(0.3, 1.0)):
    ref = train_sample_decoder(DataConfig(img_size=size, crop_scale=list(scale), decode="cpu"), size)
    return TurboDecoder(size, scale, True), ref


def _both(fast, ref, data: bytes, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    a = torch.stack([fast(data) for _ in range(n)])
    after_a = torch.rand(1)
    torch.manual_seed(5)
    b = torch.stack([ref(data) for _ in range(n)])
    assert torch.equal(torch.rand(1), after_a)  # the same random numbers were drawn: same crops and flips
    return a, b


def test_auto_uses_libjpeg_turbo_when_simplejpeg_is_installed(monkeypatch):
    pytest.importorskip("simplejpeg")
    assert isinstance(train_sample_decoder(DataConfig(img_size=64, decode="auto"), 64), TurboDecoder)
    monkeypatch.setitem(__import__("sys").modules, "simplejpeg", None)  # not installed
    assert isinstance(train_sample_decoder(DataConfig(img_size=64, decode="auto"), 64), DraftDecoder)


@pytest.mark.parametrize(
    "size, scale", [((80, 64), (0.3, 1.0)), ((640, 480), (0.3, 1.0)), ((900, 700), (0.7, 1.0))]
)
def test_turbo_decoder_matches_the_reference_crop_for_crop(size, scale):
    """Same crops and flips as torchvision's RandomResizedCrop on PIL; pixels differ by the resampling only
    (torch's antialiased bilinear vs PIL's, and libjpeg-turbo's M/8 scaled IDCT on the big images)."""
    pytest.importorskip("simplejpeg")
    fast, ref = _turbo_and_reference(64, scale)
    a, b = _both(fast, ref, jpeg_bytes(1, size, quality=95))
    assert a.shape == b.shape == (6, 3, 64, 64) and a.dtype == torch.float32
    err = (a - b).abs().mean(dim=(1, 2, 3))
    assert err.max() < 0.1, err  # normalised units; a wrong crop or flip gives > 0.3 on this gradient image
    flipped = (a.flip(-1) - b).abs().mean(dim=(1, 2, 3))
    assert (flipped > 3 * err).any()  # the check can tell a flip apart


def test_turbo_decoder_other_formats_and_colour_spaces_take_the_pil_path_with_the_same_crop():
    pytest.importorskip("simplejpeg")
    fast, ref = _turbo_and_reference()
    rgb = Image.open(io.BytesIO(jpeg_bytes(3, (96, 80)))).convert("RGB")
    for mode, fmt in (("RGB", "PNG"), ("L", "JPEG"), ("CMYK", "JPEG")):
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, fmt, quality=95)
        a, b = _both(fast, ref, buf.getvalue())
        assert a.shape == (6, 3, 64, 64)
        assert (a - b).abs().mean(dim=(1, 2, 3)).max() < 0.1, (mode, fmt)


def test_turbo_decoder_reuses_its_buffer_safely_and_pickles_without_it():
    """One decoder over images of other sizes gives what a fresh decoder gives each (the decode buffer is
    reused, never aliased by an output); the loader workers get a copy without the buffer."""
    import pickle

    pytest.importorskip("simplejpeg")
    images = [jpeg_bytes(6, (640, 480)), jpeg_bytes(7, (96, 80)), jpeg_bytes(8, (700, 500))]
    shared = TurboDecoder(64, (0.3, 1.0), True)
    torch.manual_seed(9)
    kept = [shared(data) for data in images]
    torch.manual_seed(9)
    fresh = [TurboDecoder(64, (0.3, 1.0), True)(data) for data in images]
    assert all(torch.equal(a, b) for a, b in zip(kept, fresh))
    blob = pickle.dumps(shared)  # after a 700 x 500 decode the buffer holds > 1 MB
    assert len(blob) < 100_000
    torch.manual_seed(3)
    copy_out = pickle.loads(blob)(images[2])
    torch.manual_seed(3)
    assert torch.equal(copy_out, shared(images[2]))


def test_turbo_decoder_raises_on_bytes_nothing_can_decode():
    pytest.importorskip("simplejpeg")
    fast, _ = _turbo_and_reference()
    good = jpeg_bytes(4, (96, 80))
    for bad in (b"\xff\xd8\xff\xe0 not a jpeg", good[: len(good) // 3], b"<html>404</html>"):
        with pytest.raises((OSError, ValueError, SyntaxError)):
            fast(bad)


def test_gpu_decode_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA"):
        train_sample_decoder(DataConfig(decode="gpu"), 64)


def test_fsspec_urls_stream_through_a_pipe(tmp_path):
    tar = write_img2dataset_shard(tmp_path / "s", 0, 5, tag="remote")
    url = f"local://{tar}"  # a scheme webdataset does not open itself; fsspec does
    (piped,) = shard_urls([url])
    assert piped.startswith("pipe:") and "pgseg_core.data.remote" in piped
    assert shard_urls([str(tar), "http://h/x.tar", "pipe:cat x"]) == [
        str(tar),
        "http://h/x.tar",
        "pipe:cat x",
    ]
    cfg = DataConfig(train=url, img_size=16, num_workers=0, shuffle_buffer=1)
    batch = next(itertools.islice(iter(make_train_loader(cfg, 5, seed=0)), 1))
    assert sorted(batch["text"]) == sorted(f"remote photo number {i} of shard 0" for i in range(5))


def _gpu_path_vs_reference(device: str):
    from pgseg_core.data.gpu_decode import GpuBatchDecoder, GpuSamplePrep

    prep, dec = GpuSamplePrep(48, (0.2, 1.0), True), GpuBatchDecoder(48, device)
    ref = train_sample_decoder(DataConfig(img_size=48, crop_scale=[0.2, 1.0], decode="cpu"), 48)
    images = [jpeg_bytes(i, (120 + 9 * i, 90)) for i in range(5)]
    png = io.BytesIO()
    Image.new("RGB", (70, 60), (10, 200, 30)).save(png, "PNG")
    images.append(png.getvalue())
    torch.manual_seed(3)
    entries = [prep(d) for d in images]
    torch.manual_seed(3)
    expected = torch.stack([ref(d) for d in images])
    assert [e[0] for e in entries] == ["jpeg"] * 5 + ["pixels"]
    got, keep = dec.decode(entries)
    got = got.cpu()
    assert keep == list(range(6))
    assert got.shape == expected.shape == (6, 3, 48, 48)
    err = (got - expected).abs().mean(dim=(1, 2, 3))
    print("gpu-path mean abs error per image", err.tolist())
    assert err.max() < 0.02, err  # same crops and flips; decoders and resize filters differ slightly


def test_gpu_path_logic_on_the_cpu_matches_the_reference():
    _gpu_path_vs_reference("cpu")


@pytest.mark.cuda
def test_gpu_path_on_cuda_matches_the_reference(tmp_path, monkeypatch):
    _gpu_path_vs_reference("cuda")
    monkeypatch.setenv("PGSEG_DATA_ROOT", str(tmp_path))
    write_img2dataset_shard(tmp_path / "cc3m", 0, 8, corrupt=(2,), tag="cc3m")
    cfg = DataConfig(train="cc3m", img_size=32, num_workers=1, shuffle_buffer=1, decode="gpu")
    batch = next(iter(make_train_loader(cfg, 4, seed=0)))
    assert batch["image"].is_cuda and batch["image"].shape == (4, 3, 32, 32)


def test_gpu_stage_drops_and_counts_a_jpeg_that_does_not_decode():
    from pgseg_core.data.gpu_decode import GpuBatchDecoder, GpuSamplePrep

    bad: list[Exception] = []
    prep, dec = GpuSamplePrep(32, (0.5, 1.0), False), GpuBatchDecoder(32, "cpu", on_bad=bad.append)
    good = jpeg_bytes(1, (64, 64))
    entries = [prep(good), prep(good[: len(good) // 3]), prep(good)]  # the header of the cut one is whole
    batch = {"image": entries, "text": ["a", "b", "c"], "key": ["1", "2", "3"]}
    (out,) = list(dec([batch]))
    assert out["image"].shape == (2, 3, 32, 32) and out["text"] == ["a", "c"] and len(bad) == 1
