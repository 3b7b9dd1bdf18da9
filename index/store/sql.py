"""The SQL store both backends share: the responsibility mixins composed over
the connection and transaction plumbing of :mod:`index.store.base`.

Every write method takes an optional :class:`index.audit.AuditEntry` and inserts it
(``AuditLogMixin._audit``) as the last statement of its own transaction, so a
change and its entry commit together or not at all.
"""

from __future__ import annotations

from index.store.audit_log import AuditLogMixin
from index.store.changes import ChangeLogMixin
from index.store.cluster_jobs import ClusterJobsMixin
from index.store.collections import CollectionsMixin
from index.store.faces import FacesMixin
from index.store.keys import KeysMixin
from index.store.listings import ListingsMixin


class SqlStore(FacesMixin, ListingsMixin, CollectionsMixin, ChangeLogMixin, AuditLogMixin,
               KeysMixin, ClusterJobsMixin):
    """Everything the SQLite and PostgreSQL backends share; they supply the
    connections and the dialect (``SqlBase``'s parts "to implement")."""

    backend = "sql"
