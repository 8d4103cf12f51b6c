"""Any image file or PIL image -> 8-bit RGB, with PIL only (no torch: the ONNX runner uses it too)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale (8 or 16 bit), CMYK, palette and alpha images become RGB (transparent areas on white)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit gray 0..65535 -> 0..255 (Pillow would clip)
        gray = np.asarray(image).clip(0, 65535) / 257
        return Image.fromarray(gray.round().astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully into RGB; raises OSError naming the file when it cannot."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e
