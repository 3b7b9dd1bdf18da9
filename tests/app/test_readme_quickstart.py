"""The README's quick start runs as printed: its marked shell block is taken from the
README, pointed at the test service (only the port changes) and run with bash from
the repository's folder; every answer must be a 2xx with the JSON it promises."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.app

REPO = Path(__file__).resolve().parent.parent.parent
MARKER = "<!-- quick start: run by tests/app/test_readme_quickstart.py -->"
#: wraps curl so that each answer is followed by its status; the README's lines are unchanged
STATUS_WRAPPER = "curl() { command curl -w '\\n@@status=%{http_code}\\n' \"$@\"; }\n"


def quick_start_block() -> str:
    text = (REPO / "README.md").read_text()
    assert MARKER in text, "the README's quick start lost its marker"
    m = re.match(r"\s*```bash\n(.*?)\n```", text[text.index(MARKER) + len(MARKER):], re.S)
    assert m, "no bash block after the quick-start marker"
    return m.group(1)


def test_readme_quick_start_runs_as_printed(service):
    block = quick_start_block()
    assert "127.0.0.1:8000" in block
    port = service.base_url.rsplit(":", 1)[1]
    script = block.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    r = subprocess.run(["bash", "-c", "set -euo pipefail\n" + STATUS_WRAPPER + script],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "Argument list too long" not in r.stderr
    parts = re.findall(r"(.*?)\n@@status=(\d{3})\n", r.stdout, re.S)
    answers = [(int(status), json.loads(body)) for body, status in parts]
    curls = len(re.findall(r"^\s*curl ", block, re.M))
    assert len(answers) == curls == 5, r.stdout[-2000:]
    for status, body in answers:
        assert 200 <= status < 300 and "error" not in body, (status, body)
    (_, detect), (_, verify), (_, detect_json), (enrol_status, enrol), (_, ident) = answers
    assert len(detect["faces"]) >= 1 and detect_json["faces"] == detect["faces"]
    assert verify["verified"] is True and verify["distance"] is not None
    assert enrol_status == 201 and enrol["person_id"] == "angelina"
    assert enrol["collection_created"] is True and enrol["id"] == enrol["face_id"]
    best = ident["faces"][0]["matches"][0]
    assert best["person_id"] == "angelina" and best["match"] is True
