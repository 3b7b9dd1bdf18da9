"""Vector helpers shared by the gallery tests: seeded unit vectors and register items."""

from __future__ import annotations

import numpy as np

#: the dimension the gallery tests enrol at (small: the store and shards do not care)
D = 16


def unit(n: int, seed: int, dim: int = D) -> np.ndarray:
    """``n`` seeded random unit vectors."""
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items(x: np.ndarray, person: str = "p") -> list[dict]:
    """Register items for the rows of ``x``: one new person each (``p0``, ``p1``, ...)."""
    return [{"embedding": v, "person_id": f"{person}{i}"} for i, v in enumerate(x)]
