"""Enrolling a folder tree of people into a collection, resumably.

The tree is one folder per person (``people/alice/1.jpg``); the folder name is
the person's display name and, made safe, its ``person_id``. Each photo is
identified by the sha256 of its bytes. What was enrolled is kept in a small
client-side manifest (JSON) keyed by collection and content hash; a rerun
skips those photos. The server cannot hold the hash for us: ``labels`` belong
to a person, not a face, and there is no listing of faces by label. So before
trusting the manifest, a run checks it against the server: the collection
must be the same one (same ``created_at``, so a dropped and recreated
collection, or another server, invalidates it), and every face the manifest
lists must still exist (one ``GET persons/{id}`` per person), so faces deleted
meanwhile are enrolled again. Photos that failed for a reason that will not
change (no face, undecodable, too large) are remembered too and not resent
unless asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefleet.async_client import AsyncClient
from facefleet.calls import EnrollItem
from facefleet.errors import (ApiError, CollectionNotFound, Conflict, ModelMismatch, NotFound,
                              TransportError)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pgm",
                  ".ppm", ".pnm"}
# Codes that a resend of the same bytes would get again.
PERMANENT = {"no_face_detected", "image_decode_error", "image_too_large", "too_many_pixels"}
MANIFEST_NAME = ".facefleet-enrolled.json"
MAX_BATCH_BYTES = 24 * 1024 * 1024  # keep one request body well under server limits
_SAVE_EVERY_S = 2.0
_PERSON_BAD = re.compile(r"[^A-Za-z0-9_.:@-]+")


def person_id_for(folder: str) -> str:
    """A valid person_id for a folder name (letters, digits and ``_.:@-``)."""
    pid = _PERSON_BAD.sub("-", folder).lstrip("_.:@-")[:128].rstrip("-")
    return pid or "p-" + hashlib.sha256(folder.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Photo:
    path: Path
    rel: str  # path relative to the root, as reports show it
    person_id: str
    name: str
    sha256: str
    size: int


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def scan(root: Path) -> tuple[list[Photo], list[str]]:
    """Photos under ``root/<person>/...`` and the image files directly in ``root``
    (which belong to no person and are reported, not enrolled)."""
    photos: list[Photo] = []
    loose: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                loose.append(entry.name)
            continue
        if not entry.is_dir():
            continue
        pid = person_id_for(entry.name)
        for f in sorted(entry.rglob("*")):
            rel = f.relative_to(root)
            if f.suffix.lower() not in IMAGE_SUFFIXES or _hidden(rel) or not f.is_file():
                continue
            data = f.read_bytes()
            photos.append(Photo(f, rel.as_posix(), pid, entry.name,
                                hashlib.sha256(data).hexdigest(), len(data)))
    return photos, loose


class Manifest:
    """``{"version": 1, "collections": {name: {"created_at": t, "photos": {sha256: entry}}}}``,
    written atomically so an interrupted run leaves a valid file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"version": 1, "collections": {}}
        if path.is_file():
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict) and loaded.get("version") == 1:
                self.data = loaded

    def section(self, collection: str, created_at: float) -> dict[str, dict[str, Any]]:
        """The photo entries of ``collection``, emptied when they describe another
        incarnation of it."""
        sec = self.data["collections"].get(collection)
        if sec is None or sec.get("created_at") != created_at:
            sec = {"created_at": created_at, "photos": {}}
            self.data["collections"][collection] = sec
        return sec["photos"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".facefleet-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass
class Problem:
    path: str
    person_id: str
    code: str
    message: str
    new: bool  # failed in this run (False: remembered from an earlier run)
    #: the X-Request-Id of the request that carried the photo (to find it in the server's log)
    request_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "person_id": self.person_id, "code": self.code,
                "message": self.message, "new": self.new, "request_id": self.request_id}


@dataclass
class Summary:
    collection: str
    model: str
    found: int = 0
    persons: int = 0
    already: int = 0      # skipped: enrolled by an earlier run
    enrolled: int = 0     # new faces this run
    duplicates: int = 0   # same bytes as another photo of this run
    stale: int = 0        # in the manifest but gone from the server: enrolled again
    loose: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(1 for p in self.problems if p.new)

    @property
    def faces_per_s(self) -> float:
        return self.enrolled / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "model": self.model, "found": self.found,
                "persons": self.persons, "already_enrolled": self.already,
                "enrolled": self.enrolled, "failed": self.failed,
                "known_failures": len(self.problems) - self.failed,
                "duplicates": self.duplicates, "stale": self.stale,
                "not_in_person_folder": self.loose, "seconds": round(self.seconds, 2),
                "faces_per_s": round(self.faces_per_s, 2),
                "problems": [p.as_dict() for p in self.problems]}


Progress = Callable[[int, int], None]  # (photos done, faces enrolled) since the start


async def _collection(client: AsyncClient, name: str, model: str | None):
    try:
        return await client.collection(name)
    except CollectionNotFound:
        pass
    try:
        await client.create_collection(name, model=model)
    except Conflict:
        pass  # another enroll created it meanwhile; its model binding is checked server-side
    return await client.collection(name)


async def _live_faces(client: AsyncClient, collection: str, person_ids: set[str],
                      concurrency: int) -> set[str]:
    sem = asyncio.Semaphore(concurrency)

    async def one(pid: str) -> list[str]:
        async with sem:
            try:
                return [f.id for f in (await client.person(collection, pid)).faces]
            except NotFound:
                return []

    rows = await asyncio.gather(*(one(p) for p in sorted(person_ids)))
    return {fid for row in rows for fid in row}


def _batches(photos: list[Photo], size: int) -> list[list[Photo]]:
    out: list[list[Photo]] = []
    cur: list[Photo] = []
    nbytes = 0
    for p in photos:
        if cur and (len(cur) >= size or nbytes + p.size > MAX_BATCH_BYTES):
            out.append(cur)
            cur, nbytes = [], 0
        cur.append(p)
        nbytes += p.size
    if cur:
        out.append(cur)
    return out


async def enroll(client: AsyncClient, root: Path, collection: str, manifest: Manifest, *,
                 model: str | None = None, detector: str | None = None, batch_size: int = 8,
                 concurrency: int = 2, retry_failed: bool = False,
                 on_start: Callable[[int], None] | None = None,
                 on_progress: Progress | None = None) -> Summary:
    """Enrol every new photo under ``root``; ``on_start(n)`` is told how many photos
    will be sent, ``on_progress`` is called after each batch."""
    t0 = time.perf_counter()
    photos, loose = await asyncio.to_thread(scan, root)
    info = await _collection(client, collection, model)
    if model is not None and model != info.model:
        raise ModelMismatch(f"collection {collection!r} holds {info.model} embeddings, "
                            f"not {model}", status=409)
    summary = Summary(collection, info.model, found=len(photos),
                      persons=len({p.person_id for p in photos}), loose=loose)
    entries = manifest.section(collection, info.created_at)

    enrolled = {h: e for h, e in entries.items() if e.get("status") == "enrolled"}
    if enrolled:
        live = await _live_faces(client, collection, {e["person_id"] for e in enrolled.values()},
                                 concurrency * 4)
        for h, e in enrolled.items():
            if e.get("face_id") not in live:
                del entries[h]
                summary.stale += 1

    todo: list[Photo] = []
    seen: set[str] = set()
    for p in photos:
        e = entries.get(p.sha256)
        if p.sha256 in seen:
            summary.duplicates += 1
        elif e is not None and e.get("status") == "enrolled":
            summary.already += 1
        elif e is not None and not retry_failed:
            summary.problems.append(Problem(p.rel, p.person_id, e.get("code", ""),
                                            e.get("message", ""), new=False))
        else:
            todo.append(p)
        seen.add(p.sha256)

    if on_start:
        on_start(len(todo))
    done = 0
    last_save = time.monotonic()
    sem = asyncio.Semaphore(max(1, concurrency))

    async def send(batch: list[Photo]) -> None:
        nonlocal done, last_save
        rid = "enroll-" + uuid.uuid4().hex  # one per request, kept with each failure
        async with sem:
            try:
                with client.request_id(rid):
                    res = await client.register_batch(
                        collection, [EnrollItem(p.path, p.person_id, p.name) for p in batch],
                        model=info.model, detector=detector)
                outcomes = [(r.ok, r.face_id, r.error_code or "", r.error_message or "")
                            for r in res.results]
            except ApiError as exc:
                if exc.status in (401, 403, 404, 409):
                    raise  # wrong key, collection or model: every batch would fail alike
                outcomes = [(False, None, exc.code, exc.message)] * len(batch)
            except (TransportError, OSError) as exc:
                outcomes = [(False, None, "connection_error", str(exc))] * len(batch)
        for i, (p, (ok, face_id, code, message)) in enumerate(zip(batch, outcomes,
                                                                   strict=True)):
            message = _named(message, batch, i)
            if ok:
                summary.enrolled += 1
                entries[p.sha256] = {"status": "enrolled", "face_id": face_id,
                                     "person_id": p.person_id, "path": p.rel}
            else:
                summary.problems.append(Problem(p.rel, p.person_id, code, message, new=True,
                                                request_id=rid))
                if code in PERMANENT:
                    entries[p.sha256] = {"status": "failed", "code": code, "message": message,
                                         "person_id": p.person_id, "path": p.rel}
        done += len(batch)
        if time.monotonic() - last_save > _SAVE_EVERY_S:
            manifest.save()
            last_save = time.monotonic()
        if on_progress:
            on_progress(done, summary.enrolled)

    tasks = [asyncio.ensure_future(send(b)) for b in _batches(todo, max(1, batch_size))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        manifest.save()  # whatever was acknowledged is kept, even on a fatal error
        summary.seconds = time.perf_counter() - t0
    summary.problems.sort(key=lambda p: p.path)
    return summary


_ITEM_FIELD = re.compile(r"items\[(\d+)\]\.img")


def _named(message: str, batch: list[Photo], index: int) -> str:
    """The server's message with its field names (``items[3].img``) replaced by the
    photos they were: a report names files, not request fields."""
    def name(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return batch[i].rel if i < len(batch) else m.group(0)

    return _ITEM_FIELD.sub(name, message).replace("'img'", f"'{batch[index].rel}'")


def write_report(summary: Summary, path: Path) -> Path:
    """The run's problems (and totals) as JSON, or as CSV when ``path`` ends in .csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "person_id", "code", "message", "new", "request_id"])
            for p in summary.problems:
                w.writerow([p.path, p.person_id, p.code, p.message, p.new, p.request_id])
    else:
        path.write_text(json.dumps(summary.as_dict(), indent=1))
    return path
