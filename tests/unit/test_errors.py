"""Unexpected exceptions become typed answers: 503 for a backend outage, 500 otherwise."""

from __future__ import annotations

import json

from ray import exceptions as rx
from ray.serve import exceptions as sx
from starlette.requests import Request

from deployments.http.errors import STATUS, unexpected_response
from pipelines.errors import (ErrorCode, FacefleetError, ImageDecodeError, NoFaceDetected,
                           error_from_code)


def _request() -> Request:
    req = Request({"type": "http", "method": "POST", "path": "/v1/embed", "headers": []})
    req.state.request_id = "rid-1"
    return req


def test_dead_or_overloaded_backends_are_503_with_retry_after():
    for exc in (rx.RayActorError(), rx.ActorUnavailableError("restarting", None),
                sx.BackPressureError(num_queued_requests=10, max_queued_requests=5)):
        r = unexpected_response(_request(), exc)
        body = json.loads(r.body)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert body["error"]["code"] == "unavailable" and body["error"]["request_id"] == "rid-1"


def test_bugs_are_500_without_details():
    r = unexpected_response(_request(), KeyError("secret internals"))
    body = json.loads(r.body)
    assert r.status_code == 500 and body["error"]["code"] == "internal_error"
    assert "secret" not in r.body.decode()


def test_every_domain_code_has_a_status():
    assert set(STATUS) == set(ErrorCode)
    assert all(400 <= s < 600 for s in STATUS.values())
    assert ImageDecodeError("x").code == ErrorCode.IMAGE_DECODE_ERROR


def test_an_error_kept_as_its_code_comes_back_as_its_class():
    # stored answers (an idempotent batch's failed items) keep errors as code + message
    raised = {c.code for c in FacefleetError.__subclasses__()}  # codes domain errors carry
    assert len(raised) >= 12
    for code in raised:
        err = error_from_code(code.value, "why", {"field": "img"})
        assert err.code == code and err.message == "why" and err.details == {"field": "img"}
    assert isinstance(error_from_code("no_face_detected", "x"), NoFaceDetected)
    assert error_from_code("something new", "x").code == ErrorCode.INTERNAL_ERROR


def test_strict_collections_is_a_setting_from_the_environment(monkeypatch):
    from configs.settings import Settings

    assert Settings().index.strict_collections is False
    monkeypatch.setenv("FACEFLEET_INDEX__STRICT_COLLECTIONS", "true")
    assert Settings().index.strict_collections is True


def test_a_405_allows_every_method_of_its_path():
    from configs.settings import Settings
    from deployments.http.errors import _allowed_methods
    from deployments.http.app import create_app
    from pipelines.flow import Flow

    s = Settings()
    app = create_app(Flow(s, None, None, None), s)

    def allowed(path: str) -> list[str]:
        return _allowed_methods(Request({"type": "http", "method": "PUT", "path": path,
                                         "root_path": "", "app": app, "headers": [],
                                         "query_string": b""}))

    assert allowed("/v1/collections") == ["GET", "POST"]
    assert allowed("/v1/collections/staff") == ["DELETE", "GET", "PATCH"]
    # a custom method's path also matches the person's template: its own methods only
    assert allowed("/v1/collections/staff/persons/ann:merge") == ["POST"]
    assert allowed("/v1/collections/staff/persons/ann") == ["DELETE", "GET", "PATCH"]
    assert allowed("/v1/collections/staff/persons/p1") == ["DELETE", "GET", "PATCH"]
    assert allowed("/v1/collections/staff/faces") == ["GET", "POST"]
