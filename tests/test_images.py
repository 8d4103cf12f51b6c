"""Image decoding to RGB, the train/eval transforms, and the caption-aware horizontal flip."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from captioner.data import rgb
from captioner.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    flip,
    load_rgb,
    swap_left_right,
    to_rgb,
    train_transform,
)
from captioner.data.rgb import MAX_ASPECT

# EXIF as in shared/data/bad-inputs/malformed-exif.jpg: orientation 6 and a ResolutionUnit stored as text, which
# makes ImageOps.exif_transpose raise struct.error when it writes the EXIF back
MALFORMED_EXIF = (b"Exif\0\0MM\0*\0\0\0\x08\0\x03\x01(\0\x02\0\0\0\x04ca\x8a\0\x01\x12\0\x03\0\0\0\x01\0\x06\0\0"
                  b"\x87i\0\x04\0\0\0\x01\0\0\x002\0\0\0\0\0\x01\x90\x03\0\x02\0\0\0\x0b\0\0\0D\0\0\0\0"
                  b"2020:01:01\0\0")


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 77).save(tmp_path / "gray.png")
    image = load_rgb(tmp_path / "gray.png")
    assert image.size == (5, 4)
    assert (_pixels(image) == 77).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # red in CMYK
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    pixels = _pixels(load_rgb(tmp_path / "cmyk.jpg"))
    assert np.abs(pixels - [255, 0, 0]).max() <= 8


def test_palette_png_with_transparency_lands_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (4, 2), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))  # 0 black (transparent), 1 blue
    image.paste(1, (2, 0, 4, 2))
    image.save(tmp_path / "pal.png", transparency=0)
    pixels = _pixels(load_rgb(tmp_path / "pal.png"))
    assert (pixels[:, :2] == 255).all()  # the transparent black half is white, not black
    assert (pixels[:, 2:] == [0, 0, 255]).all()


def test_rgba_png_transparent_areas_become_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 2, 2))
    image.save(tmp_path / "rgba.png")
    pixels = _pixels(load_rgb(tmp_path / "rgba.png"))
    assert (pixels[:, :2] == 255).all()
    assert (pixels[:, 2:] == [255, 0, 0]).all()
    half = to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 128)))  # half transparent black on white: mid gray
    assert np.abs(_pixels(half) - 127).max() <= 1


def test_la_png_transparent_areas_become_white(tmp_path: Path) -> None:
    image = Image.new("LA", (4, 2), (40, 255))
    image.paste((0, 0), (0, 0, 2, 2))
    image.save(tmp_path / "la.png")
    pixels = _pixels(load_rgb(tmp_path / "la.png"))
    assert (pixels[:, :2] == 255).all() and (pixels[:, 2:] == 40).all()
    assert np.abs(_pixels(to_rgb(Image.new("LA", (1, 1), (0, 128)))) - 127).max() <= 1


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    levels = np.array([[0, 257 * 100, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    expected = [[0, 100, 128, 255]]
    assert (_pixels(load_rgb(tmp_path / "gray16.png")) == np.array(expected)[..., None]).all()
    wide = to_rgb(Image.fromarray(levels.astype(np.int32)))  # mode I, as older Pillow opens 16-bit PNGs
    assert (_pixels(wide) == np.array(expected)[..., None]).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16"])
def test_large_images_are_converted_in_bands_to_the_same_pixels(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over BAND_PIXELS an alpha or 16-bit image is converted a band of rows at a time: the same RGB as whole."""
    pixels = np.random.default_rng(0).integers(0, 256, (301, 257, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    image = (image.convert("RGB").convert("P") if mode == "P" else
             Image.fromarray(pixels[..., 0].astype(np.uint16) * 257) if mode == "I;16" else image.convert(mode))
    if mode == "P":
        image.info["transparency"] = 3
    whole = np.asarray(to_rgb(image))
    monkeypatch.setattr(rgb, "BAND_PIXELS", 257 * 20)  # 16 bands, the last one shorter
    crops = []
    monkeypatch.setattr(rgb, "_rgb_whole", lambda im, whole=rgb._rgb_whole: crops.append(im.size) or whole(im))
    assert np.array_equal(np.asarray(to_rgb(image)), whole)
    assert crops == [(257, 20)] * 15 + [(257, 1)]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image = Image.new("RGB", (32, 16), (255, 0, 0))
    image.paste((0, 0, 255), (16, 0, 32, 16))  # stored: red left half, blue right half
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95, subsampling=0)
    pixels = _pixels(load_rgb(tmp_path / "rot.jpg"))
    assert pixels.shape == (32, 16, 3)  # displayed 16 wide, 32 tall: the left edge is now the top
    assert np.abs(pixels[:12] - [255, 0, 0]).max() <= 30 and np.abs(pixels[20:] - [0, 0, 255]).max() <= 30


def halves_jpeg(target: Path | io.BytesIO, exif: bytes = b"") -> Path | io.BytesIO:
    """Write a 32 x 16 JPEG, red left half and blue right half, with the given raw EXIF block, to ``target``."""
    image = Image.new("RGB", (32, 16), (255, 0, 0))
    image.paste((0, 0, 255), (16, 0, 32, 16))
    image.save(target, "JPEG", exif=exif, quality=95, subsampling=0)
    return target


def test_malformed_exif_is_used_as_stored_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = halves_jpeg(tmp_path / "bad-exif.jpg", MALFORMED_EXIF)
    with pytest.raises(struct.error):
        ImageOps.exif_transpose(Image.open(path))  # the fault the file carries
    with caplog.at_level("WARNING", "captioner.data.rgb"):
        image = load_rgb(path)
        again = to_rgb(image)  # the unreadable EXIF is gone with the conversion: not read (nor logged) twice
    pixels = _pixels(image)
    assert pixels.shape == (16, 32, 3)  # not rotated
    assert np.abs(pixels[:, :12] - [255, 0, 0]).max() <= 30 and np.abs(pixels[:, 20:] - [0, 0, 255]).max() <= 30
    assert np.array_equal(_pixels(again), pixels)
    [warning] = caplog.messages
    assert "bad-exif.jpg" in warning and "orientation" in warning


def test_shared_malformed_exif_file_is_read(shared: Path) -> None:
    image = load_rgb(shared / "data" / "bad-inputs" / "malformed-exif.jpg")
    assert image.mode == "RGB" and image.size == (16, 16)


def test_any_decoder_failure_is_an_oserror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = halves_jpeg(tmp_path / "odd.jpg")

    def fail(self: ImageFile.ImageFile) -> None:
        raise struct.error("unpack requires a buffer of 4 bytes")  # as Pillow's plugins do on odd headers

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(OSError, match=r"cannot read image .*odd\.jpg.*unpack"):
        load_rgb(path)
    with pytest.raises(OSError, match="unpack"):
        to_rgb(Image.open(path))


def test_truncated_jpeg_raises_oserror_naming_the_file(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(OSError, match=r"cannot read image .*cut\.jpg"):
        load_rgb(path)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(OSError, match=r"text\.jpg"):
        load_rgb(tmp_path / "text.jpg")


def _textured(size: tuple[int, int] = (60, 40)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_eval_transform_is_deterministic_and_normalised() -> None:
    t = eval_transform(32)
    image = _textured()
    first, second = t(image), t(image)
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, second)
    gray = t(Image.new("RGB", (50, 70), (128, 128, 128)))
    assert gray.shape == (3, 32, 32)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(gray, expected[:, None, None].expand(3, 32, 32), atol=1e-3)
    assert torch.allclose(gray[:, 0, 0], torch.tensor([0.0741, 0.2052, 0.4265]), atol=1e-3)  # (0.5 - mean) / std


def test_thin_images_cost_what_a_3_to_1_image_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    onnx = pytest.importorskip("captioner.export.runner", reason="onnxruntime is not installed")
    sizes, resize = [], Image.Image.resize

    def record(self: Image.Image, size: tuple[int, int], *args: object, **kw: object) -> Image.Image:
        sizes.append(size)
        return resize(self, size, *args, **kw)

    monkeypatch.setattr(Image.Image, "resize", record)
    for thin in (_textured((2, 6000)), _textured((6000, 3))):
        for t in (eval_transform(64), train_transform(64)):
            assert t(thin).shape == (3, 64, 64)
        expected = eval_transform(64)(thin).numpy()
        assert np.allclose(onnx.preprocess(thin, 64, IMAGENET_MEAN, IMAGENET_STD), expected, atol=1e-6)
    long = round(64 * 1.14)
    assert max(w * h for w, h in sizes) <= MAX_ASPECT * long * long, sizes  # not 64 x 192,000


def test_eval_transform_of_usual_shapes_is_resize_then_centre_crop() -> None:
    from torchvision.transforms import v2

    for size in ((60, 40), (40, 100), (300, 100), (64, 64)):
        image = _textured(size)
        plain = v2.Compose([v2.Resize(32, antialias=True), v2.CenterCrop(32)])(image)
        assert torch.equal(eval_transform(32, (0, 0, 0), (1, 1, 1))(image), v2.functional.to_dtype(
            v2.functional.to_image(plain), torch.float32, scale=True))


def test_train_transform_shape_and_randomness() -> None:
    t = train_transform(32)
    image = _textured()
    torch.manual_seed(0)
    outputs = [t(image) for _ in range(6)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outputs)
    assert len({o.numpy().tobytes() for o in outputs}) > 1  # random crops differ
    assert t(Image.new("RGB", (20, 90), "white")).shape == (3, 32, 32)  # small, thin images too


def test_swap_left_right_only_swaps_sides() -> None:
    tokens = ["the", "left", "dog", "and", "the", "rightmost", "cat", "right", "of", "leftmost", "leftover", "lefty"]
    assert swap_left_right(tokens) == ["the", "right", "dog", "and", "the", "leftmost", "cat", "left", "of",
                                       "rightmost", "leftover", "lefty"]
    assert swap_left_right(swap_left_right(tokens)) == tokens
    assert swap_left_right(["a", "cat"]) == ["a", "cat"] and swap_left_right([]) == []


def test_swap_left_right_in_compound_words() -> None:
    tokens = ["a", "left-hand", "turn", "the", "right-handed", "pitcher", "left-side", "right-side", "left/right",
              "right-hand", "left-handed", "right/left", "leftover-food"]
    assert swap_left_right(tokens) == ["a", "right-hand", "turn", "the", "left-handed", "pitcher", "right-side",
                                       "left-side", "right/left", "left-hand", "right-handed", "left/right",
                                       "leftover-food"]


def test_flip_mirrors_the_last_dimension() -> None:
    image = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    mirrored = flip(image)
    assert mirrored.shape == image.shape
    assert mirrored[1, 2].tolist() == image[1, 2].tolist()[::-1]
    assert torch.equal(mirrored[..., 0], image[..., -1]) and torch.equal(flip(mirrored), image)
