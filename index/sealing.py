"""Face templates sealed at rest: AES-256-GCM per collection, keys wrapped by a master key.

Each encrypted collection has its own random data key. The store keeps that key
only *wrapped*: encrypted by the operator's master key (AES-256-GCM, with the
collection id as associated data), beside the id of the master key that wrapped
it. A template is sealed with its collection's data key and a fresh 96-bit nonce;
the associated data binds the ciphertext to its collection and face row, so a
sealed template copied onto another row does not open. Dropping a collection
deletes its wrapped key with it: whatever copies of its rows survive on disk or
in backups can no longer be read (crypto-shredding). Rotating the master key
re-wraps the data keys and leaves the templates as they are.

The master key comes from a file or an environment variable (32 bytes, raw or
base64). :class:`MasterKey` is the whole contract a key-management service has
to meet to hold the master key instead (wrap and unwrap a data key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: the first byte of a sealed template: the format, for a future change of it
SEALED_V1 = 1
_NONCE = 12
_TAG = 16
#: bytes a sealed template adds to the plain one (format byte, nonce, GCM tag)
OVERHEAD = 1 + _NONCE + _TAG


class SealingError(RuntimeError):
    """A key or a sealed template that cannot be used: the wrong master key, a missing
    one, or data that was changed on disk."""


class MasterKey(Protocol):
    """What holds the master key: a local key, or a KMS client that wraps and unwraps."""

    key_id: str

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...
    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


def _key_bytes(text: bytes, where: str) -> bytes:
    raw = text.strip()
    if len(raw) == 32:
        return raw
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 32:
        raise SealingError(f"the master key in {where} is not 32 bytes (raw, or base64 of 32 "
                           "bytes: `head -c 32 /dev/urandom | base64`)")
    return decoded


class LocalMasterKey:
    """A master key the operator holds in a file or an environment variable."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SealingError("a master key is 32 bytes")
        self._aead = AESGCM(key)
        # names the key without revealing it: which master key wrapped which data key
        self.key_id = hashlib.sha256(b"facefleet master key\0" + key).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LocalMasterKey:
        p = Path(path)
        try:
            text = p.read_bytes()
        except OSError as exc:
            raise SealingError(f"cannot read the master key file {p}: {exc.strerror}") from exc
        return cls(_key_bytes(text, str(p)))

    @classmethod
    def from_env(cls, name: str) -> LocalMasterKey:
        value = os.environ.get(name)
        if not value:
            raise SealingError(f"the environment variable {name} holds no master key")
        return cls(_key_bytes(value.encode(), f"${name}"))

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], context)
        except InvalidTag as exc:
            raise SealingError("this master key did not wrap that data key") from exc


def load_master_key(key_file: str | None, env_var: str | None) -> MasterKey | None:
    """The configured master key: a file wins over the environment; ``None`` when neither
    is set (templates are then stored plain)."""
    if key_file:
        return LocalMasterKey.from_file(key_file)
    if env_var and os.environ.get(env_var):
        return LocalMasterKey.from_env(env_var)
    return None


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def key_context(cid: int) -> bytes:
    """Associated data of a collection's wrapped key: it opens for that collection only."""
    return b"facefleet data key\0" + struct.pack("<q", cid)


def _row_context(cid: int, face_no: int) -> bytes:
    return struct.pack("<qq", cid, face_no)


@dataclass(frozen=True)
class WrappedKey:
    """A collection's data key as the store keeps it."""

    wrapped: bytes
    master_key_id: str


def wrap_new_key(master: MasterKey, cid: int) -> WrappedKey:
    return WrappedKey(master.wrap(new_data_key(), key_context(cid)), master.key_id)


class Sealer:
    """Seals and opens the templates of one collection."""

    def __init__(self, cid: int, data_key: bytes) -> None:
        self.cid = cid
        self._aead = AESGCM(data_key)

    @classmethod
    def unwrapped(cls, cid: int, key: WrappedKey, masters: Sequence[MasterKey]) -> Sealer:
        """The sealer of collection ``cid``, its key unwrapped by whichever of ``masters``
        wrapped it (the current one, or the one before a rotation)."""
        for master in masters:
            if master.key_id == key.master_key_id:
                return cls(cid, master.unwrap(key.wrapped, key_context(cid)))
        raise SealingError(
            f"collection {cid} is encrypted under master key {key.master_key_id}, which is not "
            "configured (security.master_key_file / FACEFLEET_MASTER_KEY); a rotated-out key "
            "goes in security.previous_master_key_file until `rotate-master-key` has run")

    def seal(self, face_no: int, plain: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return (bytes((SEALED_V1,)) + nonce
                + self._aead.encrypt(nonce, plain, _row_context(self.cid, face_no)))

    def open(self, face_no: int, sealed: bytes) -> bytes:
        if not sealed or sealed[0] != SEALED_V1:
            raise SealingError(f"face {face_no} of collection {self.cid} is not sealed")
        try:
            return self._aead.decrypt(sealed[1:1 + _NONCE], sealed[1 + _NONCE:],
                                      _row_context(self.cid, face_no))
        except InvalidTag as exc:
            raise SealingError(f"face {face_no} of collection {self.cid} does not open: "
                               "changed on disk, or moved from another row") from exc

    def open_vectors(self, face_nos: Sequence[int], sealed: Sequence[bytes],
                     dim: int) -> np.ndarray:
        """Many templates as an ``(n, dim)`` float32 array (a shard's rebuild)."""
        if not sealed:
            return np.empty((0, dim), dtype=np.float32)
        plain = b"".join(self.open(int(n), bytes(s)) for n, s in zip(face_nos, sealed, strict=True))
        return np.frombuffer(plain, dtype="<f4").reshape(len(sealed), dim).astype(
            np.float32, copy=False)


def rewrap(key: WrappedKey, cid: int, old: Sequence[MasterKey], new: MasterKey) -> WrappedKey:
    """``key`` wrapped by ``new`` instead (a master key rotation); the data key, and so
    every sealed template, stays the same."""
    for master in old:
        if master.key_id == key.master_key_id:
            data_key = master.unwrap(key.wrapped, key_context(cid))
            return WrappedKey(new.wrap(data_key, key_context(cid)), new.key_id)
    if key.master_key_id == new.key_id:
        return key
    raise SealingError(f"collection {cid}: its master key {key.master_key_id} is not among "
                       "the old keys given")
