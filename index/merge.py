"""Merging per-shard top-k results into the global top-k.

Shards return inner products of L2-normalised vectors (cosine similarity), so
the merge keeps the LARGEST scores; a heap or sort that keeps the smallest
would silently return the worst matches. Cosine distance, as reported to
clients, is ``1 - similarity``. Ties are broken by the smaller internal id so
the result does not depend on the order shards answered in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def merge_topk(results: Sequence[tuple[np.ndarray, np.ndarray]],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge ``(scores, ids)`` pairs of shape ``(nq, k_i)`` into ``(nq, k)``, best first.

    Ids ``< 0`` are padding (fewer than k results) and sort last; the output is
    padded the same way (score ``-inf``, id ``-1``).
    """
    if not results:
        raise ValueError("nothing to merge")
    scores = np.concatenate([np.asarray(r[0], dtype=np.float32) for r in results], axis=1)
    ids = np.concatenate([np.asarray(r[1], dtype=np.int64) for r in results], axis=1)
    scores = np.where(ids < 0, -np.inf, scores)
    # lexsort: last key is primary -> descending score, then ascending id
    tie = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((tie, -scores), axis=-1)[:, :k]
    top_s = np.take_along_axis(scores, order, axis=1)
    top_i = np.take_along_axis(ids, order, axis=1)
    if top_s.shape[1] < k:  # fewer candidates than k in total
        pad = k - top_s.shape[1]
        top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
    top_i = np.where(np.isneginf(top_s), -1, top_i)
    return top_s.astype(np.float32), top_i


def cosine_distance(similarity: np.ndarray | float) -> np.ndarray | float:
    """Cosine distance of unit vectors from their inner product."""
    return 1.0 - similarity
