"""The gallery's source of truth: collections, persons and face embeddings in a
real database.

Three backends share one schema and one set of statements: SQLite in WAL mode
(the embedded default, one file under the data directory, safe for several
processes thanks to ``BEGIN IMMEDIATE`` and a busy timeout), PostgreSQL
(production), and PostgreSQL with pgvector (``index.store.pgvector``: the
embedding column is a pgvector ``vector`` searched in SQL). Embeddings are
otherwise stored as little-endian float32 bytes. Each face
has a public string id (random, unguessable) and an int64 internal id taken
from a counter that never hands out a value twice, which is what FAISS stores:
shards rely on "never reused" to ignore late or repeated updates. A face's
``bucket`` is a stable hash of its public id; its shard is ``bucket % N``.
The schema is versioned; :data:`MIGRATIONS` (``schema``) is applied in order at open time.

Listings and exports read keyset pages (persons by id, faces by internal id,
one statement each), so a client paging through while others write sees every
row that existed throughout exactly once. Imports keep the face ids they are
given and skip the ones already held, so they can be run again. A register
made under an idempotency key stores its answer, which a retry gets back
(:meth:`replay`) instead of writing twice.

The store is the single source of truth, with an ordered change log per
collection: every committed register or forget takes the next number of its
collection's ``last_seq`` in the same transaction (the row update also
serialises the collection's writers, so numbers are committed in order). Added
faces carry their ``seq``; a forget leaves a tombstone (id, bucket, seq). A
shard that knows the last sequence it applied catches up with
:meth:`changes_since`; one that restarts rebuilds from a consistent snapshot
(:meth:`iter_shard`), which also gives each collection's sequence.

The store also keeps the API keys made through ``/v1/keys`` (hashed, never in
clear, with a version counter that every key change bumps so ingress
replicas can poll it cheaply) and the audit trail. Every write method takes
an optional :class:`index.audit.AuditEntry` and inserts it as the last
statement of its own transaction: the change and its entry commit together
or not at all. Entries take their ``seq`` from one counter row, updated last
so its lock is held only while the transaction commits; that keeps ``seq``
in commit order, which is what makes a cursor over ``seq`` stable (a reader
never sees seq N+1 before N is committed).


Modules, by responsibility: ``records`` (the record types), ``schema`` (the
migrations), ``base`` (connections, transactions, dialect, retries),
``collections``, ``faces`` (faces and persons), ``listings`` (listings, imports,
idempotency keys), ``changes`` (the change log), ``audit_log``, ``keys``, composed
in ``sql`` and specialised by the backends ``sqlite``, ``postgres`` and
``pgvector``; ``protocols`` states what callers need, per responsibility, and
``factory`` opens the configured backend. This package re-exports the public
names, so ``from index.store import X`` needs no module path.
"""

from index.store.factory import open_store
from index.store.postgres import PostgresStore
from index.store.protocols import (AccessStore, AuditStore, ChangeLogStore, CollectionStore,
                                   FaceStore, KeyStore, Store)
from index.store.records import (KEEP, AddResult, Changes, CollectionInfo, Deleted,
                                 DeletedFace, FaceRecord, HitInfo, ImportResult, KeyRecord,
                                 ListedFace, PersonRecord, PersonSummary, PersonUpsert,
                                 face_bucket)
from index.store.schema import LATEST_VERSION, MIGRATIONS, Migration
from index.store.sqlite import SqliteStore

__all__ = [
    "KEEP", "LATEST_VERSION", "MIGRATIONS", "AccessStore", "AddResult", "AuditStore",
    "ChangeLogStore", "Changes", "CollectionInfo", "CollectionStore", "Deleted", "DeletedFace",
    "FaceRecord", "FaceStore", "HitInfo", "ImportResult", "KeyRecord", "KeyStore", "ListedFace",
    "Migration", "PersonRecord", "PersonSummary", "PersonUpsert", "PostgresStore", "SqliteStore",
    "Store", "face_bucket", "open_store",
]
