"""Photo helpers shared by the app tests: request encodings and the people of
``deepface/identities.csv``."""

from __future__ import annotations

import base64
import csv
from collections import defaultdict
from pathlib import Path


def b64(path: Path) -> str:
    """A photo as the raw base64 string a JSON ``img`` field takes."""
    return base64.b64encode(path.read_bytes()).decode()


def identities(faces: Path) -> dict[str, list[Path]]:
    """Each person of ``deepface/identities.csv`` with their photos, in file order."""
    people: dict[str, list[Path]] = defaultdict(list)
    with open(faces / "deepface/identities.csv") as f:
        for row in csv.DictReader(f):
            people[row["identity"]].append(faces / "deepface" / row["image"])
    return dict(people)
