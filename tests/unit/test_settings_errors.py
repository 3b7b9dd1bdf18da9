"""A wrong settings value stops the start in one line naming its variable and the
form it expects; admin keys are also taken comma-separated."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.settings import SettingsProblem, load_settings
from deployments.local import auth_line

REPO = Path(__file__).resolve().parent.parent.parent
A, B = (hashlib.sha256(k.encode()).hexdigest() for k in ("key-a", "key-b"))


@pytest.fixture
def env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("FACEFLEET_"):
            monkeypatch.delenv(k)
    return monkeypatch


@pytest.mark.parametrize("value", [f'["{A}", "{B}"]', f"{A},{B}", f" {A} , {B.upper()} "])
def test_admin_keys_as_a_json_list_or_comma_separated(env, value):
    env.setenv("FACEFLEET_API_KEY_SHA256", value)
    assert load_settings().api_key_sha256 == [A, B]


def test_one_key_alone_is_a_list_of_one(env):
    env.setenv("FACEFLEET_API_KEY_SHA256", A)
    assert load_settings().api_key_sha256 == [A]


@pytest.mark.parametrize("value, says", [
    ("my-secret-key", "not a hashed key"),
    ('["abc"', "not a JSON list"),
])
def test_a_bad_key_value_names_the_variable_and_the_form(env, value, says):
    env.setenv("FACEFLEET_API_KEY_SHA256", value)
    with pytest.raises(SettingsProblem) as exc:
        load_settings()
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("FACEFLEET_API_KEY_SHA256")
    assert says in msg and "JSON list" in msg and "comma-separated" in msg
    assert "my-secret-key" not in msg  # a secret typed in the wrong place is not echoed whole


@pytest.mark.parametrize("var, value, says", [
    ("FACEFLEET_THRESHOLDS", "0.3", "JSON object"),
    ("FACEFLEET_INDEX__SHARDS", "many", "valid integer"),
])
def test_other_bad_values_name_their_variable(env, var, value, says):
    env.setenv(var, value)
    with pytest.raises(SettingsProblem) as exc:
        load_settings()
    assert str(exc.value).startswith(var) and says in str(exc.value)


def test_the_start_fails_in_one_line_before_ray(env):
    env.setenv("FACEFLEET_API_KEY_SHA256", "0123abcd")
    r = subprocess.run([sys.executable, "-m", "deployments.local", "--no-dashboard",
                        "--port", "1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "FACEFLEET_API_KEY_SHA256" in lines[0] and "comma-separated" in lines[0]
    assert "Traceback" not in r.stderr


def test_the_start_says_whether_authentication_is_on():
    assert "authentication is on: 2 admin key(s)" in auth_line([A, B])
    assert "authentication is off" in auth_line([])
