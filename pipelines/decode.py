"""Image decoding from bytes, with limits, by content rather than file name.

Accepts JPEG, PNG, WebP, BMP, PGM/PPM/PBM, GIF (first frame), TIFF and MPO;
applies the EXIF orientation; returns RGB uint8. The header is read first, so
an oversized image (a decompression bomb) is refused before its pixels are
decoded. Large JPEGs are decoded at a reduced DCT scale when the work size
allows it: detection and 150 px chips do not need 12-megapixel pixels, and
this is the single largest saving on camera photos.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.errors import ImageDecodeError, ImageTooLarge, TooManyPixels

# Our own pixel limit is checked before decoding; Pillow's global guard would
# otherwise turn large-but-allowed images into warnings or errors of its own.
Image.MAX_IMAGE_PIXELS = None

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "PPM", "GIF", "TIFF", "MPO"})


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image plus the factor that maps its pixels to the original's."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB, C-contiguous
    original_width: int
    original_height: int
    format: str

    @property
    def scale(self) -> float:
        """original size / decoded size (>= 1 when decoded at reduced scale)."""
        return self.original_width / self.pixels.shape[1]


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    work_max_side: int | None = None,
) -> DecodedImage:
    """Decode ``data`` into RGB, enforcing the limits; raises typed errors only.

    ``work_max_side``: when set, the result may be downscaled so that its longest
    side is at most about that many pixels (never below it); boxes found on it
    are mapped back with ``DecodedImage.scale``.
    """
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"image is {len(data)} bytes; the limit is {max_bytes}",
            {"bytes": len(data), "max_bytes": max_bytes},
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            fmt = (img.format or "").upper()
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(
            "data is not a decodable image (supported: JPEG, PNG, WebP, BMP, PGM/PPM, GIF, TIFF)"
        ) from exc
    if fmt not in ALLOWED_FORMATS:
        raise ImageDecodeError(f"image format {fmt or 'unknown'} is not supported",
                               {"format": fmt})
    if width <= 0 or height <= 0:
        raise ImageDecodeError("image has no pixels")
    if width * height > max_pixels:
        raise TooManyPixels(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            {"width": width, "height": height, "max_pixels": max_pixels},
        )
    try:
        if work_max_side and fmt in ("JPEG", "MPO") and max(width, height) > 2 * work_max_side:
            # DCT-domain downscale by 1/2, 1/4 or 1/8, never below the work size.
            img.draft("RGB", (max(width * work_max_side // max(width, height), 1),
                              max(height * work_max_side // max(width, height), 1)))
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except Image.DecompressionBombError as exc:  # pragma: no cover - limit disabled above
        raise TooManyPixels(str(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"image data is corrupt or truncated ({fmt})",
                               {"format": fmt}) from exc
    # The EXIF transpose may swap the axes: report the original in display order.
    if rgb.shape[1] < rgb.shape[0] and width > height or rgb.shape[1] > rgb.shape[0] and width < height:
        width, height = height, width
    if work_max_side and max(rgb.shape[:2]) > 2 * work_max_side:
        rgb = _shrink(rgb, work_max_side)
    return DecodedImage(np.ascontiguousarray(rgb), width, height, fmt)


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() if arr.size else 1.0
        grey = (arr * (255.0 / max(peak, 1.0))).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency on white: faces on transparent PNGs stay visible.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _shrink(rgb: np.ndarray, target: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    f = target / max(h, w)
    return cv2.resize(rgb, (max(int(w * f), 1), max(int(h * f), 1)), interpolation=cv2.INTER_AREA)
