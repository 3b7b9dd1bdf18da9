"""Errors specific to the gallery's durable store.

They derive from the project's domain errors so the ingress maps them like
any other: a store that cannot be used (schema written by a newer release, a
missing driver, a database that is down) is *unavailable*, not a client error.
"""

from __future__ import annotations

from pipelines.errors import Unavailable


class StoreUnavailable(Unavailable):
    """The durable store cannot be opened or reached."""


class SchemaTooNew(StoreUnavailable):
    """The database was migrated by a newer facefleet than this one knows."""
