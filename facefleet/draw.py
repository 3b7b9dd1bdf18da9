"""Drawing detection and identification results onto the photo they came from.

The server reports boxes and landmarks in the pixels of the photo as displayed
(after its EXIF orientation), so the photo is turned the same way here before
anything is drawn. Line widths and text scale with the photo, so a label is
readable on a 4000 px picture and not huge on a 250 px one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from facefleet.types import Box, DetectedFace, IdentifiedFace

KNOWN = (46, 204, 64)      # green: matched within the threshold
UNKNOWN = (255, 65, 54)    # red: nearest face is too far, or nothing enrolled
DETECTED = (0, 116, 217)   # blue: detection only
LANDMARK = (255, 220, 0)


@dataclass(frozen=True)
class Annotation:
    box: Box
    color: tuple[int, int, int]
    label: str | None = None
    landmarks: Sequence[tuple[float, float]] = ()


def open_oriented(path: str | Path) -> Image.Image:
    img = Image.open(path)
    img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def render(img: Image.Image, annotations: Sequence[Annotation]) -> Image.Image:
    """A copy of ``img`` with every annotation drawn on it."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    side = max(out.size)
    width = max(2, side // 300)
    font = _font(max(12, side // 45))
    for a in annotations:
        x, y, w, h = a.box.as_tuple()
        draw.rectangle((x, y, x + w, y + h), outline=a.color, width=width)
        r = max(2, width)
        for lx, ly in a.landmarks:
            draw.ellipse((lx - r, ly - r, lx + r, ly + r), fill=LANDMARK)
        if a.label:
            left, top, right, bottom = draw.textbbox((0, 0), a.label, font=font)
            tw, th = right - left, bottom - top
            pad = max(2, th // 5)
            # above the box when there is room, else inside its top edge
            ty = y - th - 2 * pad if y - th - 2 * pad >= 0 else y
            draw.rectangle((x, ty, x + tw + 2 * pad, ty + th + 2 * pad), fill=a.color)
            draw.text((x + pad - left, ty + pad - top), a.label, fill=(255, 255, 255), font=font)
    return out


def detection_annotations(faces: Sequence[DetectedFace]) -> list[Annotation]:
    return [Annotation(f.box, DETECTED, f"{f.confidence:.2f}", list(f.landmarks.values()))
            for f in faces]


def identification_annotations(faces: Sequence[IdentifiedFace]) -> list[Annotation]:
    out = []
    for f in faces:
        nearest = f.matches[0] if f.matches else None
        if nearest is None:
            out.append(Annotation(f.box, UNKNOWN, "unknown"))
        elif nearest.match:
            out.append(Annotation(f.box, KNOWN, f"{nearest.label} {nearest.distance:.2f}"))
        else:
            # still show who was nearest: it tells a user how far off the gallery is
            out.append(Annotation(f.box, UNKNOWN, f"unknown ({nearest.label} {nearest.distance:.2f})"))
    return out


def save(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg", "") else None
    img.save(path, format=fmt, quality=92) if fmt else img.save(path)
    return path
