"""The ``facefleet`` command line: enroll a folder of people, identify, verify, detect,
list and update what is enrolled, export and import collections; manage API keys and
read the audit trail.

A thin layer over :mod:`facefleet.client` and :mod:`facefleet.enroll`: it
parses options (server from ``--url`` / ``FACEFLEET_URL``, key from
``--api-key`` / ``FACEFLEET_API_KEY``), calls the service and hands results
to :class:`facefleet.output.Output`. Exit codes: 0 success; 1 the answer is
"no" or some inputs failed (``verify`` of two different people, an
``identify`` image that could not be read, ``enroll --fail-on-error`` with
failures); 2 usage errors and failures to talk to the service.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                           ProgressColumn, Task, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.text import Text

from facefleet import __version__, draw
from facefleet.client import DEFAULT_URL, UNSET, AsyncClient, Client
from facefleet.enroll import MANIFEST_NAME, Manifest, enroll as enroll_tree, write_report
from facefleet.errors import ApiError, FacefleetError, TransportError
from facefleet.output import Output

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self, url: str, api_key: str | None, as_json: bool, timeout: float) -> None:
        self.url = url
        self.api_key = api_key
        self.timeout = timeout
        self.out = Output(as_json)

    def client(self) -> Client:
        return Client(self.url, api_key=self.api_key, timeout=self.timeout)

    def async_client(self, connections: int) -> AsyncClient:
        return AsyncClient(self.url, api_key=self.api_key, timeout=self.timeout,
                           max_connections=connections)


def _connection_options(fn: F, *, top: bool) -> F:
    """``--url``, ``--api-key``, ``--json`` and ``--timeout``. On the group (``top``)
    they carry the environment and the defaults; on a command they are unset unless
    given, so ``facefleet --url U collections`` and ``facefleet collections --url U``
    mean the same, and one given after the command wins."""
    fn = click.option("--url", envvar="FACEFLEET_URL" if top else None,
                      default=DEFAULT_URL if top else None, show_default=top,
                      help="Service base URL (env FACEFLEET_URL).")(fn)
    fn = click.option("--api-key", envvar="FACEFLEET_API_KEY" if top else None, default=None,
                      help="API key (env FACEFLEET_API_KEY).")(fn)
    fn = click.option("--json", "as_json", is_flag=True,
                      help="Print one JSON document for scripts.")(fn)
    fn = click.option("--timeout", type=float, default=120.0 if top else None,
                      show_default=top, help="Seconds per request.")(fn)
    return fn


def common(fn: F) -> F:
    """Connection and output options, accepted by every command (after its name)
    as well as by ``facefleet`` itself (before it)."""

    @functools.wraps(fn)
    def wrapper(url: str | None, api_key: str | None, as_json: bool, timeout: float | None,
                **kw: Any) -> Any:
        top = click.get_current_context().find_root().params
        url = url or top.get("url") or DEFAULT_URL
        api_key = api_key or top.get("api_key")
        as_json = as_json or bool(top.get("as_json"))
        timeout = timeout if timeout is not None else top.get("timeout") or 120.0
        ctx = Ctx(url, api_key, as_json, timeout)
        try:
            return fn(ctx, **kw)
        except TransportError as exc:
            ctx.out.error(f"cannot reach facefleet at {url}: {exc}")
        except ApiError as exc:
            ctx.out.error(str(exc))
        except (FacefleetError, FileNotFoundError) as exc:
            ctx.out.error(str(exc))
        raise SystemExit(2)

    return _connection_options(wrapper, top=False)  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="facefleet")
@functools.partial(_connection_options, top=True)
def main(url: str, api_key: str | None, as_json: bool, timeout: float) -> None:
    """facefleet: enroll people from a folder, then identify and verify faces.

    --url, --api-key, --json and --timeout go before or after the command."""


# --------------------------------------------------------------------------- enroll


class RateColumn(ProgressColumn):
    """Faces enrolled per second since the start."""

    def render(self, task: Task) -> Text:
        faces = task.fields.get("faces", 0)
        rate = faces / task.elapsed if task.elapsed else 0.0
        return Text(f"{faces} faces, {rate:.1f} faces/s")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-c", "--collection", required=True, help="Collection to enroll into (created "
              "if missing).")
@click.option("--model", default=None, help="Embedding model of a new collection.")
@click.option("--detector", default=None, help="Face detector (server default if unset).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Photos per request.")
@click.option("--concurrency", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Requests in flight.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Manifest of enrolled photos [default: DIRECTORY/{MANIFEST_NAME}].")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the report of failed photos (.json or .csv) "
                   "[default: DIRECTORY/.facefleet-report.json].")
@click.option("--retry-failed", is_flag=True,
              help="Resend photos that failed before (no face, undecodable...).")
@click.option("--fail-on-error", is_flag=True, help="Exit 1 when any photo failed (without it, "
              "a run where some photos enrolled exits 0; one where every photo sent failed "
              "exits 1 either way).")
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar.")
@common
def enroll(ctx: Ctx, directory: Path, collection: str, model: str | None, detector: str | None,
           batch_size: int, concurrency: int, state: Path | None, report: Path | None,
           retry_failed: bool, fail_on_error: bool, no_progress: bool) -> None:
    """Enroll DIRECTORY, one sub-folder per person (people/alice/1.jpg).

    Photos enrolled by an earlier run (same bytes, same collection) are skipped.
    Exit 1 when photos were sent and none enrolled, or with --fail-on-error when
    any failed; 0 otherwise (failures are listed and written to the report).
    """
    manifest = Manifest(state or directory / MANIFEST_NAME)
    progress = Progress(TextColumn("enrolling"), BarColumn(), MofNCompleteColumn(),
                        RateColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        TimeElapsedColumn(), console=ctx.out.err, disable=no_progress,
                        transient=False)
    task = progress.add_task("enroll", total=None, faces=0)

    async def run():
        async with ctx.async_client(concurrency * 2) as client:
            return await enroll_tree(
                client, directory, collection, manifest, model=model, detector=detector,
                batch_size=batch_size, concurrency=concurrency, retry_failed=retry_failed,
                on_start=lambda n: progress.update(task, total=n),
                on_progress=lambda done, faces: progress.update(task, completed=done,
                                                                faces=faces))

    with progress:
        summary = asyncio.run(run())
    report_path = write_report(summary, report or directory / ".facefleet-report.json")

    out = ctx.out
    if out.as_json:
        out.json({**summary.as_dict(), "report": str(report_path),
                  "state": str(manifest.path)})
    else:
        out.table(f"enrolled into '{summary.collection}' ({summary.model})",
                  ["photos", "persons", "new faces", "already enrolled", "failed",
                   "known failures", "seconds", "faces/s"],
                  [[summary.found, summary.persons, summary.enrolled, summary.already,
                    summary.failed, len(summary.problems) - summary.failed,
                    f"{summary.seconds:.1f}", f"{summary.faces_per_s:.1f}"]])
        if summary.problems:
            out.table("photos not enrolled", ["photo", "code", "message", "request id"],
                      [[p.path, p.code, p.message, p.request_id or "(earlier run)"]
                       for p in summary.problems[:20]])
            more = len(summary.problems) - 20
            out.line(f"{'... and ' + str(more) + ' more; ' if more > 0 else ''}"
                     f"report: {report_path}")
    if summary.loose:
        out.warn(f"{len(summary.loose)} image(s) directly in {directory} belong to no person "
                 "folder and were not enrolled")
    if summary.stale:
        out.warn(f"{summary.stale} photo(s) in the manifest were no longer on the server "
                 "and were enrolled again")
    if summary.failed and not summary.enrolled:
        out.error(f"none of the {summary.failed} photo(s) sent was enrolled")
        raise SystemExit(1)
    if fail_on_error and summary.problems:
        raise SystemExit(1)


# --------------------------------------------------------------------------- identify


def _draw_target(draw_to: Path | None, image: Path, many: bool) -> Path | None:
    if draw_to is None:
        return None
    return draw_to / f"{image.stem}-identified.jpg" if many else draw_to


def read_embedding(source: str) -> list[float]:
    """An embedding from a file or '-' (stdin): a JSON list of numbers, or an object
    with an "embedding" list (a line of an export, a face of /v1/embed)."""
    try:
        text = click.get_text_stream("stdin").read() if source == "-" else \
            Path(source).read_text()
        doc = json.loads(text)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {source}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{source} is not JSON: {exc}") from exc
    if isinstance(doc, dict):
        doc = doc.get("embedding", (doc.get("faces") or [{}])[0].get("embedding"))
    if not isinstance(doc, list) or not doc or not all(isinstance(x, int | float) for x in doc):
        raise click.BadParameter(f"{source} holds no embedding (a JSON list of numbers)")
    return [float(x) for x in doc]


@main.command()
@click.argument("images", nargs=-1, required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-c", "--collection", required=True, help="Collection to search.")
@click.option("--embedding", "embedding_from", default=None, metavar="FILE",
              help="Search this embedding (JSON list, or '-' for stdin) instead of IMAGES.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Candidates per face (in --json).")
@click.option("--per-person", is_flag=True,
              help="At most one candidate (the nearest face) per person.")
@click.option("--threshold", type=float, default=None,
              help="Cosine distance for a match (the model's calibrated one if unset).")
@click.option("--max-faces", type=click.IntRange(1, 256), default=None)
@click.option("--draw", "draw_to", type=click.Path(path_type=Path), default=None,
              help="Write the photo with boxes and names; a folder when several IMAGES.")
@common
def identify(ctx: Ctx, images: tuple[Path, ...], collection: str, embedding_from: str | None,
             top_k: int, per_person: bool, threshold: float | None, max_faces: int | None,
             draw_to: Path | None) -> None:
    """Who is in each of IMAGES (or who is --embedding)? Every face against COLLECTION,
    nearest match first."""
    if bool(images) == (embedding_from is not None):
        raise click.UsageError("give IMAGES or --embedding (one of them)")
    out, many, failed = ctx.out, len(images) > 1, 0
    docs: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    if embedding_from is not None:
        vector = read_embedding(embedding_from)
        with ctx.client() as client:
            res = client.identify_embedding(collection, vector, top_k=top_k,
                                            threshold=threshold, per_person=per_person)
        if out.as_json:
            out.json({"collection": collection, "results": [{"embedding": embedding_from,
                                                             **res.raw}]})
            return
        out.table(f"identify in '{collection}'", ["rank", "person", "name", "face", "distance",
                                                  "match"],
                  [[i, m.person_id, m.name or "", m.face_id, f"{max(0.0, m.distance):.3f}",
                    "yes" if m.match else "no"]
                   for i, m in enumerate(res.faces[0].matches if res.faces else [], 1)])
        return
    with ctx.client() as client:
        # the collection's own model: the server would otherwise assume its default
        model = client.collection(collection).model
        for image in images:
            try:
                res = client.identify(collection, image, top_k=top_k, threshold=threshold,
                                      model=model, max_faces=max_faces,
                                      enforce_detection=False, per_person=per_person)
            except ApiError as exc:
                if exc.status in (401, 403, 404, 409):
                    raise  # the collection or key is wrong: no other image will do better
                failed += 1
                docs.append({"image": str(image), "error": {"code": exc.code,
                                                            "message": exc.message}})
                rows.append([image.name, "-", "-", f"error: {exc.code}", "", ""])
                continue
            target = _draw_target(draw_to, image, many)
            if target is not None:
                draw.save(draw.render(draw.open_oriented(image),
                                      draw.identification_annotations(res.faces)), target)
            docs.append({"image": str(image), **res.raw,
                         **({"drawn": str(target)} if target else {})})
            if not res.faces:
                rows.append([image.name, "-", "-", "no face found", "", ""])
            for i, f in enumerate(res.faces, 1):
                near = f.matches[0] if f.matches else None
                rows.append([image.name, i, "{},{} {}x{}".format(*f.box.as_tuple()),
                             (near.label if near and near.match else "unknown"),
                             f"{max(0.0, near.distance):.3f}" if near else "",
                             ("" if near is None or near.match
                              else f"nearest: {near.label}")])
    if out.as_json:
        out.json({"collection": collection, "results": docs})
    else:
        out.table(f"identify in '{collection}'", ["image", "face", "box", "person",
                                                  "distance", "note"], rows)
        if draw_to is not None:
            out.info(f"drawn: {draw_to}")
    if failed:
        raise SystemExit(1)


# --------------------------------------------------------------------------- verify


@main.command()
@click.argument("image1", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("image2", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--threshold", type=float, default=None,
              help="Cosine distance for 'same person' (the model's calibrated one if unset).")
@click.option("--model", default=None, help="Embedding model (server default if unset).")
@common
def verify(ctx: Ctx, image1: Path, image2: Path, threshold: float | None,
           model: str | None) -> None:
    """Are the largest faces of IMAGE1 and IMAGE2 the same person? Exit 0 yes, 1 no."""
    with ctx.client() as client:
        res = client.verify(image1, image2, threshold=threshold, model=model)
    if ctx.out.as_json:
        ctx.out.json(res.raw)
    else:
        ctx.out.table(None, ["same person", "distance", "threshold", "model"],
                      [["yes" if res.verified else "no",
                        "-" if res.distance is None else f"{res.distance:.4f}",
                        f"{res.threshold:.4f}", res.model]])
    if not res.verified:
        raise SystemExit(1)


# --------------------------------------------------------------------------- detect


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--detector", default=None, help="Face detector (server default if unset).")
@click.option("--max-faces", type=click.IntRange(1, 1024), default=None)
@click.option("--draw", "draw_to", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the photo with boxes and landmarks drawn.")
@common
def detect(ctx: Ctx, image: Path, detector: str | None, max_faces: int | None,
           draw_to: Path | None) -> None:
    """Find the faces in IMAGE: boxes, confidence, five landmarks."""
    with ctx.client() as client:
        res = client.detect(image, detector=detector, max_faces=max_faces,
                            enforce_detection=False)
    if draw_to is not None:
        draw.save(draw.render(draw.open_oriented(image), draw.detection_annotations(res.faces)),
                  draw_to)
    if ctx.out.as_json:
        ctx.out.json({"image": str(image), **res.raw,
                      **({"drawn": str(draw_to)} if draw_to else {})})
        return
    ctx.out.table(f"{len(res.faces)} face(s) in {image.name} ({res.detector}, "
                  f"{res.time_ms:.0f} ms)", ["face", "box", "confidence"],
                  [[i, "{},{} {}x{}".format(*f.box.as_tuple()), f"{f.confidence:.3f}"]
                   for i, f in enumerate(res.faces, 1)])
    if draw_to is not None:
        ctx.out.info(f"drawn: {draw_to}")


# --------------------------------------------------------------------------- gallery


@main.command()
@click.argument("name", required=False)
@common
def collections(ctx: Ctx, name: str | None) -> None:
    """List collections with their face and person counts (or show NAME)."""
    with ctx.client() as client:
        names = [name] if name else [c.name for c in client.list_collections()]
        found = [client.collection(n) for n in names]
    if ctx.out.as_json:
        ctx.out.json({"collections": [c.raw for c in found]})
        return
    ctx.out.table(None, ["collection", "model", "dim", "faces", "persons"],
                  [[c.name, c.model, c.dim, c.faces, c.persons] for c in found])


@main.command()
@click.option("-c", "--collection", required=True)
@click.option("--person", "persons", multiple=True, help="Forget a person and all their "
              "faces (repeatable).")
@click.option("--face", "faces", multiple=True, help="Forget one face by id (repeatable).")
@click.option("--all", "drop", is_flag=True, help="Drop the whole collection.")
@click.option("--yes", is_flag=True, help="Do not ask before --all.")
@common
def forget(ctx: Ctx, collection: str, persons: tuple[str, ...], faces: tuple[str, ...],
           drop: bool, yes: bool) -> None:
    """Delete persons, faces, or a whole collection."""
    if not (persons or faces or drop):
        raise click.UsageError("say what to forget: --person, --face or --all")
    if drop and not yes:
        click.confirm(f"drop collection '{collection}' and every face in it?", abort=True)
    removed: list[dict[str, Any]] = []
    with ctx.client() as client:
        for pid in persons:
            d = client.delete_person(collection, pid)
            removed.append({"person_id": pid, "faces": d.face_ids})
        for fid in faces:
            client.delete_face(collection, fid)
            removed.append({"face_id": fid, "faces": [fid]})
        if drop:
            client.drop_collection(collection)
    if ctx.out.as_json:
        ctx.out.json({"collection": collection, "removed": removed, "dropped": drop})
        return
    for r in removed:
        what = f"person {r['person_id']}" if "person_id" in r else f"face {r['face_id']}"
        ctx.out.line(f"forgot {what} ({len(r['faces'])} face(s)) in '{collection}'")
    if drop:
        ctx.out.line(f"dropped collection '{collection}'")


# --------------------------------------------------------------------------- one face


def parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"labels are KEY=VALUE, not {v!r}")
        labels[key] = value
    return labels


@main.command()
@click.argument("image", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-c", "--collection", required=True, help="Collection to enrol into.")
@click.option("--embedding", "embedding_from", default=None, metavar="FILE",
              help="Enrol this embedding (JSON list, or '-' for stdin) instead of IMAGE.")
@click.option("--person-id", default=None, help="The person (a new one if unset).")
@click.option("--name", default=None, help="The person's name.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="A label of the person (repeatable).")
@click.option("--model", default=None, help="Embedding model (the collection's if unset).")
@common
def register(ctx: Ctx, image: Path | None, collection: str, embedding_from: str | None,
             person_id: str | None, name: str | None, labels: tuple[str, ...],
             model: str | None) -> None:
    """Enrol the largest face of IMAGE, or an --embedding, as one face of a person."""
    if (image is None) == (embedding_from is None):
        raise click.UsageError("give IMAGE or --embedding (one of them)")
    meta = {"person_id": person_id, "name": name,
            "labels": parse_labels(labels) if labels else None, "model": model}
    with ctx.client() as client:
        if image is not None:
            face = client.register(collection, image, **meta)
        else:
            face = client.register_embedding(collection, read_embedding(embedding_from),
                                             **meta)
    if ctx.out.as_json:
        ctx.out.json({"id": face.id, "person_id": face.person_id, "name": face.name,
                      "labels": face.labels, "collection": face.collection,
                      "box": face.box.__dict__ if face.box else None})
        return
    ctx.out.line(f"enrolled face {face.id} of {face.name or face.person_id} "
                 f"({face.person_id}) in '{collection}'")


# --------------------------------------------------------------------------- listings


def _pages(fetch: Callable[..., Any], limit: int, cursor: str | None,
           every: bool) -> tuple[list[Any], str | None]:
    items: list[Any] = []
    while True:
        page = fetch(limit=limit, cursor=cursor)
        items += page.items
        cursor = page.next_cursor
        if not every or cursor is None:
            return items, cursor


@main.command()
@click.option("-c", "--collection", required=True)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="Persons per page.")
@click.option("--cursor", default=None, help="Start after the page that gave this cursor.")
@click.option("--all", "every", is_flag=True, help="Every page, not just one.")
@common
def persons(ctx: Ctx, collection: str, limit: int, cursor: str | None, every: bool) -> None:
    """List the persons of COLLECTION (person-id order) with their face counts."""
    with ctx.client() as client:
        items, nxt = _pages(functools.partial(client.persons, collection), limit, cursor, every)
    if ctx.out.as_json:
        ctx.out.json({"collection": collection, "persons": [p.__dict__ for p in items],
                      "next_cursor": nxt})
        return
    ctx.out.table(f"persons in '{collection}'", ["person", "name", "faces", "labels"],
                  [[p.person_id, p.name or "", p.faces,
                    ", ".join(f"{k}={v}" for k, v in sorted(p.labels.items()))]
                   for p in items])
    if nxt:
        ctx.out.info(f"more: --cursor {nxt}")


@main.command()
@click.option("-c", "--collection", required=True)
@click.option("--person", "person_id", default=None, help="Only this person's faces.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="Faces per page.")
@click.option("--cursor", default=None, help="Start after the page that gave this cursor.")
@click.option("--all", "every", is_flag=True, help="Every page, not just one.")
@common
def faces(ctx: Ctx, collection: str, person_id: str | None, limit: int, cursor: str | None,
          every: bool) -> None:
    """List the faces of COLLECTION in enrolment order (of one --person)."""
    with ctx.client() as client:
        items, nxt = _pages(functools.partial(client.faces, collection, person_id=person_id),
                            limit, cursor, every)
    if ctx.out.as_json:
        ctx.out.json({"collection": collection, "next_cursor": nxt,
                      "faces": [{"id": f.id, "person_id": f.person_id, "name": f.name,
                                 "labels": f.labels, "created_at": f.created_at}
                                for f in items]})
        return
    ctx.out.table(f"faces in '{collection}'", ["face", "person", "name"],
                  [[f.id, f.person_id, f.name or ""] for f in items])
    if nxt:
        ctx.out.info(f"more: --cursor {nxt}")


@main.command("update-person")
@click.argument("person_id")
@click.option("-c", "--collection", required=True)
@click.option("--name", default=None, help="The new name.")
@click.option("--clear-name", is_flag=True, help="Remove the name.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="The new labels, replacing the old ones (repeatable).")
@click.option("--clear-labels", is_flag=True, help="Remove every label.")
@common
def update_person(ctx: Ctx, person_id: str, collection: str, name: str | None,
                  clear_name: bool, labels: tuple[str, ...], clear_labels: bool) -> None:
    """Rename or relabel PERSON_ID; what is not given stays."""
    if name is not None and clear_name or labels and clear_labels:
        raise click.UsageError("--name / --clear-name and --label / --clear-labels exclude "
                               "each other")
    new_name = None if clear_name else (name if name is not None else UNSET)
    new_labels = {} if clear_labels else (parse_labels(labels) if labels else UNSET)
    if new_name is UNSET and new_labels is UNSET:
        raise click.UsageError("nothing to change: --name, --label, --clear-name or "
                               "--clear-labels")
    with ctx.client() as client:
        p = client.update_person(collection, person_id, name=new_name, labels=new_labels)
    if ctx.out.as_json:
        ctx.out.json(p.raw)
        return
    ctx.out.line(f"{p.person_id} in '{collection}': name {p.name or '-'}, labels "
                 + (", ".join(f"{k}={v}" for k, v in sorted(p.labels.items())) or "-"))


# --------------------------------------------------------------------------- export / import


@main.command("export")
@click.option("-c", "--collection", required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write [default: COLLECTION.jsonl].")
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar.")
@common
def export_cmd(ctx: Ctx, collection: str, output: Path | None, no_progress: bool) -> None:
    """Write every face of COLLECTION, with its embedding, as JSON Lines (what
    `facefleet import` reads, into this service or another)."""
    output = output or Path(f"{collection}.jsonl")
    progress = Progress(TextColumn("exporting"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), TimeElapsedColumn(), console=ctx.out.err,
                        disable=no_progress)
    task = progress.add_task("export", total=None)
    with progress, ctx.client() as client:
        n = client.export_to(collection, output,
                             lambda done, total: progress.update(task, completed=done,
                                                                 total=total))
    if ctx.out.as_json:
        ctx.out.json({"collection": collection, "faces": n, "output": str(output)})
        return
    ctx.out.line(f"exported {n} faces of '{collection}' to {output}")


@main.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-c", "--collection", required=True, help="Collection to import into (created "
              "if missing, unless the service is strict about collections).")
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar.")
@click.option("--fail-on-error", is_flag=True, help="Exit 1 when any line was left out.")
@common
def import_cmd(ctx: Ctx, source: Path, collection: str, no_progress: bool,
               fail_on_error: bool) -> None:
    """Import the faces of SOURCE (JSON Lines, as `facefleet export` writes them) into
    COLLECTION, keeping their ids. Faces already there are skipped: run it again
    after any failure."""
    progress = Progress(TextColumn("importing"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TextColumn("{task.fields[lines]} lines"),
                        TimeRemainingColumn(), console=ctx.out.err, disable=no_progress)
    task = progress.add_task("import", total=source.stat().st_size, lines=0)
    with progress, ctx.client() as client:
        res = client.import_faces(collection, source, on_progress=lambda lines, sent:
                                  progress.update(task, completed=sent, lines=lines))
    out = ctx.out
    if out.as_json:
        out.json(res.raw)
    else:
        out.table(f"imported into '{res.collection}' ({res.model}, {res.dim}-d)",
                  ["faces read", "imported", "already there", "in another collection",
                   "left out"],
                  [[res.lines, res.imported, res.skipped, res.elsewhere, res.failed]])
        if res.errors:
            out.table("lines left out", ["line", "code", "message"],
                      [[e.line, e.code, e.message] for e in res.errors[:20]])
    if fail_on_error and res.failed:
        raise SystemExit(1)


# --------------------------------------------------------------------------- keys


@main.group()
def keys() -> None:
    """Make, list and revoke API keys (needs an admin key that sees every collection)."""


def _key_row(k: Any) -> list[Any]:
    return [k.id, k.name, ",".join(k.scopes),
            "(all)" if k.collections is None else ",".join(k.collections),
            _when(k.created_at), _when(k.last_used_at) if k.last_used_at else "never"]


_KEY_COLUMNS = ["id", "name", "scopes", "collections", "created", "last used"]


@keys.command("create")
@click.argument("name")
@click.option("-s", "--scope", "scopes", multiple=True, required=True,
              type=click.Choice(["read", "write", "admin", "export"]),
              help="read < write < admin, each including the ones before; export (every "
              "template of a collection) apart, included only in admin (repeatable).")
@click.option("-c", "--collection", "collections", multiple=True,
              help="Limit the key to this collection (repeatable); default: every one.")
@click.option("--ttl-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The key expires after this many days (default: the server's longest "
              "lifetime, auth.key_max_lifetime_days).")
@common
def keys_create(ctx: Ctx, name: str, scopes: tuple[str, ...],
                collections: tuple[str, ...], ttl_days: float | None) -> None:
    """Make a key called NAME. Its secret is printed once: store it now."""
    with ctx.client() as client:
        k = client.create_key(name, scopes, collections=list(collections) or None,
                              ttl_s=None if ttl_days is None else ttl_days * 86400.0)
    if ctx.out.as_json:
        ctx.out.json(k.raw)
        return
    ctx.out.table(None, _KEY_COLUMNS, [_key_row(k)])
    ctx.out.line(f"key: {k.key}")
    ctx.out.warn("the key is shown only now; the service keeps only its SHA-256")


@keys.command("list")
@common
def keys_list(ctx: Ctx) -> None:
    """The live keys (no secrets)."""
    with ctx.client() as client:
        found = client.list_keys()
    if ctx.out.as_json:
        ctx.out.json({"keys": [k.raw for k in found]})
        return
    ctx.out.table(None, _KEY_COLUMNS, [_key_row(k) for k in found])


@keys.command("revoke")
@click.argument("key_ids", nargs=-1, required=True)
@common
def keys_revoke(ctx: Ctx, key_ids: tuple[str, ...]) -> None:
    """Revoke the keys KEY_IDS: every ingress replica refuses them within seconds."""
    with ctx.client() as client:
        for kid in key_ids:
            client.revoke_key(kid)
    if ctx.out.as_json:
        ctx.out.json({"revoked": list(key_ids)})
        return
    for kid in key_ids:
        ctx.out.line(f"revoked key {kid}")


# --------------------------------------------------------------------------- audit


def _when(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _subject(e: Any) -> str:
    if e.target_key_id:
        return f"key {e.target_key_id}"
    parts = []
    if e.person_id:
        parts.append(f"person {e.person_id}")
    if e.face_ids:
        parts.append(f"{len(e.face_ids)} face(s)")
    if e.matches is not None:
        parts.append(f"{len(e.matches)} face(s) searched")
    return ", ".join(parts)


@main.command()
@click.option("-c", "--collection", default=None, help="Only this collection.")
@click.option("--action", default=None, type=click.Choice(
    ["face.register", "face.forget", "face.import", "person.forget", "person.update",
     "collection.create", "collection.drop", "key.create", "key.revoke", "identify",
     "face.read", "person.read", "persons.list", "faces.list", "export", "auth.failure"]),
    help="Only this action.")
@click.option("--since", default=None, help="Epoch seconds or ISO 8601 time (UTC).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="Entries per page.")
@click.option("--cursor", default=None, help="Start after this cursor (a page's next cursor).")
@click.option("--all", "every", is_flag=True, help="Follow the cursor to the last entry.")
@common
def audit(ctx: Ctx, collection: str | None, action: str | None, since: str | None, limit: int,
          cursor: str | None, every: bool) -> None:
    """The audit trail, oldest first: who changed or searched what, and when."""
    with ctx.client() as client:
        if every:
            entries = list(client.iter_audit(collection=collection, action=action, since=since,
                                             page_size=limit, cursor=cursor))
            next_cursor = None
        else:
            page = client.audit(collection=collection, action=action, since=since, limit=limit,
                                cursor=cursor)
            entries, next_cursor = page.entries, page.next_cursor
    if ctx.out.as_json:
        ctx.out.json({"entries": [e.raw for e in entries], "next_cursor": next_cursor})
        return
    ctx.out.table(None, ["seq", "at (UTC)", "action", "collection", "subject", "key",
                         "request id", "status"],
                  [[e.seq, _when(e.at), e.action, e.collection or "", _subject(e),
                    e.key_id or "-", e.request_id or "", e.status] for e in entries])
    if next_cursor is not None:
        ctx.out.info(f"more: facefleet audit --cursor {next_cursor}")


if __name__ == "__main__":
    main()
