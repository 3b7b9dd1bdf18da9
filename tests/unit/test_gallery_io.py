"""JSON Lines of exports and imports: exact float32 round trips, lines split across
chunks, runaway lines, bad lines (no Ray, no store)."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from deployments.http.gallery_io import LineError, export_lines, parse_line, read_lines


def collect(chunks: list[bytes], max_line: int = 1024) -> list:
    async def stream():
        for c in chunks:
            yield c

    async def run():
        return [x async for x in read_lines(stream(), max_line)]

    return asyncio.run(run())


def test_export_lines_round_trip_float32_exactly():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(50, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    faces = [{"id": f"{i:032x}", "person_id": f"p{i}", "name": None if i % 2 else "Ann \"A\"",
              "labels": {"k": "v"}, "model": "dlib", "created_at": 1.7e9 + i,
              "embedding": v} for i, v in enumerate(vecs)]
    text = export_lines(faces)
    lines = text.decode().splitlines()
    assert len(lines) == 50 and text.endswith(b"\n")
    for face, line in zip(faces, lines, strict=True):
        doc = json.loads(line)
        assert list(doc) == ["id", "person_id", "name", "labels", "model", "created_at",
                             "embedding"]
        assert doc["name"] == face["name"] and doc["created_at"] == face["created_at"]
        assert np.array_equal(np.array(doc["embedding"], dtype=np.float32), face["embedding"])


def test_lines_split_anywhere_are_read_whole():
    body = b'{"a": 1}\n\n  \n{"b": 2}\r\n{"c": 3}'
    for cut in range(len(body) + 1):
        got = collect([body[:cut], body[cut:]])
        assert [n for n, _ in got] == [1, 4, 5]
        assert [json.loads(x) for _, x in got] == [{"a": 1}, {"b": 2}, {"c": 3}]
    one_byte_chunks = collect([bytes([b]) for b in body])
    assert [n for n, _ in one_byte_chunks] == [1, 4, 5]


def test_a_runaway_line_is_skipped_not_buffered():
    long = b"x" * 5000
    got = collect([b'{"a": 1}\n', long[:3000], long[3000:] + b'\n{"b": 2}\n', long], 1024)
    assert got[0] == (1, b'{"a": 1}')
    assert isinstance(got[1][1], LineError) and got[1][0] == 2
    assert got[2] == (3, b'{"b": 2}')
    assert isinstance(got[3][1], LineError) and got[3][0] == 4


def test_parse_line_says_what_is_wrong():
    ok = parse_line(1, b'{"model": "dlib", "embedding": [0.1, 2]}')
    assert ok == {"model": "dlib", "embedding": [0.1, 2]}
    for raw, what in [(b"{not json", "JSON"), (b"[1, 2]", "object"),
                      (b'{"embedding": [1.0]}', "model"),
                      (b'{"model": "dlib", "embedding": []}', "embedding"),
                      (b'{"model": "dlib", "embedding": [true, 1]}', "embedding"),
                      (b'{"model": "dlib", "embedding": [NaN]}', "JSON")]:
        err = parse_line(7, raw)
        assert isinstance(err, LineError) and err.line == 7 and what in err.message, raw
