"""``data.decode gpu``: JPEGs decoded batch-wise on the GPU (torchvision's ``decode_jpeg``, nvJPEG), then
cropped, resized, flipped and normalised there (docs/WEB_DATA.md §5).

The work is split so that the crop distribution is the reference's:

- in the DataLoader workers, :class:`GpuSamplePrep` reads only the JPEG header (PIL, no decode), draws the
  crop with torchvision's ``RandomResizedCrop.get_params`` and the flip with ``torch.rand`` -- the same
  draws as the ``cpu`` path -- and passes the encoded bytes on. An image that is not a JPEG (PNG, WebP) is
  decoded and augmented there by the reference path and travels as pixels.
- in the training process, :class:`GpuBatchDecoder` decodes every JPEG of a batch in one
  ``decode_jpeg(list, device=cuda)`` call, crops each image on the GPU, resizes it to S x S (bilinear,
  antialiased, as the reference), flips it, and normalises the batch.

:class:`GpuBatchDecoder` runs on any device (``cpu`` in the tests, where it is compared with the PIL
reference); :func:`pgseg_core.data.decode.train_sample_decoder` allows ``gpu`` only with CUDA.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["GpuSamplePrep", "GpuBatchDecoder", "collate_encoded"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class GpuSamplePrep:
    """Worker side: bytes -> ``("jpeg", uint8 bytes tensor [n], (top, left, h, w), flip)`` or, for other
    formats, ``("pixels", uint8 [3,S,S], None, False)`` (already cropped, flipped, not normalised).

    Args:
        size: output side S in pixels.
        crop_scale: RandomResizedCrop's ``scale``.
        hflip: random horizontal flip with p = 0.5.
    """

    def __init__(self, size: int, crop_scale, hflip: bool):
        from torchvision import transforms as T

        self.size = int(size)
        self.crop = T.RandomResizedCrop(self.size, scale=(float(crop_scale[0]), float(crop_scale[1])))
        self.hflip = hflip

    def __call__(self, data: bytes) -> tuple:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            top, left, h, w = self.crop.get_params(im, self.crop.scale, self.crop.ratio)
            flip = bool(self.hflip and torch.rand(1).item() < 0.5)
            if im.format == "JPEG":
                return ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), (top, left, h, w), flip)
            img = im.convert("RGB").crop((left, top, left + w, top + h))
        img = img.resize((self.size, self.size), Image.BILINEAR)
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
        return ("pixels", pixels, None, False)


def collate_encoded(samples: list[tuple[str, tuple, str]]) -> dict[str, Any]:
    """Batch of :class:`GpuSamplePrep` outputs: ``image`` stays a list of B entries."""
    keys, images, texts = zip(*samples)
    return {"image": list(images), "text": [str(t) for t in texts], "key": list(keys)}


class GpuBatchDecoder:
    """Training-process stage: batches with encoded ``image`` lists -> ``image`` FloatTensor ``[B,3,S,S]``
    (ImageNet-normalised) on ``device``.

    A JPEG that does not decode (truncated after a valid header) is dropped from its batch (the batch is
    then smaller) and reported to ``on_bad``, like any bad sample; it never ends training.

    Args:
        size: output side S in pixels.
        device: where to decode (CUDA for ``data.decode gpu``).
        on_bad: called with the exception of each dropped image (the loader's skip-and-count handler).
    """

    def __init__(self, size: int, device: torch.device | str, on_bad=None):
        self.size = int(size)
        self.device = torch.device(device)
        self.on_bad = on_bad
        self.mean = torch.tensor(_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(_STD, device=self.device).view(1, 3, 1, 1)

    def _jpegs(self, data: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Decode in one call; if that fails, one by one, with None for each image that does not decode."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not data:
            return []
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError as e:
                    out.append(None)
                    if self.on_bad is not None:
                        self.on_bad(e)
            return out

    def decode(self, entries: list[tuple]) -> tuple[torch.Tensor, list[int]]:
        """Entries of one batch -> (normalised ``[B',3,S,S]``, the indices kept: B' <= B)."""
        jpeg_at = [i for i, e in enumerate(entries) if e[0] == "jpeg"]
        decoded = dict(zip(jpeg_at, self._jpegs([entries[i][1] for i in jpeg_at])))
        keep = [i for i in range(len(entries)) if decoded.get(i, True) is not None]
        out = torch.empty(len(keep), 3, self.size, self.size, device=self.device)
        for j, i in enumerate(keep):
            if entries[i][0] == "pixels":
                out[j] = entries[i][1].to(self.device).float()
                continue
            img = decoded[i]
            top, left, h, w = entries[i][2]
            crop = img[:, top : top + h, left : left + w].unsqueeze(0).float()
            crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True)
            out[j] = crop[0].flip(-1) if entries[i][3] else crop[0]
        return (out.clamp_(0, 255).div_(255.0) - self.mean) / self.std, keep

    def __call__(self, batches):
        for batch in batches:
            images, keep = self.decode(batch["image"])
            if not keep:
                continue
            batch.update(
                image=images, text=[batch["text"][i] for i in keep], key=[batch["key"][i] for i in keep]
            )
            yield batch
