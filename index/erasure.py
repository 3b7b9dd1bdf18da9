"""Erasure beyond the face rows: what a forget or a collection drop also removes.

Deleting a face's row is not enough to make its template unrecoverable, nor
the person untraceable. The store calls the helpers here inside the very
transaction of a forget or a drop:

- :func:`forget_idempotency` deletes the idempotency rows of the registers
  that created the forgotten faces (they hold the person id and a digest of
  the request, i.e. of the template);
- :func:`pseudonymise_audit` replaces the forgotten person's id in audit
  entries with a keyed hash (:func:`pseudonym`, HMAC-SHA256 under the
  server secret): entries of one person still go together for an auditor, and
  someone holding both the secret and a candidate id can confirm it, but the
  id is no longer readable from the trail.

Around the store, :func:`server_secret` keeps that secret in the data
directory (mode 0600, made on first use), and :func:`private_dir` /
:func:`private_file` make the data directory 0700 and the store's files 0600,
so that other users of the machine cannot read templates from disk.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SECRET_FILE = "server.secret"
#: prefix of a pseudonymised person id (never a valid person id: ':' may not start one)
PSEUDONYM_PREFIX = "hmac:"
#: rows rewritten per statement batch (SQLite caps the number of parameters)
_CHUNK = 200


def private_dir(path: str | Path) -> Path:
    """Make ``path`` (and its parents) and restrict it to its owner (0700)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p, 0o700)
    return p


def private_file(path: str | Path) -> None:
    """Restrict an existing file to its owner (0600); a missing one is left alone."""
    try:
        os.chmod(path, 0o600)
    except FileNotFoundError:
        pass


def server_secret(data_dir: str | Path) -> bytes:
    """The server's 32-byte secret, kept in ``DATA_DIR/server.secret`` (0600).

    Made on first use with ``O_EXCL``, so processes starting together agree on
    one (the loser of the race reads the winner's file).
    """
    path = Path(data_dir) / SECRET_FILE
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # a process that just made it may not have written it yet
            data = path.read_bytes()
            if len(data) >= 32:
                private_file(path)
                return data[:32]
            import time

            time.sleep(0.01)
        raise RuntimeError(f"{path} holds no 32-byte secret: remove it to make a new one") from None
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()[:32]


def pseudonym(secret: bytes, collection: str, person_id: str) -> str:
    """The keyed hash that stands for ``person_id`` of ``collection`` once forgotten."""
    mac = hmac.new(secret, f"{collection}\0{person_id}".encode(), hashlib.sha256)
    return PSEUDONYM_PREFIX + mac.hexdigest()[:32]


def pseudonymise_audit(cur: Any, q: Callable[[str], str], secret: bytes, collection: str,
                       person_ids: Iterable[str] | None = None) -> int:
    """Replace person ids in the audit entries of ``collection``: those of
    ``person_ids``, or every one (``None``: the collection is dropped). Returns the
    number of entries rewritten."""
    wanted = None if person_ids is None else set(person_ids)
    if wanted is not None and not wanted:
        return 0
    where, params = "collection = ?", [collection]
    if wanted is not None and len(wanted) == 1:
        (pid,) = wanted
        # LIKE may over-match ('_' is a wildcard): the rows are filtered exactly below
        where += " AND (person_id = ? OR details LIKE ?)"
        params += [pid, f'%"{pid}"%']
    else:
        where += " AND (person_id IS NOT NULL OR details LIKE ?)"
        params.append('%"person_ids"%')
    cur.execute(q(f"SELECT seq, person_id, details FROM audit_log WHERE {where}"), params)

    def hide(pid: str | None) -> str | None:
        if pid is None or pid.startswith(PSEUDONYM_PREFIX):
            return pid
        if wanted is not None and pid not in wanted:
            return pid
        return pseudonym(secret, collection, pid)

    updates = []
    for seq, pid, details in cur.fetchall():
        new_pid, new_details = hide(pid), details
        if details:
            d = json.loads(details)
            if d.get("person_ids"):
                d["person_ids"] = [hide(p) for p in d["person_ids"]]
                new_details = json.dumps(d, separators=(",", ":"))
        if new_pid != pid or new_details != details:
            updates.append((new_pid, new_details, seq))
    for i in range(0, len(updates), _CHUNK):
        cur.executemany(q("UPDATE audit_log SET person_id = ?, details = ? WHERE seq = ?"),
                        updates[i:i + _CHUNK])
    return len(updates)


def forget_idempotency(cur: Any, q: Callable[[str], str], cid: int,
                       face_ids: Iterable[str]) -> int:
    """Remove ``face_ids`` from the idempotency rows of ``cid`` whose stored answer
    names them (the registers that created them): a row left with no face is
    deleted, one that still names other faces keeps only those (a retry gets
    them back, and the forgotten ones stay forgotten). Returns the rows changed.

    Face ids are 32 random hex characters, so a substring match on the stored
    answer finds exactly the rows naming them; the scan is over the collection's
    idempotency rows.
    """
    gone = set(face_ids)
    pats = [f'%"{f}"%' for f in gone]
    rows: dict[str, str] = {}
    for i in range(0, len(pats), 50):
        part = pats[i:i + 50]
        cond = " OR ".join(["response LIKE ?"] * len(part))
        cur.execute(q(f"SELECT key, response FROM idempotency_keys WHERE collection_id = ? "
                      f"AND ({cond})"), [cid, *part])
        rows.update((k, r) for k, r in cur.fetchall())
    for key, response in rows.items():
        fids, pids, *extra = json.loads(response)
        kept = [(f, p) for f, p in zip(fids, pids, strict=True) if f not in gone]
        if not kept:
            cur.execute(q("DELETE FROM idempotency_keys WHERE collection_id = ? AND key = ?"),
                        (cid, key))
        else:
            answer = [[f for f, _ in kept], [p for _, p in kept], *extra]
            cur.execute(q("UPDATE idempotency_keys SET response = ? "
                          "WHERE collection_id = ? AND key = ?"),
                        (json.dumps(answer), cid, key))
    return len(rows)
