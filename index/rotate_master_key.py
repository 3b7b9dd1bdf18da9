"""Rotate the master key of the templates sealed at rest: re-wrap every data key.

    .venv/bin/python -m index.rotate_master_key --new-key-file NEW [--config serve_config.yaml]
                                                [--old-key-file OLD]

The store is the one the serve config names (``index.backend``, ``index.database_url``,
``data_dir``); the keys that open today's collections are the configured ones
(``encryption.*``, ``$FACEFLEET_MASTER_KEY``) plus ``--old-key-file``. Every encrypted
collection's data key is re-wrapped under the new key in one transaction; no template is
rewritten, so the rotation takes a moment whatever the collection sizes. Then point
``encryption.master_key_file`` at the new key, keep the old one as
``encryption.previous_master_key_file`` while running services restart (a collection they
make in between is wrapped by the old key: run this again), and destroy the old key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from configs.settings import Settings
from index.sealing import LocalMasterKey, SealingError
from index.store.factory import master_keys, open_store


def settings_of(config: Path) -> Settings:
    """The settings of the serve config's application (its environment included)."""
    doc = yaml.safe_load(config.read_text()) or {}
    apps = doc.get("applications") or [{}]
    args: dict[str, Any] = (apps[0].get("args") or {}).get("settings") or {}
    return Settings.model_validate(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=Path("serve_config.yaml"))
    p.add_argument("--new-key-file", required=True, help="the new master key (32 bytes, "
                   "raw or base64)")
    p.add_argument("--old-key-file", action="append", default=[],
                   help="a key that wrapped some collection, beside the configured ones")
    a = p.parse_args(argv)
    try:
        s = settings_of(a.config)
        if s.index.backend == "pgvector":
            print("the pgvector backend stores vectors plain (PostgreSQL searches them): "
                  "nothing to rotate", file=sys.stderr)
            return 2
        new = LocalMasterKey.from_file(a.new_key_file)
        keys = master_keys(**s.encryption.model_dump()) + [
            LocalMasterKey.from_file(f) for f in a.old_key_file]
        store = open_store(s.index.backend, s.index.database_url, s.data_dir.resolve())
        store.masters = keys
        try:
            counts = store.rewrap_keys(new)
        finally:
            store.close()
    except (SealingError, OSError, ValueError) as exc:
        print(f"rotate_master_key: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"master_key_id": new.key_id, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
