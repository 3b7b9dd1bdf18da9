"""The store's API keys and audit trail, on SQLite and PostgreSQL.

Each change records one entry in its own transaction and a failed change
records none; entries read back in pages that neither overlap nor skip, even
while writers commit concurrently; retention deletes old entries only; the
key table's version moves with every create and revoke, and revoked keys
leave it. The gallery service drives a scripted sequence end to end.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipelines.errors import CollectionNotFound, Conflict, NotFound
from index.audit import Actor, AuditAction, AuditEntry
from index.erasure import pseudonym
from index.gallery import GalleryCore, InProcessGallery
from index.store import KeyRecord

D = 8


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def key(kid: str, **kw) -> KeyRecord:
    return KeyRecord(kid, kw.get("name", kid), kw.get("sha", kid * 4), kw.get("scopes", ("read",)),
                     kw.get("collections"), time.time())


def actions(store, **kw) -> list[str]:
    return [e.action for e in store.audit_entries(limit=1000, **kw)]


def test_each_change_records_one_entry_in_its_transaction(store):
    core = GalleryCore(store, 2)
    me = Actor("k1", "req-1")
    out, _ = core.register("c", "m", D, [{"embedding": v, "person_id": "p"} for v in unit(2, 1)],
                           create_collection=True, actor=me)
    fids = [f["face_id"] for f in out["faces"]]
    core.register("c", "m", D, [{"embedding": unit(1, 2)[0], "person_id": "q"},
                                {"embedding": unit(1, 3)[0], "person_id": "r"}],
                  actor=Actor("k1", "req-2"))
    core.delete_faces("c", [fids[0]], Actor("k2", "req-3"))
    core.delete_person("c", "p", Actor(None, "req-4"))
    entries = store.audit_entries(limit=1000)
    assert [e.action for e in entries] == ["collection.create", "face.register", "face.register",
                                           "face.forget", "person.forget"]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    create, reg, reg2, forget, pforget = entries
    assert (create.collection, create.key_id, create.request_id) == ("c", "k1", "req-1")
    # p is forgotten: every entry names p by its keyed hash (index.erasure); q and r
    # are not
    hidden = pseudonym(store.erasure_key, "c", "p")
    assert reg.face_ids == fids and reg.person_id == hidden and reg.person_ids is None
    assert reg2.person_id is None and reg2.person_ids == ["q", "r"]
    assert forget.face_ids == [fids[0]] and forget.key_id == "k2"
    assert pforget.person_id == hidden and pforget.face_ids == [fids[1]]
    assert pforget.key_id is None and pforget.request_id == "req-4"
    assert all(e.status == "ok" and e.at > 0 for e in entries)
    # nothing secret or biometric in an entry
    assert all("embedding" not in str(e.as_dict()) for e in entries)


def test_failed_changes_record_nothing(store):
    core = GalleryCore(store, 1)
    me = Actor("k", "r")
    core.create_collection("c", "m", D, actor=me)
    with pytest.raises(Conflict):
        core.create_collection("c", "m", D, actor=me)
    with pytest.raises(NotFound):
        core.delete_person("c", "nobody", me)
    with pytest.raises(CollectionNotFound):
        core.register("missing", "m", D, [{"embedding": unit(1, 1)[0]}], actor=me)
    assert core.delete_faces("c", ["no-such-face"], me)[0] == []  # forgot nothing
    with pytest.raises(NotFound):
        store.revoke_key("nope", me.entry(AuditAction.KEY_REVOKE))
    assert actions(store) == ["collection.create"]
    core.drop_collection("c", me)
    with pytest.raises(CollectionNotFound):
        core.drop_collection("c", me)
    assert actions(store) == ["collection.create", "collection.drop"]


def test_pages_filters_and_since(store):
    core = GalleryCore(store, 1)
    for i in range(7):
        core.register("a" if i % 2 else "b", "m", D, [{"embedding": unit(1, i)[0]}],
                      create_collection=True, actor=Actor("k", f"r{i}"))
    store.append_audit([Actor("k", "s1").entry(AuditAction.IDENTIFY, "a")])
    every = store.audit_entries(limit=1000)
    assert len(every) == 10  # 2 creates, 7 registers, 1 identify
    seen, after = [], 0
    while True:
        page = store.audit_entries(after_seq=after, limit=3)
        if not page:
            break
        seen += [e.seq for e in page]
        after = page[-1].seq
    assert seen == [e.seq for e in every]  # no overlap, no gap, oldest first
    only_a = store.audit_entries(collection="a", action="face.register", limit=1000)
    assert [e.request_id for e in only_a] == ["r1", "r3", "r5"]
    cut = every[5].at
    assert [e.seq for e in store.audit_entries(since=cut, limit=1000)] == \
        [e.seq for e in every if e.at >= cut]


def test_retention_prunes_only_old_entries(store):
    for i in range(4):
        store.append_audit([AuditEntry("identify", "c", request_id=f"r{i}")])
    entries = store.audit_entries()
    assert store.prune_audit(entries[2].at) == 2
    left = store.audit_entries()
    assert [e.seq for e in left] == [e.seq for e in entries[2:]]
    store.append_audit([AuditEntry("identify", "c")])
    assert store.audit_entries(after_seq=left[-1].seq)[0].seq == entries[-1].seq + 1


def test_tailing_with_a_cursor_misses_nothing_under_concurrent_writers(store_factory):
    """Writers on different collections commit concurrently; a reader following the
    cursor must see every entry exactly once (seq is handed out in commit order)."""
    stores = [store_factory() for _ in range(5)]
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        core = GalleryCore(stores[i], 1)
        try:
            for j in range(25):
                core.register(f"w{i}", "m", D, [{"embedding": unit(1, 100 * i + j)[0]}],
                              create_collection=True, actor=Actor(f"k{i}", f"{i}-{j}"))
        except BaseException as e:  # surfaced below
            errors.append(e)

    seen: list[int] = []

    def reader() -> None:
        after = 0
        while True:
            last_round = done.is_set()
            page = stores[4].audit_entries(after_seq=after, limit=7)
            seen.extend(e.seq for e in page)
            after = page[-1].seq if page else after
            if last_round and not page:
                return

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    tail = threading.Thread(target=reader)
    tail.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    tail.join()
    assert not errors, errors
    assert seen == list(range(1, 4 * 26 + 1))  # 4 creates + 100 registers, once each


def test_key_table_versions_and_revocation(store):
    v0, keys = store.key_table()
    assert keys == [] and store.keys_version() == v0
    store.create_key(key("aaaa", scopes=("read", "write"), collections=("x", "y")),
                     Actor("settings", "r1").entry(AuditAction.KEY_CREATE))
    store.create_key(key("bbbb", scopes=("admin",)))
    v2, keys = store.key_table()
    assert v2 == v0 + 2 and [k.id for k in keys] == ["aaaa", "bbbb"]
    assert keys[0].scopes == ("read", "write") and keys[0].collections == ("x", "y")
    assert keys[1].collections is None
    store.touch_keys({"aaaa": 1234.5})
    assert store.keys_version() == v2  # use is not a change of the table
    assert store.list_keys()[0].last_used_at == 1234.5
    store.touch_keys({"aaaa": 1000.0})  # an older use never winds it back
    assert store.list_keys()[0].last_used_at == 1234.5
    revoked = store.revoke_key("aaaa", Actor("settings", "r2").entry(AuditAction.KEY_REVOKE))
    assert revoked.id == "aaaa"
    v3, keys = store.key_table()
    assert v3 == v2 + 1 and [k.id for k in keys] == ["bbbb"]
    with pytest.raises(NotFound):
        store.revoke_key("aaaa")
    with pytest.raises(Exception):  # noqa: B017 - one driver's IntegrityError or another's
        store.create_key(key("cccc", sha="aaaa" * 4))  # the same secret twice
    trail = store.audit_entries()
    assert [(e.action, e.target_key_id, e.request_id) for e in trail] == [
        ("key.create", "aaaa", "r1"), ("key.revoke", "aaaa", "r2")]
    public = store.list_keys()[0].public()
    assert "key_sha256" not in public and public["id"] == "bbbb"


def test_service_records_a_scripted_sequence(store):
    """create key, enrol, identify, forget, revoke, drop: in order, with request ids."""
    g = InProcessGallery(store, nshards=2)
    try:
        x = unit(3, 9)
        rid = iter(f"req-{i}" for i in range(100))
        g.create_key(key("k1k1", scopes=("write",)), actor=Actor("settings", next(rid)))
        out = g.register("seq", "m", D, [{"embedding": x[0], "person_id": "ann"},
                                         {"embedding": x[1], "person_id": "bob"}],
                         create_collection=True, actor=Actor("k1k1", next(rid)))
        ann, bob = (f["face_id"] for f in out["faces"])
        hits = g.search("seq", "m", x[:2], 1, actor=Actor("k1k1", next(rid)))
        assert [h[0]["face_id"] for h in hits] == [ann, bob]
        g.delete_face("seq", ann, actor=Actor("k1k1", next(rid)))
        g.delete_person("seq", "bob", actor=Actor("k1k1", next(rid)))
        g.revoke_key("k1k1", actor=Actor("settings", next(rid)))
        g.drop_collection("seq", actor=Actor("settings", next(rid)))
        trail = [e.as_dict() for e in store.audit_entries(limit=1000)]
        assert [(e["action"], e["request_id"]) for e in trail] == [
            ("key.create", "req-0"), ("collection.create", "req-1"),
            ("face.register", "req-1"), ("identify", "req-2"), ("face.forget", "req-3"),
            ("person.forget", "req-4"), ("key.revoke", "req-5"), ("collection.drop", "req-6")]
        assert trail[3]["matches"] == [ann, bob]
        assert trail[4]["face_ids"] == [ann] and trail[5]["face_ids"] == [bob]
        assert [e["key_id"] for e in trail] == ["settings", "k1k1", "k1k1", "k1k1", "k1k1",
                                                "k1k1", "settings", "settings"]
        # searches are not recorded when audit.identify is off
        g.service.audit_identify = False
        g.register("quiet", "m", D, [{"embedding": x[2]}], create_collection=True)
        g.search("quiet", "m", x[2], 1, actor=Actor("k", "unrecorded"))
        assert "unrecorded" not in [e.request_id for e in store.audit_entries(limit=1000)]
    finally:
        g.close()


def test_concurrent_identifies_share_group_commits(store):
    """Many identifies in flight at once: every one is recorded before it is answered,
    in fewer transactions than searches."""
    g = InProcessGallery(store, nshards=1)
    try:
        x = unit(40, 5)
        g.register_bulk("g", "m", D, x, None, True)
        commits = []
        real = store.append_audit
        store.append_audit = lambda entries: (commits.append(len(entries)), real(entries))[1]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: g.search("g", "m", x[i], 1, actor=Actor("k", f"s{i}")),
                          range(40)))
        recorded = {e.request_id for e in store.audit_entries(action="identify", limit=1000)}
        assert recorded == {f"s{i}" for i in range(40)}
        assert sum(commits) == 40 and len(commits) < 40, commits
    finally:
        g.close()
