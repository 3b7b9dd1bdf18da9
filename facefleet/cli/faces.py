"""Commands on photos: enroll a folder, identify, verify, detect, register one face."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
from rich.progress import (BarColumn, MofNCompleteColumn, Progress,
                           ProgressColumn, Task, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from facefleet import draw
from facefleet.enroll import MANIFEST_NAME, Manifest, enroll as enroll_tree, write_report
from facefleet.errors import ApiError

from facefleet.cli.base import Ctx, common, main, parse_labels


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




# --------------------------------------------------------------------------- one face


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
