"""Image decoding: formats by content, orientation, colour modes, limits, bad bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines.decode import decode_image
from pipelines.errors import ImageDecodeError, ImageTooLarge, TooManyPixels

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo(faces) -> Image.Image:
    return Image.open(faces / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg").convert("RGB")


def test_webp_named_jpg_is_detected_by_content(faces):
    data = (faces / "deepface/img47.jpg").read_bytes()
    img = decode_image(data, **LIMITS)
    assert img.format == "WEBP"
    assert img.pixels.dtype == np.uint8 and img.pixels.shape[2] == 3


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP", "PPM", "TIFF", "GIF"])
def test_formats_round_trip(photo, fmt):
    data = _encode(photo, fmt)
    img = decode_image(data, **LIMITS)
    assert img.pixels.shape == (250, 250, 3)
    if fmt in ("PNG", "BMP", "PPM", "TIFF"):  # lossless: pixel-identical
        assert np.array_equal(img.pixels, np.asarray(photo))


def test_pgm_grey_becomes_rgb(faces):
    img = decode_image((faces / "orl/s1/1.pgm").read_bytes(), **LIMITS)
    assert img.format == "PPM" and img.pixels.shape == (112, 92, 3)
    assert np.array_equal(img.pixels[..., 0], img.pixels[..., 2])


def test_rgba_is_composited_on_white(photo):
    rgba = photo.convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, 50, 50))
    rgba.putalpha(alpha)
    img = decode_image(_encode(rgba, "PNG"), **LIMITS)
    assert (img.pixels[:50, :50] == 255).all()
    assert np.array_equal(img.pixels[100:, 100:], np.asarray(photo)[100:, 100:])


def test_exif_orientation_is_applied(photo):
    wide = photo.crop((0, 0, 250, 120))  # 250 wide, 120 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img = decode_image(_encode(wide, "JPEG", exif=exif.tobytes()), **LIMITS)
    assert img.pixels.shape[:2] == (250, 120)
    assert (img.original_width, img.original_height) == (120, 250)


def test_large_jpeg_is_decoded_at_reduced_scale(faces):
    data = (faces / "deepface/img1.jpg").read_bytes()
    full = decode_image(data, **LIMITS)
    small = decode_image(data, **LIMITS, work_max_side=400)
    assert max(small.pixels.shape[:2]) <= 800
    assert (small.original_width, small.original_height) == (full.original_width,
                                                              full.original_height)
    assert small.scale > 1.5


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge size (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data", [b"", b"hello, I am not an image", b"\x00" * 100])
def test_garbage_is_a_decode_error(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data, **LIMITS)


def test_truncated_jpeg_is_a_decode_error(faces):
    data = (faces / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg").read_bytes()
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_decompression_bomb_header_is_refused_before_decoding():
    with pytest.raises(TooManyPixels) as exc:
        decode_image(_png_header(30000, 30000), **LIMITS)
    assert exc.value.details["width"] == 30000


def test_too_many_bytes(photo):
    data = _encode(photo, "PNG")
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_bytes=len(data) - 1, max_pixels=10**8)


def test_still_works_after_errors(photo):
    for bad in (b"", b"xx", _png_header(40000, 40000)):
        with pytest.raises((ImageDecodeError, TooManyPixels)):
            decode_image(bad, **LIMITS)
    assert decode_image(_encode(photo, "PNG"), **LIMITS).pixels.shape == (250, 250, 3)
