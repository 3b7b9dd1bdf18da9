"""bench.recognizer rewrites the README's result tables in place, and only them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.recognizer import README, README_BLOCKS, write_readme_tables


def test_the_readme_holds_each_block_once():
    text = README.read_text()
    for name in README_BLOCKS:
        assert text.count(f"<!-- {name} (written by bench.recognizer) -->") == 1
        assert text.count(f"<!-- /{name} -->") == 1


def test_blocks_are_replaced_and_the_rest_kept(tmp_path: Path):
    copy = tmp_path / "README.md"
    copy.write_text(README.read_text())
    tables = {name: ["| model | x |", "|---|---|", f"| `{name}` | 1 |"] for name in README_BLOCKS}
    write_readme_tables(copy, tables)
    once = copy.read_text()
    write_readme_tables(copy, tables)
    assert copy.read_text() == once  # rewriting the same tables changes nothing
    for name in README_BLOCKS:
        assert f"| `{name}` | 1 |" in once
    # outside the blocks the text is untouched
    old, new = README.read_text(), once
    for name in README_BLOCKS:
        begin, end = f"<!-- {name} (written by bench.recognizer) -->", f"<!-- /{name} -->"
        old = old[:old.index(begin)] + old[old.index(end):]
        new = new[:new.index(begin)] + new[new.index(end):]
    assert old == new


def test_a_readme_without_the_blocks_is_refused(tmp_path: Path):
    copy = tmp_path / "README.md"
    copy.write_text("# facefleet\n\nno tables here\n")
    with pytest.raises(SystemExit, match="exactly one"):
        write_readme_tables(copy, {README_BLOCKS[0]: ["| a |", "|---|"]})
    assert copy.read_text() == "# facefleet\n\nno tables here\n"
