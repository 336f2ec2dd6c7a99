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
from pgseg_core.data.decode import DraftDecoder, draft_reduction, train_sample_decoder
from pgseg_core.data.loader import make_train_loader
from pgseg_core.data.remote import shard_urls
from pgseg_core.errors import DeviceError


def test_draft_reduction_keeps_the_crop_at_least_the_output_size():
    assert draft_reduction(512, 400, 224) == 1
    assert draft_reduction(1000, 900, 224) == 4  # 250 x 225 >= 224
    assert draft_reduction(2000, 1800, 224) == 8
    assert draft_reduction(300, 2000, 64) == 4


def test_auto_matches_the_reference_crop_for_crop():
    cfg = DataConfig(img_size=64, crop_scale=[0.3, 1.0], decode="auto")
    ref_cfg = DataConfig(img_size=64, crop_scale=[0.3, 1.0], decode="cpu")
    fast, ref = train_sample_decoder(cfg, 64), train_sample_decoder(ref_cfg, 64)
    assert isinstance(fast, DraftDecoder)
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
