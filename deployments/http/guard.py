"""Rate limits and failed-authentication accounting of one ingress replica.

:class:`Guard` keeps moving windows (the ``limits`` package, in memory) of
three kinds, each set in ``rate_limits``: requests per API key, requests per
client address, and failed authentications per client address. The
middleware asks it before authenticating (a client past its failed
authentications, or past its request limit, is answered 429 at once, without
a key lookup) and after (the key's own limit). Every failed authentication is
counted in ``/metrics`` (``facefleet_auth_failures_total``) and sampled into
the audit trail: at most one ``auth.failure`` entry per client a minute,
carrying how many failures the client made in the window so far, so a flood
of wrong keys is recorded without writing an entry for each.

Windows are per replica: with N Ingress replicas a client may get N times a
limit through. The client address is the connection's peer unless
``rate_limits.client_address_header`` names a header that the proxy in front
sets (its last value is taken: the one the proxy appended).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import Request

from configs.settings import RateLimitSettings

#: one audit entry per client and window of this item
_SAMPLE = RateLimitItemPerMinute(1)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A 429: which limit, and in how many seconds to try again."""

    limit: str
    retry_after_s: int


class Guard:
    def __init__(self, config: RateLimitSettings | None = None) -> None:
        self.config = config or RateLimitSettings()
        self._rl = MovingWindowRateLimiter(MemoryStorage())
        c = self.config
        self._key = parse_many(c.per_key) if c.per_key else []
        self._client = parse_many(c.per_client) if c.per_client else []
        self._failed = parse_many(c.failed_auth_per_client) if c.failed_auth_per_client else []
        self._header = (c.client_address_header or "").lower() or None

    def client_of(self, request: Request) -> str:
        if self._header:
            value = request.headers.get(self._header, "")
            last = value.rsplit(",", 1)[-1].strip()
            if last:
                return last[:64]
        return request.client.host if request.client else "unknown"

    def before_auth(self, client: str) -> Refusal | None:
        """A client past its failed authentications (tested, not counted), or past its
        request limit (counted)."""
        for item in self._failed:
            if not self._rl.test(item, "failed", client):
                return Refusal("failed_auth", self._wait(item, "failed", client))
        return self._hit(self._client, "client", client)

    def after_auth(self, key_id: str | None) -> Refusal | None:
        if key_id is None:  # authentication off: the client limit is the one that applies
            return None
        return self._hit(self._key, "key", key_id)

    def failed(self, client: str) -> tuple[bool, int]:
        """Count a failed authentication: (sample it into the audit trail?, failures of
        the client in its window so far)."""
        failures = 0
        for item in self._failed:
            self._rl.hit(item, "failed", client)
            stats = self._rl.get_window_stats(item, "failed", client)
            failures = max(failures, item.amount - stats.remaining)
        return self._rl.hit(_SAMPLE, "sample", client), max(failures, 1)

    def _hit(self, items: list[RateLimitItem], kind: str, who: str) -> Refusal | None:
        for item in items:
            if not self._rl.hit(item, kind, who):
                return Refusal(kind, self._wait(item, kind, who))
        return None

    def _wait(self, item: RateLimitItem, kind: str, who: str) -> int:
        reset = self._rl.get_window_stats(item, kind, who).reset_time
        return max(1, math.ceil(reset - time.time()))
