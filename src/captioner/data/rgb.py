"""Any image file or PIL image -> 8-bit RGB, with PIL only (no torch: the ONNX runner uses it too)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

log = logging.getLogger(__name__)
MAX_ASPECT = 3.0  # the transforms keep at most the centre 3:1 of a thinner image (their work stays bounded)
ORIENTATION_INFO = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")  # where Pillow finds orientation
# to_rgb converts an image of more pixels than this a band of rows at a time, into one RGB result: its work beyond
# the result stays bounded (converting a 16 MP RGBA image whole took ~20 bytes a pixel: copies, white, composite)
BAND_PIXELS = 2**20
BAND_WORK = 32  # bytes a band's pixel may take while converted (16-bit gray through numpy: ~22; RGBA: 20)


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


def pixel_bytes(mode: str) -> int:
    """Bytes a pixel of ``mode`` takes in Pillow's memory (RGB is stored as RGBX; LA, RGBA, CMYK, I, F: 4)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith(("I;16", "BGR;1")) else 4


def decoded_bytes(image: Image.Image) -> int:
    """Most bytes that decoding ``image`` (opened, not loaded; after any JPEG draft) and making it upright RGB hold at
    once: its pixels in its mode, a turned copy (EXIF orientation), the RGB result (for 8-bit gray: the model's RGB
    copy) and to_rgb's band work."""
    pixels, own = image.width * image.height, pixel_bytes(image.mode)
    converted = image.mode != "RGB"
    return pixels * (2 * own + 4 * converted) + min(pixels, BAND_PIXELS) * BAND_WORK * _in_bands(image)


def _in_bands(image: Image.Image) -> bool:
    """Whether converting ``image`` to RGB makes copies beyond its result (alpha on white, 16-bit gray via numpy)."""
    return image.mode in ("RGBA", "LA", "PA", "I") or image.mode.startswith("I;16") or (
        image.mode == "P" and "transparency" in image.info)


def _rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB; a large one a band of rows at a time (every conversion here works pixel by pixel)."""
    if not _in_bands(image) or image.width * image.height <= BAND_PIXELS:
        return _rgb_whole(image)
    out, rows = Image.new("RGB", image.size), max(1, BAND_PIXELS // image.width)
    for top in range(0, image.height, rows):
        band = image.crop((0, top, image.width, min(top + rows, image.height)))
        out.paste(_rgb_whole(band), (0, top))
    return out


def _rgb_whole(image: Image.Image) -> Image.Image:
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
