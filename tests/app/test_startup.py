"""While the service starts, every answer is the API's error envelope or the real answer.

Each test launches the real service (``python -m deployments.local``, a fresh local
Ray on 127.0.0.1) and polls ``/health``, ``/ready`` and a real route
(``POST /v1/detect`` with a real photo) from the moment of launch
(``bench.startup.watch``). Through HAProxy (the local default) nothing but JSON
is ever answered: 503 ``unavailable`` with Retry-After until the service is
ready, then the real answers, and ``/ready`` reports 200 only once the real
route answers. Serve's own Python proxy answers a plain-text 404 of its own
for every path until the application is registered with it; that cannot be
changed from the application, and the second test pins it down exactly.
"""

from __future__ import annotations

import pytest

from bench.startup import Answer, watch

pytestmark = pytest.mark.app

SERVE_NOT_FOUND = "not found. Ping http://.../-/routes for available routes."


def _is_envelope_503(a: Answer) -> bool:
    return (a.status == 503 and a.is_json and a.code == "unavailable"
            and a.retry_after is not None and int(a.retry_after) > 0)


def _check_json_answers(answers: list[Answer]) -> None:
    """Every HTTP answer is JSON: the real one, or a 503 envelope with Retry-After."""
    for a in answers:
        assert a.outcome in ("refused", "http"), a  # never held past the client's timeout
        if a.outcome != "http":
            continue
        assert a.is_json, a
        if a.endpoint == "detect":
            assert a.status == 200 or _is_envelope_503(a), a
            if a.status == 200:
                assert a.code is None and '"faces"' in a.body, a
        elif a.endpoint == "health":
            assert a.status == 200 or _is_envelope_503(a), a
            if a.status == 200:
                assert a.body == '{"status":"ok"}', a
        else:  # /ready: its own answer (with Retry-After when not ready), or the envelope
            assert a.status in (200, 503), a
            if a.status == 503:
                assert a.retry_after is not None, a
                assert _is_envelope_503(a) or '"ready":false' in a.body, a
            else:
                assert '"ready":true' in a.body, a


def _check_ready_gates_traffic(answers: list[Answer]) -> None:
    """Once /ready has said 200, the real route answers for real."""
    first_ready = min(a.done for a in answers if a.endpoint == "ready" and a.status == 200)
    after = [a for a in answers if a.endpoint == "detect" and a.sent > first_ready]
    assert after, "no real request was sent after /ready said 200"
    assert all(a.status == 200 for a in after), after
    # and a real answer came no later than readiness was seen by the gate
    assert any(a.endpoint == "detect" and a.status == 200 for a in answers)


def test_startup_through_haproxy_answers_only_json():
    answers = watch("haproxy")
    assert answers[0].outcome == "refused"  # polled from before anything listened
    _check_json_answers(answers)
    _check_ready_gates_traffic(answers)
    # HAProxy was up before the application: its own answer was the envelope too
    assert any(_is_envelope_503(a) for a in answers if a.endpoint == "detect"), answers


def test_startup_through_serve_proxy_is_json_after_serves_own_404():
    answers = watch("serve")
    assert answers[0].outcome == "refused"
    http = [a for a in answers if a.outcome == "http"]
    plain = [a for a in http if not a.is_json]
    # Serve's proxy: a plain-text 404 for every path until the app is registered ...
    for a in plain:
        assert a.status == 404 and a.content_type.startswith("text/plain"), a
        assert SERVE_NOT_FOUND in a.body, a
    # ... and only then: no request sent after the first JSON answer gets one
    first_json = min(a.done for a in http if a.is_json)
    assert all(a.sent < first_json for a in plain), (plain, first_json)
    _check_json_answers([a for a in answers if a.is_json or a.outcome != "http"])
    _check_ready_gates_traffic(answers)
