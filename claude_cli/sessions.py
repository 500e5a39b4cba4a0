"""Where the CLI keeps a session, and reading, writing and removing that file.

The CLI saves each session as ``<config dir>/projects/<project>/<session id>.jsonl``: the config dir
is ``$CLAUDE_CONFIG_DIR`` or ``$HOME/.claude``; the project is the real path of its working directory
with every character that is not a letter or digit replaced by ``-`` (cut to 200 characters plus a
hash when longer). ``--resume ID`` finds the session only there, so a turn that continues a session
on another host (or under another HOME) needs the file written back first.

Session ids are UUIDs: anything else is refused before it becomes part of a path.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

# The CLI's own limit on a project directory's name (2.1.197).
_PROJECT_NAME_MAX = 200
_NOT_ALNUM = re.compile(r"[^a-zA-Z0-9]")
# The entry the CLI writes last in a session's file once a turn is over (2.1.197), after its result
# line and before it exits: ``{"type":"last-prompt", ..., "leafUuid": <the entry the turn ended on>}``.
_CLOSING_TYPE = "last-prompt"
_CLOSING_LINE_MAX = 16 * 1024
_LEAF_SEARCH_BYTES = 1024 * 1024


class SessionIdInvalid(ValueError):
    """A session id that is not a UUID."""


def session_id_check(session_id: str) -> str:
    """The id in canonical form, or SessionIdInvalid."""
    try:
        return str(uuid.UUID(session_id))
    except (ValueError, TypeError, AttributeError):
        raise SessionIdInvalid(f"{session_id!r} is not a session id") from None


def config_dir(env: Mapping[str, str]) -> Path:
    """The CLI's configuration directory for a run with this environment."""
    configured = env.get("CLAUDE_CONFIG_DIR")
    if configured:
        return Path(configured)
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".claude"


def _java_hash(text: str) -> int:
    """The CLI's string hash: 31-based over UTF-16 code units, in 32-bit signed arithmetic."""
    value = 0
    data = text.encode("utf-16-le")
    for i in range(0, len(data), 2):
        value = (value * 31 + int.from_bytes(data[i : i + 2], "little")) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def project_dir_name(workdir: str | os.PathLike[str]) -> str:
    """The name of the directory the CLI keeps the sessions of a working directory in."""
    path = os.path.realpath(workdir)
    name = _NOT_ALNUM.sub("-", path)
    if len(name) <= _PROJECT_NAME_MAX:
        return name
    return f"{name[:_PROJECT_NAME_MAX]}-{_base36(abs(_java_hash(path)))}"


def session_path(*, session_id: str, workdir: str | os.PathLike[str], env: Mapping[str, str]) -> Path:
    """The file of a session as the CLI saves it for a run in ``workdir`` with environment ``env``."""
    name = f"{session_id_check(session_id)}.jsonl"
    return config_dir(env) / "projects" / project_dir_name(workdir) / name


def session_find(*, session_id: str, workdir: str | os.PathLike[str], env: Mapping[str, str]) -> Path | None:
    """The session's file: where it should be, else wherever under ``projects/`` the CLI put it."""
    path = session_path(session_id=session_id, workdir=workdir, env=env)
    if path.is_file():
        return path
    projects = config_dir(env) / "projects"
    return next((p for p in projects.glob(f"*/{path.name}") if p.is_file()), None)


def session_read(
    *, session_id: str, workdir: str | os.PathLike[str], env: Mapping[str, str], max_bytes: int
) -> tuple[bytes | None, int]:
    """The session file's content and size; content None when there is no file or it is over
    ``max_bytes`` (the size is still reported, 0 without a file)."""
    path = session_find(session_id=session_id, workdir=workdir, env=env)
    if path is None:
        return None, 0
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return None, size
        return path.read_bytes(), size
    except OSError:
        return None, 0


def _existing_file(
    *, session_id: str, workdir: str | os.PathLike[str], env: Mapping[str, str]
) -> Path | None:
    """session_find, with None for an id that is not a session id."""
    try:
        return session_find(session_id=session_id, workdir=workdir, env=env)
    except SessionIdInvalid:
        return None


def session_settled(*, session_id: str, workdir: str | os.PathLike[str], env: Mapping[str, str]) -> bool:
    """Whether the session's file holds the whole turn: it ends with the CLI's closing entry
    (``last-prompt``) and the entry that names as the turn's last is in the file before it."""
    path = _existing_file(session_id=session_id, workdir=workdir, env=env)
    if path is None:
        return False
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _CLOSING_LINE_MAX))
            tail = handle.read()
            if not tail.endswith(b"\n"):
                return False
            start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
            closing = json.loads(tail[start:])
            if not isinstance(closing, dict) or closing.get("type") != _CLOSING_TYPE:
                return False
            leaf = closing.get("leafUuid")
            if not isinstance(leaf, str) or not leaf:
                return False
            before = size - (len(tail) - start)
            handle.seek(max(0, before - _LEAF_SEARCH_BYTES))
            earlier = handle.read(before - handle.tell())
    except (OSError, ValueError):
        return False
    return f'"uuid":"{leaf}"'.encode() in earlier


def session_write(
    *, session_id: str, workdir: str | os.PathLike[str], env: Mapping[str, str], content: bytes
) -> Path:
    """Put a session's file where a run in ``workdir`` with ``env`` looks for it (mode 0600).

    Written to a temporary name and renamed, so a CLI never reads half a file. Raises OSError.
    """
    path = session_path(session_id=session_id, workdir=workdir, env=env)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def session_remove(*, session_id: str, workdir: str | os.PathLike[str], env: Mapping[str, str]) -> bool:
    """Remove a session's file (and the directory the CLI keeps beside it); True if there was one."""
    path = _existing_file(session_id=session_id, workdir=workdir, env=env)
    if path is None:
        return False
    with suppress(FileNotFoundError):
        path.unlink()
    # Tool results too large to inline are kept in <session id>/ beside the file.
    sidecar = path.with_suffix("")
    if sidecar.is_dir():
        for child in sorted(sidecar.rglob("*"), reverse=True):
            with suppress(OSError):
                child.rmdir() if child.is_dir() else child.unlink()
        with suppress(OSError):
            sidecar.rmdir()
    return True


@contextmanager
def session_restored(
    *, session_id: str, workdir: str | os.PathLike[str], env: Mapping[str, str], content: bytes
) -> Iterator[Path]:
    """A session's file put back where a run in ``workdir`` with ``env`` resumes it, for the length
    of the block; removed afterwards unless another run on this host restored it meanwhile.

    Two continuations of one session may run at once on one host (each forks it under its own new
    id): each holds a shared lock on ``.<id>.jsonl.lock`` while its CLI may read the file, and the
    last one to finish, the one that gets the lock exclusively, removes it. Raises OSError.
    """
    path = session_path(session_id=session_id, workdir=workdir, env=env)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    fd = _lock_shared(lock_path)
    try:
        if not _same_content(path, content):
            session_write(session_id=session_id, workdir=workdir, env=env, content=content)
        yield path
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another run still uses the file; it removes it when it is done
        else:
            with suppress(FileNotFoundError):
                path.unlink()
            with suppress(FileNotFoundError):
                lock_path.unlink()
        finally:
            os.close(fd)


def _lock_shared(lock_path: Path) -> int:
    """A shared lock on ``lock_path``, a file that still exists under that name once locked."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        # The last user removed it between our open and our lock: lock the new one.
        os.close(fd)


def _same_content(path: Path, content: bytes) -> bool:
    try:
        return path.stat().st_size == len(content) and path.read_bytes() == content
    except OSError:
        return False
