"""Training-image decoding: encoded bytes -> augmented, normalised crop, on the CPU.

``data.decode`` chooses the path (docs/WEB_DATA.md §5):

- ``cpu``: PIL decode of the whole image, then :func:`~pgseg_core.data.transforms.train_transform`
  (RandomResizedCrop, flip, normalise) -- the reference every other path is tested against.
- ``auto``: the same augmentation, but a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
  (PIL ``Image.draft``) whenever the crop, mapped into the reduced image, still has at least S pixels on
  each side. The crop box is drawn on the full-size image with torchvision's
  ``RandomResizedCrop.get_params`` (same scale / ratio / position distribution and the same random
  numbers as ``cpu``) and mapped exactly (a float box) into the reduced image, so only the resampling filter
  differs: the final step is still an antialiased downscale to S x S.
- ``gpu``: needs CUDA (checked here: a missing device raises, nothing falls back); the workers draw the
  crops and the training process decodes, crops and resizes batch-wise on the GPU
  (:mod:`pgseg_core.data.gpu_decode`).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch

from ..errors import DeviceError

__all__ = ["train_sample_decoder", "decode_plan", "DraftDecoder", "draft_reduction"]


def draft_reduction(crop_w: float, crop_h: float, size: int) -> int:
    """The largest JPEG DCT reduction (1, 2, 4 or 8) that keeps a ``crop_w x crop_h`` crop (pixels of the
    full image) at least ``size`` pixels on each side, so resizing it to ``size`` stays a downscale."""
    for r in (8, 4, 2):
        if crop_w / r >= size and crop_h / r >= size:
            return r
    return 1


class DraftDecoder:
    """Bytes -> FloatTensor ``[3,S,S]`` (ImageNet-normalised) with DCT-domain downscaling (module docstring).

    Args:
        size: output side S in pixels.
        crop_scale: (lo, hi) crop area fraction, as RandomResizedCrop's ``scale``.
        hflip: random horizontal flip with p = 0.5.

    Raises (when called):
        OSError / ValueError / SyntaxError: undecodable bytes (the loader's handler skips and counts them).
    """

    def __init__(self, size: int, crop_scale, hflip: bool):
        from torchvision import transforms as T

        self.size = int(size)
        self.crop = T.RandomResizedCrop(self.size, scale=(float(crop_scale[0]), float(crop_scale[1])))
        self.hflip = hflip
        self.tail = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def __call__(self, data: bytes) -> torch.Tensor:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            top, left, ch, cw = self.crop.get_params(im, self.crop.scale, self.crop.ratio)
            r = draft_reduction(cw, ch, self.size) if im.format == "JPEG" else 1
            if r > 1:
                im.draft("RGB", (-(-w // r), -(-h // r)))
            img = im.convert("RGB")
        if r == 1:  # exactly torchvision's resized_crop on a PIL image
            out = img.crop((left, top, left + cw, top + ch)).resize((self.size, self.size), Image.BILINEAR)
        else:
            sx, sy = w / img.size[0], h / img.size[1]
            box = (left / sx, top / sy, (left + cw) / sx, (top + ch) / sy)
            out = img.resize((self.size, self.size), Image.BILINEAR, box=box)
        if self.hflip and torch.rand(1).item() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return self.tail(out)


class _PlainDecoder:
    """Bytes -> PIL RGB (webdataset's ``pilrgb``) -> ``train_transform``: the reference path."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, data: bytes) -> torch.Tensor:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            img = im.convert("RGB")
        return self.transform(img)


def train_sample_decoder(data_cfg, size: int) -> Callable[[bytes], torch.Tensor]:
    """The per-sample decoder of the training loader for ``data_cfg.decode``.

    Args:
        data_cfg: ``decode`` (auto | cpu | gpu), ``crop_scale``, ``hflip``.
        size: crop side S in pixels.

    Returns:
        A picklable callable: encoded image bytes -> FloatTensor ``[3,S,S]`` (``gpu``: the encoded sample
        and its crop, see :class:`~pgseg_core.data.gpu_decode.GpuSamplePrep`).

    Raises:
        DeviceError: ``gpu`` without CUDA.
    """
    from .transforms import train_transform

    mode = str(getattr(data_cfg, "decode", "cpu"))
    if mode == "gpu":
        if not torch.cuda.is_available():
            raise DeviceError("data.decode gpu needs a CUDA device, and none is available: use auto or cpu")
        from .gpu_decode import GpuSamplePrep

        return GpuSamplePrep(size, data_cfg.crop_scale, data_cfg.hflip)
    if mode == "auto":
        return DraftDecoder(size, data_cfg.crop_scale, data_cfg.hflip)
    return _PlainDecoder(train_transform(size, data_cfg.crop_scale, data_cfg.hflip))


def decode_plan(data_cfg, size: int, on_bad=None):
    """What the training loader needs for ``data_cfg.decode``: ``(sample decoder, collate function or None
    for the default stacking, stage applied to the batches in the training process or None)``; ``on_bad``
    receives the images the GPU stage could not decode (the loader's skip-and-count handler).

    Raises:
        DeviceError: ``gpu`` without CUDA.
    """
    decoder = train_sample_decoder(data_cfg, size)
    if str(getattr(data_cfg, "decode", "cpu")) != "gpu":
        return decoder, None, None
    from .gpu_decode import GpuBatchDecoder, collate_encoded

    device = torch.device("cuda", torch.cuda.current_device())
    return decoder, collate_encoded, GpuBatchDecoder(size, device, on_bad=on_bad)
