"""Settings keys as the settings hold them: salted HMAC-SHA256, or the older plain SHA-256.

``api_key_sha256`` lists the admin keys of the settings, never in clear. Two
forms are accepted:

- ``hmac-sha256:<salt hex>:<digest hex>``, the digest being
  HMAC-SHA256(salt, key) with a random 16-byte salt per entry: two entries of
  one key differ, and a leaked settings file cannot be checked against a
  table of precomputed digests;
- 64 hex characters, the plain SHA-256 of the key: still accepted so that
  existing settings keep working, and logged as a warning at start.

Run ``python -m configs.keyhash new`` to make a strong key and its entry,
or ``python -m configs.keyhash hash`` to hash a key read from standard
input; the latter refuses keys too short or too plain to resist guessing
(keys are checked by a fast hash, which is only safe for high-entropy keys).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass

PREFIX = "hmac-sha256:"
_SALTED = re.compile(r"^hmac-sha256:([0-9a-f]{32}):([0-9a-f]{64})$")
_PLAIN = re.compile(r"^[0-9a-f]{64}$")
#: a key shorter than this, or with fewer distinct characters, is refused by ``hash``
MIN_LENGTH = 32
MIN_DISTINCT = 12


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One parsed settings entry: ``salt`` None for the plain SHA-256 form."""

    salt: bytes | None
    digest: bytes

    def matches(self, key: str, plain_sha256: bytes) -> bool:
        if self.salt is None:
            return hmac.compare_digest(plain_sha256, self.digest)
        return hmac.compare_digest(
            hmac.new(self.salt, key.encode(), hashlib.sha256).digest(), self.digest)


def parse(entry: str) -> KeyEntry:
    """An entry of ``api_key_sha256``; ValueError names the accepted forms."""
    e = str(entry).strip().lower()
    m = _SALTED.match(e)
    if m:
        return KeyEntry(bytes.fromhex(m.group(1)), bytes.fromhex(m.group(2)))
    if _PLAIN.match(e):
        return KeyEntry(None, bytes.fromhex(e))
    raise ValueError("an api_key_sha256 entry is 'hmac-sha256:<32 hex salt>:<64 hex>' "
                     "(python -m configs.keyhash) or the 64 hex characters of a "
                     "plain SHA-256")


def is_plain(entry: str) -> bool:
    return bool(_PLAIN.match(str(entry).strip().lower()))


def check_strength(key: str) -> None:
    """Refuse a key a fast hash does not protect: short, or of few distinct characters."""
    if len(key) < MIN_LENGTH or len(set(key)) < MIN_DISTINCT:
        raise ValueError(f"a settings key needs at least {MIN_LENGTH} characters and "
                         f"{MIN_DISTINCT} distinct ones (make one with "
                         "'python -m configs.keyhash new')")


def salted(key: str) -> str:
    """The salted entry of ``key`` for ``api_key_sha256``."""
    salt = secrets.token_bytes(16)
    return f"{PREFIX}{salt.hex()}:{hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["new"]:
        key = "ffs_" + secrets.token_urlsafe(32)  # 256 random bits
        print(f"key:   {key}\nentry: {salted(key)}")
        return 0
    if argv[:1] == ["hash"]:
        key = sys.stdin.readline().rstrip("\n")
        try:
            check_strength(key)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
        print(salted(key))
        return 0
    print("usage: python -m configs.keyhash new | hash  (hash reads the key from stdin)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
