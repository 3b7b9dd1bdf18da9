"""A process that writes to a gallery store without pause, until it is killed.

Run by ``test_audit_crash.py`` (``python -m tests.index.audit_writer BACKEND
TARGET SEED``): it registers and forgets faces and persons, creates and drops
collections, creates and revokes API keys, all through ``GalleryCore`` with
an actor, so every change goes with its audit entry exactly as in the
service. It prints ``ready`` after its first commit; the test then kills it
with SIGKILL at a random moment and checks the store.
"""

from __future__ import annotations

import os
import random
import sys
import time

import numpy as np

from index.audit import Actor, AuditAction
from index.gallery import GalleryCore, new_ids
from index.store import KeyRecord, PostgresStore, SqliteStore

D = 16
COLLECTIONS = ("crash-a", "crash-b", "crash-c")


def main(backend: str, target: str, seed: int) -> None:
    store = SqliteStore(target) if backend == "sqlite" else PostgresStore(target)
    core = GalleryCore(store, 2)
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    faces: dict[str, list[str]] = {c: [] for c in COLLECTIONS}
    keys: list[str] = []
    n = 0
    while True:
        n += 1
        actor = Actor(f"key{seed % 7}", f"w{seed}-{n}")
        c = rnd.choice(COLLECTIONS)
        op = rnd.random()
        try:
            if op < 0.45 or not faces[c]:
                k = rnd.randrange(1, 6)
                items = [{"embedding": rng.normal(size=D), "person_id": f"p{rnd.randrange(4)}"}
                         for _ in range(k)]
                out, _ = core.register(c, "test", D, items, create_collection=True, actor=actor)
                faces[c] += [f["face_id"] for f in out["faces"]]
            elif op < 0.65:
                victim = faces[c].pop(rnd.randrange(len(faces[c])))
                core.delete_faces(c, [victim], actor)
            elif op < 0.75:
                core.delete_person(c, f"p{rnd.randrange(4)}", actor)
                faces[c] = []  # some may be gone: forget what we knew
            elif op < 0.8:
                core.drop_collection(c, actor)
                faces[c] = []
            elif op < 0.92 or not keys:
                kid = new_ids(1)[0][:16]
                store.create_key(KeyRecord(kid, f"k{n}", new_ids(2)[0] + new_ids(1)[0],
                                           ("read",), (c,), time.time()),
                                 actor.entry(AuditAction.KEY_CREATE))
                keys.append(kid)
            else:
                store.revoke_key(keys.pop(rnd.randrange(len(keys))),
                                 actor.entry(AuditAction.KEY_REVOKE))
        except Exception as exc:  # noqa: BLE001 - not found after a drop, etc.: go on
            if type(exc).__name__ not in ("NotFound", "CollectionNotFound"):
                raise
        if n == 1:
            print("ready", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
