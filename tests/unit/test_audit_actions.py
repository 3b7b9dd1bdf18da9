"""Every audit action the service records can be asked for by name wherever a user
filters the trail: the API's answer, the command line's --action and the console."""

from __future__ import annotations

import re
from pathlib import Path

import click

from deployments.http.schemas import AuditEntryOut
from facefleet.cli import main
from index.audit import AuditAction

REPO = Path(__file__).resolve().parents[2]
ACTIONS = {a.value for a in AuditAction}


def test_the_answer_the_cli_and_the_console_know_every_action():
    assert set(AuditEntryOut.model_fields["action"].annotation.__args__) == ACTIONS
    option = next(p for p in main.commands["audit"].params if p.name == "action")
    assert isinstance(option.type, click.Choice) and set(option.type.choices) == ACTIONS
    js = (REPO / "deployments/http/console/static/pages/audit.js").read_text()
    listed = re.search(r"const ACTIONS = \[(.*?)\];", js, re.S).group(1)
    assert set(re.findall(r'"([^"]+)"', listed)) == ACTIONS
