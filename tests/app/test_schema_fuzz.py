"""Schema-driven fuzzing of the real service from its own ``/openapi.json`` (schemathesis).

Every operation gets a bounded number of generated requests (``FUZZ_EXAMPLES``;
``python -m bench.fuzz`` runs many more): no answer may be a server error,
every 4xx must carry the error envelope, and every answer must match the
status codes, content types and schemas the document declares.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from bench.fuzz import excluded_checks, register_serializers
from configs.settings import Settings
from deployments.http.app import create_app
from pipelines.flow import Flow

pytestmark = pytest.mark.app

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))


def _document() -> dict:
    # the same document the service serves (tests/unit/test_openapi.py checks it
    # resolves); built here because the schema must exist when tests are collected
    settings_ = Settings()
    return create_app(Flow(settings_, None, None, None), settings_).openapi()


register_serializers()
schema = schemathesis.openapi.from_dict(_document())


def test_the_served_document_is_the_one_fuzzed(api):
    assert api.get("/openapi.json").json() == _document()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, service):
    response = case.call(base_url=service.base_url, timeout=120)
    case.validate_response(response, excluded_checks=excluded_checks(case))
    if 400 <= response.status_code < 500:
        body = response.json()
        assert {"code", "message", "request_id"} <= set(body["error"]), body
