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


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def render(img: Image.Image, annotations: Sequence[Annotation]) -> Image.Image:
    """A copy of ``img`` with every annotation drawn on it."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    side = max(out.size)
    width = max(3, side // 200)
    font = _font(max(12, side // 45))
    for a in annotations:  # every box first, so no box is drawn over a label
        x, y, w, h = a.box.as_tuple()
        draw.rectangle((x, y, x + w, y + h), outline=a.color, width=width)
        r = max(2, width)
        for lx, ly in a.landmarks:
            draw.ellipse((lx - r, ly - r, lx + r, ly + r), fill=LANDMARK)
    placed: list[tuple[int, int, int, int]] = []
    for a in annotations:
        if not a.label:
            continue
        x, y, w, h = a.box.as_tuple()
        left, top, right, bottom = draw.textbbox((0, 0), a.label, font=font)
        pad = max(2, (bottom - top) // 5)
        lw, lh = right - left + 2 * pad, bottom - top + 2 * pad
        lx = max(0, min(x, out.width - lw))
        # above the box, else inside its top edge, else below it: the first spot
        # that hides no other label (faces in group photos sit close together)
        spots = [y - lh, y, y + h] if y - lh >= 0 else [y, y + h]
        rects = [(lx, sy, lx + lw, sy + lh) for sy in spots]
        rect = next((rc for rc in rects if not any(_overlaps(rc, p) for p in placed)), rects[0])
        placed.append(rect)
        draw.rectangle(rect, fill=a.color)
        draw.text((rect[0] + pad - left, rect[1] + pad - top), a.label, fill=(255, 255, 255),
                  font=font)
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
            continue
        # float rounding can put an identical photo a hair below zero
        text = f"{nearest.label} {max(0.0, nearest.distance):.3f}"
        if nearest.match:
            out.append(Annotation(f.box, KNOWN, text))
        else:
            # still name the nearest: it tells a user how far off the gallery is
            out.append(Annotation(f.box, UNKNOWN, f"unknown ({text})"))
    return out


def save(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg", "") else None
    if fmt:
        # no chroma subsampling: it would smear thin coloured lines into the photo
        img.save(path, format=fmt, quality=95, subsampling=0)
    else:
        img.save(path)
    return path
