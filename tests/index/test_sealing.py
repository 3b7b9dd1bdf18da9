"""Sealing templates at rest (index/sealing.py): what opens, what does not, and rotation."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest

from index.sealing import (OVERHEAD, LocalMasterKey, Sealer, SealingError, WrappedKey,
                           key_context, load_master_key, rewrap, wrap_new_key)
from tests.index.vectors import unit


def test_templates_round_trip_and_are_not_readable_sealed() -> None:
    master = LocalMasterKey(os.urandom(32))
    key = wrap_new_key(master, cid=3)
    sealer = Sealer.unwrapped(3, key, [master])
    x = unit(50, seed=1, dim=128)
    sealed = [sealer.seal(i + 10, v.tobytes()) for i, v in enumerate(x)]
    assert all(len(s) == 128 * 4 + OVERHEAD for s in sealed)
    # the plain float bytes appear nowhere in what is stored
    assert all(v.tobytes()[:32] not in s for v, s in zip(x, sealed, strict=True))
    got = sealer.open_vectors(list(range(10, 60)), sealed, 128)
    np.testing.assert_array_equal(got, x)


def test_a_sealed_template_opens_only_on_its_own_row_and_collection() -> None:
    master = LocalMasterKey(os.urandom(32))
    key = wrap_new_key(master, cid=1)
    sealer = Sealer.unwrapped(1, key, [master])
    blob = sealer.seal(7, unit(1, 2, 128)[0].tobytes())
    with pytest.raises(SealingError, match="does not open"):
        sealer.open(8, blob)  # moved to another row
    other = Sealer(2, master.unwrap(key.wrapped, key_context(1)))
    with pytest.raises(SealingError, match="does not open"):
        other.open(7, blob)  # the same key, another collection's rows
    tampered = bytearray(blob)
    tampered[20] ^= 1
    with pytest.raises(SealingError, match="does not open"):
        sealer.open(7, bytes(tampered))


def test_the_wrong_master_key_is_named_not_guessed() -> None:
    master, other = LocalMasterKey(os.urandom(32)), LocalMasterKey(os.urandom(32))
    key = wrap_new_key(master, cid=1)
    with pytest.raises(SealingError, match=key.master_key_id):
        Sealer.unwrapped(1, key, [other])
    forged = WrappedKey(key.wrapped, other.key_id)
    with pytest.raises(SealingError, match="did not wrap"):
        Sealer.unwrapped(1, forged, [other])
    with pytest.raises(SealingError):
        Sealer.unwrapped(2, key, [master])  # a wrapped key opens for its collection only


def test_rotation_rewraps_and_the_templates_stay() -> None:
    old, new = LocalMasterKey(os.urandom(32)), LocalMasterKey(os.urandom(32))
    key = wrap_new_key(old, cid=5)
    blob = Sealer.unwrapped(5, key, [old]).seal(1, b"\x01\x02\x03\x04")
    rotated = rewrap(key, 5, [old], new)
    assert rotated.master_key_id == new.key_id and rotated.wrapped != key.wrapped
    assert Sealer.unwrapped(5, rotated, [new]).open(1, blob) == b"\x01\x02\x03\x04"
    assert rewrap(rotated, 5, [old], new) == rotated  # a second run changes nothing
    with pytest.raises(SealingError):
        Sealer.unwrapped(5, rotated, [old])


def test_master_key_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:
    raw = os.urandom(32)
    (tmp_path / "k").write_text(base64.b64encode(raw).decode() + "\n")
    (tmp_path / "raw").write_bytes(raw)
    assert load_master_key(str(tmp_path / "k"), None).key_id == LocalMasterKey(raw).key_id
    assert load_master_key(str(tmp_path / "raw"), None).key_id == LocalMasterKey(raw).key_id
    monkeypatch.setenv("FF_TEST_MASTER", base64.b64encode(raw).decode())
    assert load_master_key(None, "FF_TEST_MASTER").key_id == LocalMasterKey(raw).key_id
    assert load_master_key(None, "FF_TEST_UNSET_VAR") is None
    (tmp_path / "short").write_text("c2hvcnQ=")
    with pytest.raises(SealingError, match="not 32 bytes"):
        load_master_key(str(tmp_path / "short"), None)
    with pytest.raises(SealingError, match="cannot read"):
        load_master_key(str(tmp_path / "missing"), None)
