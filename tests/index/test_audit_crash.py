"""A writer killed at random moments leaves every change with its audit entry, or neither.

``audit_writer.py`` runs in its own process, writing without pause (faces,
persons, collections, keys, each with its entry); it is killed with SIGKILL
at a random moment, over and over, on SQLite and on PostgreSQL. After every
kill the store must read as if each transaction either happened whole or not
at all: every face, key and collection has the entry that made it, every
forget entry's faces are gone, every entry's change is there, and the audit
sequence has no gap.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 8


def _rows(store, sql: str) -> list[tuple]:
    with store._tx(write=False, snapshot=True) as cur:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


def check_consistent(store) -> int:
    """Assert that changes and entries match one for one; returns the number of entries."""
    entries = _rows(store, "SELECT seq, action, collection, person_id, details FROM audit_log "
                           "ORDER BY seq")
    (last,), = _rows(store, "SELECT value FROM counters WHERE name = 'audit'")
    assert [e[0] for e in entries] == list(range(1, last + 1)), "a gap in the audit sequence"
    faces = {fid: coll for fid, coll in _rows(
        store, "SELECT f.face_id, c.name FROM faces f JOIN collections c "
               "ON c.id = f.collection_id")}
    registered: Counter = Counter()
    alive: dict[str, str] = {}  # face id -> collection, replaying the trail
    made_keys: Counter = Counter()
    revoked: Counter = Counter()
    collections: dict[str, int] = {}
    for _seq, action, coll, _person, details in entries:
        d = json.loads(details) if details else {}
        if action == "collection.create":
            collections[coll] = collections.get(coll, 0) + 1
        elif action == "collection.drop":
            collections[coll] -= 1
            alive = {f: c for f, c in alive.items() if c != coll}
        elif action == "face.register":
            assert collections.get(coll) == 1, f"faces registered in a missing {coll}"
            for fid in d["face_ids"]:
                registered[fid] += 1
                alive[fid] = coll
        elif action in ("face.forget", "person.forget"):
            for fid in d.get("face_ids", []):
                assert alive.pop(fid, None) == coll, f"{action} of a face not there: {fid}"
        elif action == "key.create":
            made_keys[d["target_key_id"]] += 1
        elif action == "key.revoke":
            revoked[d["target_key_id"]] += 1
    assert all(n == 1 for n in registered.values())
    # replaying the entries gives exactly the faces in the store, and vice versa
    assert alive == faces
    live = {name for (name,) in _rows(store, "SELECT name FROM collections")}
    assert live == {c for c, n in collections.items() if n == 1}
    assert all(n in (0, 1) for n in collections.values())
    keys = dict(_rows(store, "SELECT id, revoked_at FROM api_keys"))
    assert set(keys) == set(made_keys) and all(n == 1 for n in made_keys.values())
    assert {k for k, at in keys.items() if at is not None} == set(revoked)
    assert all(n == 1 for n in revoked.values())
    return len(entries)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_writer_killed_mid_write_leaves_both_or_neither(backend, tmp_path, request):
    from index.store import PostgresStore, SqliteStore

    target = str(tmp_path / "crash.sqlite3") if backend == "sqlite" \
        else request.getfixturevalue("pg_url")
    open_store = (lambda: SqliteStore(target)) if backend == "sqlite" \
        else (lambda: PostgresStore(target))
    open_store().close()  # migrate once, outside the writers
    rnd = random.Random(20261202)
    total = 0
    for round_no in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.index.audit_writer", backend, target, str(round_no)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(rnd.uniform(0.05, 0.6))  # a random moment, mid-write or between
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        store = open_store()
        try:
            n = check_consistent(store)
        finally:
            store.close()
        assert n > total, "the writer committed nothing this round"
        total = n
