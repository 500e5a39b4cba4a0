import pytest
from django.core.exceptions import ImproperlyConfigured

from core.env import env_args, env_bool, env_float, env_int, env_int_list


def test_env_int_names_the_variable_on_a_bad_value():
    with pytest.raises(ImproperlyConfigured, match="QUEUE_CONCURRENCY"):
        env_int("QUEUE_CONCURRENCY", 5, environ={"QUEUE_CONCURRENCY": "five"})


def test_env_int_enforces_bounds():
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("X", 5, minimum=1, environ={"X": "0"})
    assert env_int("X", 5, environ={}) == 5
    assert env_int("X", 5, environ={"X": " 7 "}) == 7


def test_env_bool_accepts_the_usual_spellings_only():
    assert env_bool("B", False, environ={"B": "true"}) is True
    assert env_bool("B", True, environ={"B": "0"}) is False
    assert env_bool("B", True, environ={"B": ""}) is True
    with pytest.raises(ImproperlyConfigured, match="CACHE_ENABLED must be true or false"):
        env_bool("CACHE_ENABLED", True, environ={"CACHE_ENABLED": "maybe"})


def test_env_float_refuses_nan_and_text():
    with pytest.raises(ImproperlyConfigured, match="CLAUDE_TIMEOUT"):
        env_float("CLAUDE_TIMEOUT", 1.0, environ={"CLAUDE_TIMEOUT": "nan"})
    with pytest.raises(ImproperlyConfigured, match="CLAUDE_TIMEOUT"):
        env_float("CLAUDE_TIMEOUT", 1.0, environ={"CLAUDE_TIMEOUT": "soon"})


def test_retry_schedule_parses_and_refuses_garbage():
    assert env_int_list("S", [1], environ={"S": "0, 5,300"}) == [0, 5, 300]
    with pytest.raises(ImproperlyConfigured, match="WEBHOOK_RETRY_SCHEDULE"):
        env_int_list("WEBHOOK_RETRY_SCHEDULE", [1], environ={"WEBHOOK_RETRY_SCHEDULE": "0,soon"})


def test_extra_args_split_like_a_shell_without_running_one():
    assert env_args("A", environ={"A": "--bare --append-system-prompt 'be brief; $(rm -rf /)'"}) == [
        "--bare",
        "--append-system-prompt",
        "be brief; $(rm -rf /)",
    ]
    with pytest.raises(ImproperlyConfigured, match="CLAUDE_EXTRA_ARGS"):
        env_args("CLAUDE_EXTRA_ARGS", environ={"CLAUDE_EXTRA_ARGS": "'unterminated"})


def test_bad_setting_stops_startup_with_the_variable_named(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "QUEUE_CONCURRENCY": "lots", "GATEWAY_VAR_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "manage.py", "check"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode != 0
    assert "QUEUE_CONCURRENCY must be a whole number, got 'lots'" in out.stderr
