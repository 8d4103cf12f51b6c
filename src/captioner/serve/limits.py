"""What the server accepts: the body limit, upload size, image checks, and decoding within a known memory cost."""
from __future__ import annotations

from io import BytesIO

from fastapi import HTTPException, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner.data.rgb import decoded_bytes, to_rgb, upright  # noqa: F401 - decoded_bytes: what decode holds

FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})  # Pillow's names; MPO is a camera JPEG
ACCEPTED = "JPEG, PNG, WebP, BMP, GIF, TIFF"
CHUNK = 2**16
FORM_OVERHEAD = 2**16  # multipart boundaries, headers and the beam field
PIXEL_BYTES = 8  # what a decoded RGB photo's pixel costs (decoded_bytes): Pillow's RGBX pixel and a turned copy
# Pillow allocates an image in blocks of this size (its default: 16 MB): past glibc's largest mmap threshold (32 MB)
# each goes back to the OS when freed, not into the arena of the thread that decoded it (one 6000 x 6000 PNG at a time
# from 32 clients: the server's RSS +840 MB -> +160 MB)
IMAGE_BLOCK_BYTES = 64 * 2**20


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, by Content-Length or while it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        detail = f"request too large: the limit is {self.limit / 2**20:.1f} MB per request"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"detail": detail}, 413)(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, detail)
            return message

        await self.app(scope, limited, send)


async def read_limited(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's bytes, read in chunks; 413 as soon as it passes ``max_bytes``."""
    # Starlette has already spooled the part (to a temp file past 1 MB); we keep at most max_bytes in memory.
    data = bytearray()
    while chunk := await upload.read(CHUNK):
        data += chunk
        if len(data) > max_bytes:
            raise HTTPException(413, f"{upload.filename!r} is larger than {max_bytes / 2**20:.1f} MB: "
                                     "send a smaller image")
    return bytes(data)


def open_image(data: bytes, name: str, max_pixels: int, min_side: int, max_aspect: float) -> Image.Image:
    """Read an upload's header and check its format, pixel count and aspect ratio; a large JPEG is set to decode at
    1/2, 1/4 or 1/8 scale (Pillow's draft) with its short side still at least ``min_side``. Nothing is decoded yet."""
    if not data:
        raise HTTPException(422, f"{name!r} is empty: choose an image file")
    bomb = f"{name!r} has too many pixels (over {max_pixels:,}): send a smaller image"
    try:
        image = Image.open(BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise HTTPException(413, bomb) from e
    except Exception as e:  # Pillow raises many kinds on unknown bytes
        raise HTTPException(415, f"{name!r} is not an image we can read: send {ACCEPTED}") from e
    if image.format not in FORMATS:
        raise HTTPException(415, f"{name!r} is {image.format}, which is not accepted: send {ACCEPTED}")
    if image.width * image.height > max_pixels:
        raise HTTPException(413, bomb)
    if max(image.size) > max_aspect * min(image.size):
        raise HTTPException(422, f"{name!r} is {image.width} x {image.height} pixels, more than {max_aspect:g}:1: "
                                 "crop it to the part to caption")
    image.draft("RGB", (min_side, min_side))  # JPEG only; other formats ignore it
    return image


def decode(image: Image.Image, name: str) -> Image.Image:
    """Decode an image from ``open_image`` and turn it upright, before it joins a batch (a file failing here fails
    only itself); all but 8-bit gray (1 byte a pixel, for the model's to_rgb) is converted to RGB here too."""
    try:
        image.load()
        image = upright(image)
        return image if image.mode in ("L", "RGB") else to_rgb(image)
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"{name!r} has too many pixels: send a smaller image") from e
    except Exception as e:
        raise HTTPException(422, f"{name!r} is a damaged or truncated {image.format} file: {e}") from e
