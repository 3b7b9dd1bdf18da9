"""What the flow remembers of a collection between requests: the model it is bound to.

An identify or register that names no model embeds with its collection's
model, which the flow must know before the first model runs. Asking the
gallery every time would add a round trip to every request, so the answer is
kept here, under one rule: an entry lives ``ttl_s`` (the gallery's own cache
of collection rows lives as long: ``index.sync_interval_s``), and is
forgotten at once when the flow drops the collection or the gallery answers
that the collection is gone or bound to another model (dropped and made
again elsewhere); the request is then run once more with a fresh answer.
This is the only collection fact the ingress keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CollectionModels:
    """collection name -> the model it is bound to, each for ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._models: dict[str, tuple[str, float]] = {}

    def get(self, collection: str) -> str | None:
        entry = self._models.get(collection)
        if entry is None:
            return None
        model, at = entry
        if self._clock() - at > self.ttl_s:
            del self._models[collection]
            return None
        return model

    def put(self, collection: str, model: str) -> None:
        self._models[collection] = (model, self._clock())

    def forget(self, collection: str) -> None:
        self._models.pop(collection, None)

    def __contains__(self, collection: str) -> bool:
        return self.get(collection) is not None
