"""The README's command-line section names every command the ``facefleet`` CLI has."""

from __future__ import annotations

from pathlib import Path

import click

from facefleet.cli import main

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            names += _commands(cmd, f"{prefix}{name} ")
        else:
            names.append(prefix + name)
    return names


def test_readme_lists_every_command():
    text = README.read_text()
    section = text[text.index("## Command line and Python client"):]
    section = section[:section.index("\n## ", 1)]
    missing = [c for c in _commands(main) if f"`{c} " not in section and f"`{c}`" not in section
               and f"/ `{c} " not in section]
    assert len(_commands(main)) >= 16
    assert not missing, f"README's CLI section lacks {missing}"
