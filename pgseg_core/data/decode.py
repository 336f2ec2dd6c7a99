"""Training-image decoding: encoded bytes -> augmented, normalised crop, on the CPU.

``data.decode`` chooses the path (docs/WEB_DATA.md §5):

- ``cpu``: PIL decode of the whole image, then :func:`~pgseg_core.data.transforms.train_transform`
  (RandomResizedCrop, flip, normalise) -- the reference every other path is tested against.
- ``auto``: the same augmentation (the crop box drawn on the full-size image with torchvision's
  ``RandomResizedCrop.get_params``: same distribution and the same random numbers as ``cpu``), faster:
  :class:`TurboDecoder` decodes JPEGs with libjpeg-turbo through ``simplejpeg`` (no PIL image object, and
  at M/8 scale in the DCT domain, M = 1..8, the smallest that keeps the crop at least S pixels a side;
  the IDCT, upsampling and colour conversion shrink with M², only the entropy decoding stays), resizes the
  crop with torch's antialiased bilinear uint8 kernel and normalises in one pass. Other formats, and
  JPEGs libjpeg-turbo cannot turn into RGB (CMYK), take the PIL path with the same crop.
  :class:`DraftDecoder` is the PIL-only variant (``Image.draft`` for the DCT scaling, a float crop box),
  used by ``auto`` when ``simplejpeg`` is not installed.
- ``gpu``: needs CUDA (checked here: a missing device raises, nothing falls back); the workers draw the
  crops and the training process decodes, crops and resizes batch-wise on the GPU
  (:mod:`pgseg_core.data.gpu_decode`).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch

from ..errors import DeviceError

__all__ = [
    "train_sample_decoder",
    "decode_plan",
    "DraftDecoder",
    "TurboDecoder",
    "dct_eighths",
    "draft_reduction",
]


def draft_reduction(crop_w: float, crop_h: float, size: int) -> int:
    """The largest JPEG DCT reduction (1, 2, 4 or 8) that keeps a ``crop_w x crop_h`` crop (pixels of the
    full image) at least ``size`` pixels on each side, so resizing it to ``size`` stays a downscale."""
    for r in (8, 4, 2):
        if crop_w / r >= size and crop_h / r >= size:
            return r
    return 1


def dct_eighths(crop_w: float, crop_h: float, size: int) -> int:
    """The smallest M in 1..8 such that libjpeg-turbo's M/8 DCT-domain scaling keeps a ``crop_w x crop_h``
    crop (pixels of the full image) at least ``size`` pixels on each side (8: no scaling)."""
    for m in range(1, 8):
        if crop_w * m / 8 >= size and crop_h * m / 8 >= size:
            return m
    return 8


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


_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class TurboDecoder:
    """Bytes -> FloatTensor ``[3,S,S]`` (ImageNet-normalised) via libjpeg-turbo (module docstring, ``auto``).

    Per JPEG: the header gives (h, w); the crop (top, left, ch, cw) is drawn as ``RandomResizedCrop`` draws
    it; ``simplejpeg.decode_jpeg`` decodes at M/8 scale (M from :func:`dct_eighths`: libjpeg-turbo's scaled
    IDCT, so the crop keeps >= S pixels a side and its resize stays a downscale); the crop is mapped to the
    decoded grid, rounded to whole pixels (at M = 8 exactly the reference's integer box; otherwise each edge
    moves by at most 4 / M source pixels), resized to S x S by ``F.interpolate(bilinear, antialias=True)``
    on uint8, flipped with p = 0.5 and normalised.

    Args:
        size: output side S in pixels.
        crop_scale: (lo, hi) crop area fraction, as RandomResizedCrop's ``scale``.
        hflip: random horizontal flip with p = 0.5.

    Raises (when called):
        OSError / ValueError / SyntaxError: bytes neither libjpeg-turbo nor PIL can decode (the loader's
            handler skips and counts them).
    """

    def __init__(self, size: int, crop_scale, hflip: bool):
        from torchvision import transforms as T

        self.size = int(size)
        self.crop = T.RandomResizedCrop(self.size, scale=(float(crop_scale[0]), float(crop_scale[1])))
        self.hflip = hflip
        self.mean255 = torch.tensor(_MEAN).view(3, 1, 1) * 255.0
        self.inv_std255 = 1.0 / (torch.tensor(_STD).view(3, 1, 1) * 255.0)
        self._buffer: bytearray | None = None  # decode target, grown as needed

    def __call__(self, data: bytes) -> torch.Tensor:
        import simplejpeg

        if not (bytes(data[:3]) == b"\xff\xd8\xff"):
            return self._pil(data)
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return self._pil(data)
        top, left, ch, cw = self._params(h, w)
        m = dct_eighths(cw, ch, self.size)
        oh, ow = -(-h * m // 8), -(-w * m // 8)  # libjpeg-turbo scales by M/8 in the IDCT
        if self._buffer is None or len(self._buffer) < oh * ow * 3:  # reused: no page faults per image
            self._buffer = bytearray(oh * ow * 3)
        try:
            arr = simplejpeg.decode_jpeg(data, "rgb", min_height=oh, min_width=ow, buffer=self._buffer)
        except ValueError:  # e.g. CMYK, or a corrupt stream: PIL decides, with the same crop
            return self._pil(data, (top, left, ch, cw))
        sy, sx = arr.shape[0] / h, arr.shape[1] / w
        y0, x0 = min(round(top * sy), arr.shape[0] - 1), min(round(left * sx), arr.shape[1] - 1)
        y1, x1 = max(round((top + ch) * sy), y0 + 1), max(round((left + cw) * sx), x0 + 1)
        crop = torch.from_numpy(arr[y0:y1, x0:x1]).permute(2, 0, 1).unsqueeze(0)  # [1, 3, h', w'] uint8
        return self._finish(crop)

    def __getstate__(self) -> dict:  # sent to loader workers without the decode buffer
        return {**self.__dict__, "_buffer": None}

    def _params(self, h: int, w: int) -> tuple[int, int, int, int]:
        shape_only = torch.empty(1, 1, 1).expand(1, h, w)  # get_params reads the size only
        return self.crop.get_params(shape_only, self.crop.scale, self.crop.ratio)

    def _finish(self, crop: torch.Tensor) -> torch.Tensor:
        """[1, 3, h', w'] uint8 crop -> normalised [3, S, S] float32 (resize, flip, normalise)."""
        import torch.nn.functional as F

        out = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True,
                            align_corners=False)[0]  # fmt: skip
        if self.hflip and torch.rand(1).item() < 0.5:
            out = out.flip(-1)
        return (out.float() - self.mean255).mul_(self.inv_std255)

    def _pil(self, data: bytes, params: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Any format PIL reads: the same crop drawn (or the one given), then :meth:`_finish`."""
        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            img = im.convert("RGB")
        top, left, ch, cw = params or self._params(img.size[1], img.size[0])
        arr = np.asarray(img.crop((left, top, left + cw, top + ch)))
        return self._finish(torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0))


def _have_simplejpeg() -> bool:
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return False
    return True


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
        fast = TurboDecoder if _have_simplejpeg() else DraftDecoder
        return fast(size, data_cfg.crop_scale, data_cfg.hflip)
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
