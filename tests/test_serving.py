"""The web server as clients meet it (gunicorn, uvicorn workers, gateway_project.asgi): the address
it listens on, and refusals that reach raw HTTP clients.

A raw socket client stands for the HTTP libraries that send a body without ``Expect: 100-continue``
and close after one request (Python's urllib among them); curl and requests hide the problem.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.support.processes import start_web_server


def served(test):
    """A test of a real gunicorn, against the test database and Redis."""
    return pytest.mark.e2e(pytest.mark.usefixtures("transactional_db", "redis_db")(test))


BODY_2MB = b'{"query": "' + b"x" * (2_000_000 - 14) + b'"}'


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def head(length: int | None, *, connection: str = "close", path: str = "/api/query") -> bytes:
    """A POST's head; ``length`` None for a chunked body."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Connection: {connection}\r\n{framing}\r\n\r\n"
    ).encode()


def chunked(data: bytes, size: int = 65536) -> bytes:
    pieces = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


def error_type(body: dict) -> str:
    return body["error"]["type"] if "code" not in body["error"] else body["error"]["code"]


def read_response_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status and headers of one response on ``sock``, and what arrived of its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    header, rest = data.split(b"\r\n\r\n", 1)
    lines = header.decode("latin1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of one response (chunked or with Content-Length) on ``sock``."""
    status, headers, rest = read_response_head(sock)
    if "content-length" in headers:
        while len(rest) < int(headers["content-length"]):
            rest += sock.recv(65536)
        return status, json.loads(rest[: int(headers["content-length"])])
    while not rest.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a chunked body"
        rest += chunk
    body, pos = b"", 0
    while True:
        size_end = rest.index(b"\r\n", pos)
        size = int(rest[pos:size_end], 16)
        if size == 0:
            return status, json.loads(body)
        body += rest[size_end + 2 : size_end + 2 + size]
        pos = size_end + 2 + size + 2


def closed_cleanly(sock: socket.socket, timeout: float) -> bool:
    """True when the server ends the connection with a FIN (recv returns b""), False on a reset."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return False
    return True


@served
def test_a_body_over_the_limit_gets_the_json_413_not_a_reset(mock, tmp_path, processes):
    # /v1/'s limit brought under REQUEST_DISCARD_MAX_BYTES, so its refusals are drained too.
    url = start_web_server(processes, mock, tmp_path, V1_MAX_BODY_BYTES=str(1024 * 1024))
    port = port_of(url)

    for path in ("/api/query", "/v1/messages", "/v1/chat/completions"):
        # The server answers from Content-Length before reading the body; the client, which did not
        # ask first, sends the 2 MB anyway, and must still get the answer and a clean close.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head(len(BODY_2MB), path=path))
            status, body = read_response(sock)
            assert status == 413 and error_type(body) == "request_too_large", (path, body)
            sock.sendall(BODY_2MB)  # without the drain: BrokenPipe or ECONNRESET here
            assert closed_cleanly(sock, timeout=30), path

        # Python's own client sends the body whole, then reads: the 413, every time.
        for _ in range(5):
            request = urllib.request.Request(
                f"{url}{path}", data=BODY_2MB, headers={"Content-Type": "application/json"}
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 413
            assert error_type(json.loads(refused.value.read())) == "request_too_large"

        # Kept-alive connections go on serving after a refusal.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head(len(BODY_2MB), connection="keep-alive", path=path) + BODY_2MB)
            assert read_response(sock)[0] == 413
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
            assert read_response(sock) == (200, {"status": "ok"})

    # A chunked body declares no length: refused once more than the limit has arrived (before
    # Django's ASGI handler would have spooled it all), the rest drained, then a clean close.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head(None, connection="keep-alive", path="/v1/messages") + chunked(BODY_2MB))
        status, body = read_response(sock)
        assert status == 413 and error_type(body) == "request_too_large"
        assert closed_cleanly(sock, timeout=30)


@served
def test_draining_is_bounded_in_bytes_and_time(mock, tmp_path, processes):
    url = start_web_server(
        processes,
        mock,
        tmp_path,
        REQUEST_DISCARD_MAX_BYTES=str(4 * 1024 * 1024),
        REQUEST_DISCARD_SECONDS="1",
        V1_MAX_BODY_BYTES=str(1024 * 1024),
    )
    port = port_of(url)
    for path in ("/api/query", "/v1/messages"):
        # Announced beyond what would be read: answered and closed at once, nothing waited for.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head(1024**3, connection="keep-alive", path=path))
            status, headers, _ = read_response_head(sock)
            assert status == 413 and headers.get("connection") == "close", path
            assert closed_cleanly(sock, timeout=10), path
        # A body that trickles: the server stops waiting after REQUEST_DISCARD_SECONDS.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head(len(BODY_2MB), path=path) + BODY_2MB[:1000])
            assert read_response(sock)[0] == 413, path
            started = time.monotonic()
            assert closed_cleanly(sock, timeout=20), path
            assert time.monotonic() - started < 15


@served
def test_the_server_listens_on_loopback_unless_host_says_otherwise(mock, tmp_path, processes):
    # 127.0.0.2 is this machine too, but not the address gunicorn bound by default.
    url = start_web_server(processes, mock, tmp_path / "default", HOST="")
    port = port_of(url)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5)
    processes.stop_all()

    url = start_web_server(processes, mock, tmp_path / "all", HOST="0.0.0.0")
    with socket.create_connection(("127.0.0.2", port_of(url)), timeout=5):
        pass
