"""Commands on what is enrolled: collections, forget, listings, update-person, export and import."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                           TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from facefleet.calls import UNSET

from facefleet.cli.base import Ctx, common, main, parse_labels


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
@click.option("-q", "--search", "q", default=None,
              help="Only persons whose name or id contains this text (any case); "
                   "a --cursor must come from the same search.")
@common
def persons(ctx: Ctx, collection: str, limit: int, cursor: str | None, every: bool,
            q: str | None) -> None:
    """List the persons of COLLECTION (person-id order) with their face counts."""
    with ctx.client() as client:
        items, nxt = _pages(functools.partial(client.persons, collection, q=q), limit, cursor,
                            every)
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


@main.command("merge")
@click.argument("person_id")
@click.argument("sources", nargs=-1, required=True, metavar="FROM...")
@click.option("-c", "--collection", required=True)
@common
def merge(ctx: Ctx, person_id: str, sources: tuple[str, ...], collection: str) -> None:
    """Move every face of the persons FROM... into PERSON_ID (made when new) and remove
    them. Naming a cluster: merge its persons, then `update-person --name`."""
    with ctx.client() as client:
        p = client.merge(collection, person_id, list(sources))
    if ctx.out.as_json:
        ctx.out.json(p.raw)
        return
    ctx.out.line(f"{p.person_id} in '{collection}': {len(p.raw.get('moved_faces', []))} faces "
                 f"moved from {', '.join(sources)}; {len(p.faces)} faces now")


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


@main.command()
@click.option("-c", "--collection", required=True)
@click.option("--scope", type=click.Choice(["unnamed", "all"]), default="unnamed",
              show_default=True, help="unnamed: faces of persons without a name (enrolled "
              "without a person id); all: every face.")
@click.option("--threshold", type=float, default=None,
              help="Cut distance (default: the identify threshold of the collection's model).")
@common
def cluster(ctx: Ctx, collection: str, scope: str, threshold: float | None) -> None:
    """Group the unknown faces of COLLECTION into candidate people, each with the named
    person it most resembles (a large collection runs as a job; this waits for it)."""
    with ctx.client() as client:
        out = client.cluster(collection, scope=scope, threshold=threshold)
    if ctx.out.as_json:
        ctx.out.json(out)
        return
    ctx.out.table(f"clusters in '{collection}' ({out['faces']} faces, cut "
                  f"{out['threshold']:.4f})", ["cluster", "faces", "persons", "suggested"],
                  [[c["cluster_id"], c["size"], len(c["person_ids"]),
                    "" if c["suggested"] is None else
                    f"{c['suggested']['name'] or c['suggested']['person_id']} "
                    f"({c['suggested']['distance']:.3f})"] for c in out["clusters"]])
    ctx.out.info(f"{out['unclustered']} faces joined no cluster; name a cluster with "
                 "`facefleet merge` and `facefleet update-person`")
