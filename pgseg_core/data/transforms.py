"""Image loading and preprocessing shared by training, evaluation and segmentation.

Every image that enters a model is RGB float in [0, 1], then normalised with the ImageNet mean and std
(docs/ARCHITECTURE.md, "Image preprocessing"). Symbols: B batch, H x W pixels.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

log = logging.getLogger("pgseg.data.transforms")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_WHITE = (255, 255, 255)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std shaped to broadcast over ``x`` ([3,H,W] or [B,3,H,W])."""
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return mean, std


def _check_chw(x: torch.Tensor, name: str) -> None:
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"{name} expects [3,H,W] or [B,3,H,W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} expects a floating-point tensor, got {x.dtype}")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise RGB images.

    Args:
        x: RGB images ``[B,3,H,W]`` (or one image ``[3,H,W]``), float in [0, 1].

    Returns:
        ``(x - mean) / std``, same shape and dtype.

    Raises:
        ValueError: ``x`` is not float or its channel axis is not 3.
    """
    _check_chw(x, "normalize")
    mean, std = _stats(x)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize`.

    Args:
        x: normalised images ``[B,3,H,W]`` or ``[3,H,W]``.

    Returns:
        RGB float images in [0, 1] (clamped), same shape.

    Raises:
        ValueError: ``x`` is not float or its channel axis is not 3.
    """
    _check_chw(x, "denormalize")
    mean, std = _stats(x)
    return (x * std + mean).clamp_(0.0, 1.0)


def to_tensor_normalized(img: Image.Image | np.ndarray) -> torch.Tensor:
    """Turn one RGB image into a normalised model input.

    Args:
        img: a PIL image (converted to RGB if needed) or a uint8 array ``[H,W,3]`` in 0..255.

    Returns:
        FloatTensor ``[3,H,W]``, ImageNet-normalised.

    Raises:
        ValueError: an array that is not uint8 ``[H,W,3]``.
    """
    if isinstance(img, Image.Image):
        arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    else:
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"to_tensor_normalized expects uint8 [H,W,3], got {arr.dtype} {arr.shape}")
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, order="C")  # torch needs a writable buffer (PIL arrays are read-only)
    x = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
    return normalize(x)


def train_transform(img_size: int, crop_scale: Sequence[float] = (0.08, 1.0), hflip: bool = True):
    """Training augmentation: random resized crop, optional flip, tensor, normalise.

    Args:
        img_size: output side S in pixels (square crops).
        crop_scale: (lo, hi) range of the crop area as a fraction of the image area.
        hflip: add a random horizontal flip (p = 0.5).

    Returns:
        A callable PIL RGB image -> FloatTensor ``[3,S,S]`` (ImageNet-normalised).
    """
    from torchvision import transforms as T

    steps: list = [
        T.RandomResizedCrop(
            img_size,
            scale=(float(crop_scale[0]), float(crop_scale[1])),
            interpolation=T.InterpolationMode.BILINEAR,
            antialias=True,
        )
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def eval_resize(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` and center-crop to ``size x size`` (bilinear).

    A square image (e.g. a demo composite) is simply resized as a whole.

    Args:
        img: PIL RGB image.
        size: output side in pixels.

    Returns:
        PIL RGB image of ``size x size`` pixels.
    """
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


# ----------------------------------------------------------------------------------------------------------
# robust loading


def _to_8bit(img: Image.Image) -> Image.Image:
    """Map single-channel 16/32-bit integer or float images to 8-bit greyscale."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr.astype(np.float64) / 257.0  # 0..65535 -> 0..255
    elif img.mode == "F":
        hi = float(np.nanmax(arr)) if arr.size else 0.0
        arr = np.nan_to_num(arr.astype(np.float64)) * (255.0 if hi <= 1.0 else 1.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def flatten_to_rgb(img: Image.Image, background: tuple[int, int, int] = _WHITE) -> Image.Image:
    """Convert any PIL mode to RGB, compositing transparency over ``background``.

    Handles 1/L/P/CMYK/YCbCr/LAB/HSV, alpha modes (RGBA, LA, PA, P with a transparency key) and
    16/32-bit or float greyscale (I;16, I, F scaled to 0..255).

    Args:
        img: any PIL image.
        background: RGB colour (0..255) placed behind transparent pixels; white by default, which is how
            viewers and printers show transparent icons.

    Returns:
        PIL image in mode RGB, same size.
    """
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image_rgb(path: str | Path, background: tuple[int, int, int] = _WHITE) -> Image.Image:
    """Read an image file as an upright 8-bit RGB PIL image.

    EXIF orientation is applied; greyscale, palette, CMYK and 16-bit images are converted; transparent
    pixels are composited over ``background`` (white by default; see :func:`flatten_to_rgb`).

    Args:
        path: image file.
        background: RGB colour behind transparent pixels.

    Returns:
        PIL image, mode RGB, fully loaded (the file is closed).

    Raises:
        DataError: the file is missing, not an image, truncated/corrupt, in a mode that cannot be turned
            into RGB, or a decompression bomb (more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels: PIL's warning
            between that limit and twice it is an error here too).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse those files too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            opened.load()
            img = opened
            try:
                img = ImageOps.exif_transpose(opened) or opened
            except Exception as e:  # malformed EXIF: keep the stored orientation
                log.debug("ignoring unreadable EXIF orientation of %s: %s", path, e)
            out = flatten_to_rgb(img, background)
            return out.copy() if out is opened else out  # `opened` is closed on exit
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"expected an image file but {path} is a directory") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(
            f"refusing to open {path}: too many pixels ({_pixels_of(e)}, over the decompression-bomb limit "
            f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}); downscale it first"
        ) from None
    except UnidentifiedImageError:
        kind = _sniff_format(path)
        if kind is not None:
            raise DataError(
                f"unsupported image mode in {path}: PIL cannot decode this {kind} pixel layout (e.g. "
                "float RGB or an unusual number of samples) or the file is corrupt; convert it to 8-bit "
                "RGB"
            ) from None
        raise DataError(f"{path} is not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        if "mode" in str(e).lower() and "truncated" not in str(e).lower():
            raise DataError(f"unsupported image mode in {path}: {e}; save it as 8-bit RGB first") from e
        raise DataError(f"cannot decode image {path}: {e} (truncated or corrupt file?)") from e


def _sniff_format(path: Path) -> str | None:
    """'TIFF' when the file starts with a TIFF header, else None.

    PIL reports a TIFF whose sample layout it has no mode for (float RGB, 2 or 5 samples per pixel, ...) as
    unidentified; the header tells that case apart from a file that is not an image at all.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    return "TIFF" if head in (b"II*\x00", b"MM\x00*") else None


def _pixels_of(e: BaseException) -> str:
    """The pixel count PIL puts in its decompression-bomb message ("Image size (N pixels) exceeds ...")."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(e))
    return found.group(1) if found else "too many"
