"""Where the command line writes: tables for people, JSON for scripts.

Results go to stdout, either as rich tables or (``--json``) as one JSON
document; messages, warnings and progress go to stderr so that a script
piping ``--json`` output never has to filter them out. Piped or redirected,
tables are as wide as their content (rich would wrap them at 80 columns,
splitting ids in two), so each row stays one line for grep and cut.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


#: the width of a console that is not a terminal: no table is ever wider
_UNBOUNDED = 100_000


class Output:
    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=False)
        if not self.out.is_terminal:
            self.out = Console(highlight=False, soft_wrap=False, width=_UNBOUNDED)
        self.err = Console(stderr=True, highlight=False)
        if not self.err.is_terminal:  # a log file gets each message on one line
            self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def json(self, obj: Any) -> None:
        # plain write, not rich: the document must stay byte-exact JSON
        self.out.file.write(json.dumps(obj, indent=2, default=str) + "\n")
        self.out.file.flush()

    def table(self, title: str | None, columns: Sequence[str],
              rows: Sequence[Sequence[Any]]) -> None:
        t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for c in columns:
            # folded to fit a terminal; never wrapped when piped (the console is unbounded)
            t.add_column(c, overflow="fold", no_wrap=not self.out.is_terminal)
        for r in rows:
            t.add_row(*("" if v is None else escape(str(v)) for v in r))
        self.out.print(t)

    def line(self, text: str) -> None:
        self.out.print(escape(text))

    def info(self, text: str) -> None:
        self.err.print(escape(text))

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {escape(text)}")

    def error(self, text: str) -> None:
        self.err.print(f"[bold red]error:[/bold red] {escape(text)}")
