"""Bring an existing "customer-owned face search" table into a gallery collection.

The recipe this serves keeps faces in the customer's PostgreSQL as
``face_embeddings (id uuid, person_id text, label text, embedding vector(d),
metadata jsonb, created_at timestamptz)``. :func:`import_face_embeddings`
reads such a table (any name, in the service's database or another one) in
chunks through a server-side cursor and registers its rows into a
collection: each face keeps its id (the UUID's 32 hex digits, so the
collection's view shows the same ``id``), ``person_id`` stays, ``label``
becomes the person's name and ``metadata`` the person's labels (string
values; other JSON values as their JSON text). Vectors are normalised as
every vector is. Each chunk is one ordinary register (one commit, one change
of the change log); rows already imported are skipped, so an import that was
interrupted can simply be run again. Rows the gallery would refuse (a bad
person id, too many labels...) are reported, not imported.

    python -m index.recipe_import --database-url postgresql://... \\
        --table face_embeddings --collection staff --model dlib
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

import numpy as np

from pipelines.errors import FacefleetError
from index.gallery import InProcessGallery
from index.gallery.checks import check_labels, check_name, check_person_id

#: a table name, optionally schema-qualified, that needs no quoting
_TABLE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _labels(metadata: Any) -> dict[str, str] | None:
    if not metadata:  # none given: keep what another face of the person gave
        return None
    if not isinstance(metadata, dict):
        return {"metadata": json.dumps(metadata, sort_keys=True)}
    return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in metadata.items()}


def import_face_embeddings(gallery: InProcessGallery, source_url: str, table: str,
                           collection: str, model: str, chunk: int = 2000) -> dict[str, Any]:
    """Import ``table`` into ``collection`` (created, bound to ``model`` and the table's
    dimension, when missing). Returns counts and the rejected rows."""
    import psycopg

    if not _TABLE_RE.match(table):
        raise ValueError(f"not a plain table name: {table!r}")
    imported = skipped = 0
    rejected: list[dict[str, Any]] = []
    with psycopg.connect(source_url) as conn, conn.cursor(name="recipe_import") as cur:
        # vector_send: the binary vector (uint16 dim, uint16 unused, big-endian floats)
        cur.execute(
            "SELECT replace(id::text, '-', ''), person_id, label, vector_send(embedding), "
            f"metadata FROM {table} ORDER BY id")
        while rows := cur.fetchmany(chunk):
            ids, items = [], []
            for fid, pid, label, blob, metadata in rows:
                vec = np.frombuffer(bytes(blob), dtype=">f4")[1:].astype(np.float32)
                item = {"embedding": vec, "person_id": pid or fid, "name": label,
                        "labels": _labels(metadata)}
                try:
                    check_person_id(item["person_id"])
                    check_name(item["name"])
                    check_labels(item["labels"])
                except FacefleetError as e:
                    rejected.append({"id": fid, "error": e.message})
                    continue
                ids.append(fid)
                items.append(item)
            if not items:
                continue
            dim = len(items[0]["embedding"])
            try:
                info = gallery.service.core.collection(collection)
            except FacefleetError:
                info = None
            if info is not None:
                held = gallery.store.existing_face_ids(info.id, ids)
                keep = [i for i, f in enumerate(ids) if f not in held]
                skipped += len(ids) - len(keep)
                ids, items = [ids[i] for i in keep], [items[i] for i in keep]
                if not items:
                    continue
            gallery.register(collection, model, dim, items, None, True, ids)
            imported += len(items)
    return {"collection": collection, "imported": imported, "skipped": skipped,
            "rejected": rejected}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", required=True, help="the service's pgvector database")
    p.add_argument("--source-url", help="the table's database (default: the service's)")
    p.add_argument("--table", default="face_embeddings")
    p.add_argument("--collection", required=True)
    p.add_argument("--model", required=True, help="the model that made the vectors")
    args = p.parse_args(argv)
    from index.store.pgvector import PgvectorStore

    gallery = InProcessGallery(PgvectorStore(args.database_url))
    try:
        out = import_face_embeddings(gallery, args.source_url or args.database_url, args.table,
                                     args.collection, args.model)
    finally:
        gallery.close()
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
