"""Shared test fixtures: where the shared photos are, and a quiet environment."""

from __future__ import annotations

import os
import sys
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


_EXIT = pytest.StashKey[int]()  # pytest's exit status, kept for pytest_unconfigure


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without finalising the interpreter.

    This process loads onnxruntime, TensorFlow, dlib and Ray's core worker, whose
    native threads can still run while Python finalises and unloads them: a CI run
    once died with SIGSEGV after "415 passed" (the kernel logged a non-main thread
    executing at an unmapped address). By now every fixture is torn down (Ray and
    Serve shut down, servers stopped) and every report written, so nothing is lost
    by skipping finalisation, and the exit status stays the one pytest reported.
    Without a finished session there is no status to keep: pytest exits as usual.
    """
    if _EXIT not in config.stash:
        return
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.stop_global_capturing()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash[_EXIT])
