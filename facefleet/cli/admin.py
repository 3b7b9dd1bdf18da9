"""Commands for administrators: API keys and the audit trail."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click


from facefleet.cli.base import Ctx, common, main


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
    ["face.register", "face.forget", "face.import", "face.enrol_unknown", "person.forget",
     "person.update", "person.merge", "collection.create", "collection.update",
     "collection.drop", "key.create", "key.revoke", "identify", "face.read", "person.read",
     "persons.list", "faces.list", "export", "clusters", "auth.failure"]),
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
