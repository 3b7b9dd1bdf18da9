"""Shared test fixtures: where the shared photos are, and a quiet environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent
FACES = REPO.parent / "shared" / "faces"


@pytest.fixture(scope="session")
def faces() -> Path:
    assert FACES.is_dir(), f"shared photos not found at {FACES}"
    return FACES
