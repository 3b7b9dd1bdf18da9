"""Who is calling: API keys, their scopes and collections, and each replica's key table.

Two kinds of keys open the API. Admin keys from the settings
(``api_key_sha256``, each a salted HMAC-SHA256 or an older plain SHA-256 of
the key, :mod:`configs.keyhash`) bootstrap the service. Authentication is off
only when ``auth.enabled`` is false, or, with ``auto`` (the default), while
the settings name no key: an empty list cannot turn it off once it is on, and
``auth.enabled: true`` with no key is refused. Keys
made through ``POST /v1/keys`` live in the gallery store, hashed; each has
scopes (``read`` < ``write`` < ``admin``, each including the ones before it)
optionally a list of the collections it may see, and an expiry after which
it is refused like a wrong key. Such a key reads
``ffk_<id>_<secret>``: the public id finds its row, the secret (256 bits from
:mod:`secrets`) is only ever compared as a SHA-256 digest, in constant time.

Each ingress replica keeps a copy of the key table (:class:`KeyTable`). It
polls the access service (``index.access_service.AccessService``, hosted by the
Gallery deployment beside its face code) every ``auth.refresh_s`` with the version it
holds; the service answers with one indexed read of the store's version
counter, and with the table only when it changed. A key from the table is
accepted only while the copy was read less than ``auth.max_age_s`` ago;
otherwise the request waits for a fresh read, and gets 503 if there is none.
A key id the copy does not hold (made on another replica a moment ago) makes
the request wait for a read that started after it arrived; such reads are
shared and start at most every ``MISS_REREAD_S``.
So a revoked key is refused by every replica within ``max_age_s``, even one
that cannot reach the store, which keeps failing closed. A known key id with
a wrong secret (or an expired key) waits for the same read before it is
refused, so the time of a refusal does not tell whether a key id exists. The replica does
not open the database itself: the Gallery already holds the store
connections, and one more pool per ingress replica would only multiply them.
Polling stops while no store key is used, so an idle replica costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from configs import keyhash
from pipelines.errors import Unavailable
from configs.settings import AuthSettings
from index.audit import SETTINGS_KEY_ID
from index.store.records import KeyRecord

log = logging.getLogger("facefleet.auth")

#: ranked scopes (each includes the ones before) and ``export``, which stands apart:
#: reading every template of a collection is more than a read, and is given only
#: by ``export`` itself or by ``admin``
SCOPES = ("read", "write", "admin", "export")
_RANK = {s: i + 1 for i, s in enumerate(SCOPES[:3])}
EXPORT = "export"
KEY_PREFIX = "ffk_"
_ID_HEX = 16  # 64-bit public key ids
#: a replica whose store keys went unused this long stops polling the key table
IDLE_STOP_S = 30.0
#: reads of the table for key ids the copy does not hold start at most this often
MISS_REREAD_S = 0.1

KeySource = Callable[[int | None, dict[str, float]],
                     Awaitable[tuple[int, Sequence[KeyRecord] | None]]]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: the key's id, its highest scope, its collections."""

    #: None when authentication is off; "settings" for a key from the settings
    key_id: str | None
    level: int
    #: None: every collection
    collections: frozenset[str] | None = None
    #: scopes outside the ranking that the key holds (``export``)
    extra: frozenset[str] = frozenset()

    def has(self, scope: str) -> bool:
        if scope == EXPORT:
            return self.level >= _RANK["admin"] or EXPORT in self.extra
        return self.level >= _RANK[scope]

    def sees(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


#: every request when authentication is off
ANONYMOUS = Principal(None, _RANK["admin"])
#: no key at all, with authentication on (only open routes let it through)
NOBODY = Principal(None, 0, frozenset())
#: a key from the settings: admin of everything
SETTINGS_ADMIN = Principal(SETTINGS_KEY_ID, _RANK["admin"])


def scope_level(scopes: Iterable[str]) -> int:
    return max((_RANK[s] for s in scopes if s in _RANK), default=0)


def settings_keys_update(user_config: dict[str, Any], current: Sequence[str]
                         ) -> tuple[list[str], bool | None]:
    """The settings keys and the explicit on / off that an Ingress ``user_config``
    asks for: ``(keys, enabled)``, ``enabled`` None when it says nothing.

    An explicit empty ``api_key_sha256`` must come with ``auth_enabled: false``:
    a replica that Serve starts afresh with that config (after a failed update, or
    to scale) knows nothing of the keys before it, so the list alone must never
    turn authentication off (ValueError)."""
    enabled = user_config.get("auth_enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ValueError("user_config.auth_enabled is true or false")
    if "api_key_sha256" not in user_config:
        return list(current), enabled
    keys = list(user_config.get("api_key_sha256") or [])
    if not keys and enabled is not False:
        raise ValueError("user_config.api_key_sha256 is empty: refused, since it would turn "
                         "authentication off; say auth_enabled: false to do that")
    return keys, enabled


def _expired(rec: KeyRecord) -> bool:
    return rec.expires_at is not None and rec.expires_at <= time.time()


def new_key() -> tuple[str, str, str]:
    """``(key id, the key, hex SHA-256 of the key)`` for a new API key."""
    key_id = secrets.token_hex(_ID_HEX // 2)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"  # 256 random bits
    return key_id, key, sha256_hex(key)


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The public id inside a key made by :func:`new_key` (None for any other string)."""
    n = len(KEY_PREFIX)
    if not key.startswith(KEY_PREFIX) or len(key) <= n + _ID_HEX + 1 \
            or key[n + _ID_HEX] != "_":
        return None
    kid = key[n:n + _ID_HEX]
    return kid if all(c in "0123456789abcdef" for c in kid) else None


def presented_key(headers: Any) -> str:
    """The key of a request: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip()


class KeyTable:
    """One ingress replica's view of who may call: settings keys and a cached copy
    of the store's key table (see the module docstring)."""

    def __init__(self, settings_sha256: Iterable[str], source: KeySource | None,
                 config: AuthSettings | None = None) -> None:
        self.config = config or AuthSettings()
        self._source = source
        self._settings: list[keyhash.KeyEntry] = []
        entries = list(settings_sha256)
        self._on = bool(entries) if self.config.enabled == "auto" else bool(self.config.enabled)
        self.set_settings_keys(entries)
        self._keys: dict[str, KeyRecord] = {}
        self._version: int | None = None
        self._read_at = -1e18  # monotonic time the copy was read (its poll started)
        self._last_start = -1e18  # when the latest read started
        self._not_before = -1e18  # reads that started before this do not refresh it
        self._used: dict[str, float] = {}
        self._last_use = 0.0
        self._inflight: asyncio.Future | None = None
        self._poller: asyncio.Task | None = None

    # -- settings keys
    def set_settings_keys(self, entries: Iterable[str], enabled: bool | None = None) -> None:
        """Replace the settings keys (``reconfigure``). ``enabled`` turns authentication
        on or off explicitly; without it, ``auth.enabled: auto`` turns it on when keys
        appear and never off. ValueError when authentication would be on with no key,
        or an entry is malformed: nothing is changed then."""
        parsed = [keyhash.parse(e) for e in entries]
        if enabled is not None:
            on = enabled
        elif self.config.enabled == "auto":
            on = self._on or bool(parsed)
        else:
            on = bool(self.config.enabled)
        if on and not parsed:
            raise ValueError("authentication is on and api_key_sha256 would name no key: "
                             "refused (turn authentication off explicitly with "
                             "auth.enabled: false)")
        self._settings, self._on = parsed, on

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (``auth.enabled``, see the module docstring)."""
        return self._on

    # -- who is this?
    async def authenticate(self, key: str) -> Principal | None:
        """The principal of ``key``, or None when no live key matches."""
        if not key:
            return None
        digest = sha256_hex(key)
        plain = bytes.fromhex(digest)
        # every settings entry is compared, so the time taken does not tell which matched
        if sum(e.matches(key, plain) for e in self._settings):
            return SETTINGS_ADMIN
        kid = key_id_of(key)
        if kid is None or self._source is None:
            return None
        arrived = time.monotonic()
        rec = (await self._current()).get(kid)
        if rec is None and self._read_at < arrived:
            # perhaps made on another replica since the copy was read: wait for a read
            # that started after this request arrived, so a key whose creation was
            # acknowledged before the request was sent is always found
            await self._read_since(arrived)
            rec = self._keys.get(kid)
        if rec is not None and (not hmac.compare_digest(digest, rec.key_sha256)
                                or _expired(rec)):
            # refused: but only after the read an unknown id waits for, so that both
            # refusals take the same time (the wait is shared and bounded)
            if self._read_at < arrived:
                await self._read_since(arrived)
            rec = None
        if rec is None:
            return None
        self._used[kid] = time.time()
        return Principal(kid, scope_level(rec.scopes),
                         None if rec.collections is None else frozenset(rec.collections),
                         frozenset(s for s in rec.scopes if s not in _RANK))

    def invalidate(self) -> None:
        """This replica changed the table itself (create / revoke): re-read it before
        the next store key is accepted (a read that started earlier does not count)."""
        self._read_at = -1e18
        self._not_before = time.monotonic()

    # -- the cached table
    async def _current(self) -> dict[str, KeyRecord]:
        self._last_use = time.monotonic()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        # twice at most: a read already in flight may have started before invalidate()
        for _ in range(2):
            if self._fresh():
                return self._keys
            try:
                await asyncio.wait_for(asyncio.shield(self._refresh()),
                                       max(1.0, self.config.max_age_s))
            except Exception as exc:  # noqa: BLE001 - reported as one typed answer
                log.warning("the API key table could not be read: %r", exc)
                break
        if not self._fresh():
            raise Unavailable("API keys cannot be checked right now (the key table is "
                              "unreachable); retry shortly")
        return self._keys

    async def _read_since(self, arrived: float) -> None:
        """Until the copy comes from a read that started at or after ``arrived``.

        Reads are shared and started at most every ``MISS_REREAD_S``, so a flood of
        unknown keys costs the store a few cheap version reads a second, not one each.
        """
        deadline = arrived + max(1.0, self.config.max_age_s)
        try:
            # twice at most: the read in flight may have started before ``arrived``
            for _ in range(2):
                if self._read_at >= arrived:
                    return
                wait = self._last_start + MISS_REREAD_S - time.monotonic()
                if wait > 0 and (self._inflight is None or self._inflight.done()):
                    await asyncio.sleep(wait)
                await asyncio.wait_for(asyncio.shield(self._refresh()),
                                       max(0.01, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - the key stays unknown
            log.warning("the API key table could not be read: %r", exc)

    def _fresh(self) -> bool:
        return time.monotonic() - self._read_at < self.config.max_age_s

    def _refresh(self) -> asyncio.Future:
        """One read of the table at a time; callers that arrive meanwhile share it."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._fetch())
        return self._inflight

    async def _fetch(self) -> None:
        assert self._source is not None
        started = self._last_start = time.monotonic()
        used, self._used = self._used, {}
        try:
            version, records = await self._source(self._version, used)
        except BaseException:
            for kid, at in used.items():  # written next time
                self._used.setdefault(kid, at)
            raise
        if records is not None:
            self._keys = {r.id: r for r in records}
            self._version = version
        if started >= self._not_before:
            self._read_at = started

    async def _poll(self) -> None:
        """Keep the copy fresh while store keys are in use, so requests never wait."""
        while time.monotonic() - self._last_use < IDLE_STOP_S:
            try:
                await self._refresh()
            except Exception as exc:  # noqa: BLE001 - the next request will say so
                log.warning("polling the API key table failed: %r", exc)
            await asyncio.sleep(self.config.refresh_s)
        if self._used:  # the last uses, for last_used_at
            try:
                await self._refresh()
            except Exception:  # noqa: BLE001 - best effort
                pass
