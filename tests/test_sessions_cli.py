"""Where the CLI keeps a session, the files restored for a resumed run, and the session options."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from claude_cli.invocation import (
    ClaudeInvocation,
    RunnerConfig,
    build_argv,
    reserved_args_used,
)
from claude_cli.sessions import (
    SessionIdInvalid,
    project_dir_name,
    session_find,
    session_path,
    session_read,
    session_remove,
    session_restored,
    session_write,
)

SID = "6b8d2d18-b782-4a2b-9616-2dafb8e6ae33"


def test_project_directory_names_are_the_clis():
    # Observed with claude 2.1.197: every character but letters and digits becomes "-".
    assert project_dir_name("/tmp/tmp-sessions/exp/w.d_x y") == "-tmp-tmp-sessions-exp-w-d-x-y"
    # Longer than 200: cut, then the CLI's 31-based string hash in base 36 (observed likewise).
    long = "/tmp/tmp-sessions/exp/" + "a" * 220
    assert project_dir_name(long) == "-tmp-tmp-sessions-exp-" + "a" * 178 + "-c4azon"


def test_session_path_follows_home_or_claude_config_dir(tmp_path: Path):
    home = {"HOME": str(tmp_path / "h")}
    path = session_path(session_id=SID, workdir="/srv/work", env=home)
    assert path == tmp_path / "h" / ".claude" / "projects" / "-srv-work" / f"{SID}.jsonl"
    configured = {**home, "CLAUDE_CONFIG_DIR": str(tmp_path / "c")}
    assert (
        session_path(session_id=SID, workdir="/srv/work", env=configured).parent.parent
        == tmp_path / "c" / "projects"
    )


def test_session_ids_that_are_not_uuids_never_become_paths(tmp_path: Path):
    with pytest.raises(SessionIdInvalid):
        session_path(session_id="../../etc/passwd", workdir=tmp_path, env={"HOME": str(tmp_path)})
    assert session_remove(session_id="../x", workdir=tmp_path, env={"HOME": str(tmp_path)}) is False


def test_write_read_find_and_remove(tmp_path: Path):
    env = {"HOME": str(tmp_path)}
    path = session_write(session_id=SID, workdir=tmp_path / "w", env=env, content=b'{"a":1}\n')
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert session_read(session_id=SID, workdir=tmp_path / "w", env=env, max_bytes=100) == (b'{"a":1}\n', 8)
    assert session_read(session_id=SID, workdir=tmp_path / "w", env=env, max_bytes=4) == (None, 8)
    # Found where the CLI put it even when another working directory is asked about.
    assert session_find(session_id=SID, workdir=tmp_path / "elsewhere", env=env) == path
    (path.with_suffix("") / "tool-results").mkdir(parents=True)
    (path.with_suffix("") / "tool-results" / "r.txt").write_text("big")
    assert session_remove(session_id=SID, workdir=tmp_path / "w", env=env) is True
    assert not path.exists() and not path.with_suffix("").exists()
    assert session_read(session_id=SID, workdir=tmp_path / "w", env=env, max_bytes=100) == (None, 0)


def test_a_restored_file_stays_while_another_run_still_uses_it(tmp_path: Path):
    env = {"HOME": str(tmp_path)}
    kw = {"session_id": SID, "workdir": tmp_path, "env": env, "content": b"x\n"}
    first_in, release_first = threading.Event(), threading.Event()

    def first() -> None:
        with session_restored(**kw):
            first_in.set()
            release_first.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(10)
    with session_restored(**kw) as path:
        assert path.read_bytes() == b"x\n"
    assert path.exists()  # the first run holds it still
    release_first.set()
    thread.join(10)
    assert not path.exists() and not list(path.parent.glob(".*.lock"))


def test_resume_argv_forks_under_a_chosen_id_and_no_persistence_without_sessions():
    config = RunnerConfig(binary="claude", timeout=5)
    resumed = ClaudeInvocation(prompt="why?", resume=SID, session_id="11111111-2222-4333-8444-555555555555")
    argv = build_argv(resumed, config)
    i = argv.index("--resume")
    assert argv[i : i + 5] == ["--resume", SID, "--fork-session", "--session-id", resumed.session_id]
    assert "why?" not in argv and "--no-session-persistence" not in argv  # the prompt goes to stdin
    assert "--resume" not in build_argv(ClaudeInvocation(prompt="hi"), config)
    off = RunnerConfig(binary="claude", timeout=5, sessions=False)
    assert "--no-session-persistence" in build_argv(ClaudeInvocation(prompt="hi"), off)
    assert "--resume" not in build_argv(resumed, off)


def test_extra_args_may_not_set_the_session_options():
    assert reserved_args_used(["--bare", "--resume", "x", "--session-id=y", "-c"]) == [
        "--resume",
        "--session-id=y",
        "-c",
    ]
    assert reserved_args_used(["--bare", "--max-turns", "3"]) == []


def test_settings_refuse_reserved_extra_args():
    import subprocess
    import sys

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "CLAUDE_EXTRA_ARGS": "--fork-session",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "CLAUDE_EXTRA_ARGS may not set --fork-session" in done.stderr
