"""Every way of stopping ``python -m deployments.local`` leaves nothing behind.

One cycle of each way (Ctrl-C to the group, SIGTERM to the main process,
SIGTERM to the group, SIGKILL to the group then a new start), run by
``bench.lifecycle`` exactly as its long version (``python -m bench.lifecycle
--cycles 5``, figures in the README) runs them: the real service on
``serve_config.yaml``, one HTTP port for every cycle, leftovers found by a
marker in the environment whatever their parent or process group became.
"""

from __future__ import annotations

import pytest

from bench import lifecycle
from deployments.local import ports

pytestmark = pytest.mark.app


def test_each_way_of_stopping_leaves_no_process_and_no_listener(tmp_path):
    results = lifecycle.run(list(lifecycle.WAYS), 1, ports.reserve_port(), workdir=tmp_path,
                            progress=lambda _s: None)
    report = lifecycle.table(results) + "".join(
        f"\n{c.way}: {c.left} {c.errors}" for c in results if c.stop_left or c.errors)
    assert [c.way for c in results] == list(lifecycle.WAYS)
    assert sum(c.start_failed for c in results) == 0, report
    assert sum(c.stop_left for c in results) == 0, report
    assert not [c.errors for c in results if c.errors], report
