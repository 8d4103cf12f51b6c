"""Any image file or PIL image -> 8-bit RGB, with PIL only (no torch: the ONNX runner uses it too)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

log = logging.getLogger(__name__)
MAX_ASPECT = 3.0  # the transforms keep at most the centre 3:1 of a thinner image (their work stays bounded)
ORIENTATION_INFO = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")  # where Pillow finds orientation


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; when that metadata cannot be read, the image as stored
    (logged) without it, so that no later step reads it again."""
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return image
        return ImageOps.exif_transpose(image)
    except Exception as e:  # noqa: BLE001 - Pillow's EXIF code raises struct.error, KeyError, TypeError, ...
        name = getattr(image, "filename", "") or "an image"
        log.warning("%s: unreadable EXIF orientation (%s: %s), used as stored", name, type(e).__name__, e)
        image = image.copy()
        for key in ORIENTATION_INFO:
            image.info.pop(key, None)
        return image


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit gray 0..65535 -> 0..255 (Pillow would clip)
        gray = (np.asarray(image).clip(0, 65535).astype(np.uint32) + 128) // 257  # round(v / 257) in integers
        return Image.fromarray(gray.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright (EXIF orientation) RGB: grayscale (8 or 16 bit), CMYK, palette and alpha images are converted
    (transparent areas on white); an upright RGB image is returned as is. Raises only OSError."""
    try:
        image.load()
        return _rgb(upright(image))
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many kinds; callers skip on OSError
        raise OSError(f"cannot decode {getattr(image, 'filename', '') or 'image'}: {type(e).__name__}: {e}") from e


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully into RGB; raises OSError (only) naming the file when it cannot."""
    try:
        with Image.open(path) as im:
            rgb = to_rgb(im)
            return rgb.copy() if rgb is im else rgb  # closing the file would close ``im``
    except Exception as e:  # noqa: BLE001 - whatever Pillow raises, the file is skipped by its callers
        raise OSError(f"cannot read image {path}: {e}") from e


def crop_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """The centre of ``image`` with its long side cut to at most ``max_aspect`` times its short side."""
    w, h = image.size
    keep = min(max(w, h), int(max_aspect * min(w, h)))
    if keep == max(w, h):
        return image
    cut = (max(w, h) - keep) // 2
    return image.crop((cut, 0, cut + keep, h) if w > h else (0, cut, w, cut + keep))
