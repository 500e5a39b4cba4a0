"""A small mock of the Anthropic Messages API that the real ``claude`` CLI can talk to.

Stdlib only, so it runs in-process from pytest or as a separate process::

    python tests/mockapi.py --port 0 --port-file /tmp/mock.port

Behaviour is chosen by directives in the text of the last user message:

- ``[[mock:text=SOME TEXT]]``  answer exactly SOME TEXT
- ``[[mock:error=STATUS]]``    reply with that HTTP status and an Anthropic-style error body
- ``[[mock:sleep=SECONDS]]``   wait that long, then answer as otherwise chosen
- ``[[mock:tool=NAME input=JSON]]``  answer with a ``tool_use`` block; once the conversation
  carries the ``tool_result``, answer ``tool said: <result text>``
- ``[[mock:big=N]]``           answer N characters of ``x``
- ``[[mock:drip=N gap=SECONDS]]``  stream the answer as N text deltas, SECONDS apart (0.2 by
  default); the answer is the ``text`` directive's, split in N, or ``part1 part2 … partN``
- ``[[mock:fail_after=K]]``    stream K text deltas (with ``drip``'s gaps), then an SSE ``error``
  event (``invalid_request_error``) instead of the rest of the message; the CLI retries such a
  stream without streaming, and that request gets a 400

``outage`` (an HTTP status, set on the server object) makes every Messages request fail with it
until it is set back to None, whatever the prompt says: an upstream outage, and its end.

``received()`` tells what upstream got, request by request: the system prompt, the messages (role
and content blocks, images as ``{"type": "image", "media_type", "bytes"}``) and their number.

When the last user message carries a ``tool_result``, the directives come from the prompt before
it (so ``sleep`` applies to every turn). ``<system-reminder>`` text that the CLI adds is ignored
for the prompt text. Without a directive the answer is ``4`` when the prompt contains ``2+2`` and
``echo: <first 200 characters of the prompt>`` otherwise. When the message carries a directive more
than once (a transcript of earlier turns before the new one), the last one wins.

``--request-log FILE`` (``MockAnthropic(request_log=...)``) appends one JSON line per Messages
request as it arrives: its wall-clock time ``t`` and the prompt's first 200 characters.
``GET /_mock/requests`` lists the recorded request bodies (``?since=N``: after the first N),
``GET /_mock/turns`` each request's messages as turns (role, text, block types), so a test sees
which earlier turns reached upstream.
With ``--prompt-cache`` (``MockAnthropic(prompt_cache=True)``) usage is reported as the real prompt
cache would: input tokens by size (4 bytes a token), and the longest prefix that an earlier request
marked with ``cache_control`` as ``cache_read_input_tokens``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("mockapi")

VERBOSE_ENV = "MOCKAPI_VERBOSE"
INPUT_TOKENS = 12
BILLING_HEADER = "x-anthropic-billing-header:"
ECHO_CHARS = 200
# Large answers go out in several deltas, as the real API streams them.
DELTA_CHARS = 8192

_DIRECTIVE_RE = re.compile(r"\[\[mock:(\w+)=(.*?)\]\]", re.DOTALL)
_REMINDER_RE = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.DOTALL)
_TOOL_RE = re.compile(r"\s*(\S+)(?:\s+input=(.*))?\s*\Z", re.DOTALL)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    """The Anthropic error ``type`` that goes with an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str = "mock error") -> dict[str, Any]:
    """An Anthropic-style error body."""
    return {"type": "error", "error": {"type": error_type_for(status), "message": message}}


# --- reading the request -------------------------------------------------------------------------


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in _blocks(content) if b.get("type") == "text")


@dataclass
class Turn:
    """What the mock needs from a Messages request: directives, prompt text, tool results."""

    directives: dict[str, str] = field(default_factory=dict)
    prompt: str = ""
    tool_results: list[str] = field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Turn:
        """Read the last user message; after a tool call, take directives from the prompt before it."""
        user_messages = [
            m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"
        ]
        if not user_messages:
            return cls()
        last = _blocks(user_messages[-1].get("content"))
        tool_results = [_tool_result_text(b) for b in last if b.get("type") == "tool_result"]
        # The tool_result message holds no prompt, so the directives come from the last prompt.
        source = last
        if tool_results:
            for message in reversed(user_messages[:-1]):
                blocks = _blocks(message.get("content"))
                if _prompt_text(blocks):
                    source = blocks
                    break
        texts = [b.get("text") or "" for b in source if b.get("type") == "text"]
        directives: dict[str, str] = {}
        # The last directive wins: a transcript of earlier turns may lead the message.
        for text in reversed(texts):
            for name, value in reversed(_DIRECTIVE_RE.findall(text)):
                directives.setdefault(name, value)
        return cls(directives=directives, prompt=_prompt_text(source), tool_results=tool_results)


def _prompt_text(blocks: list[dict[str, Any]]) -> str:
    """The user's own text: text blocks without the CLI's ``<system-reminder>`` sections."""
    parts = []
    for block in blocks:
        if block.get("type") != "text":
            continue
        text = _REMINDER_RE.sub("", block.get("text") or "").strip()
        if text:
            parts.append(text)
    return "\n".join(parts)


# --- building the answer -------------------------------------------------------------------------


@dataclass
class Reply:
    """One answer: either an error (``status`` >= 400) or a content block."""

    status: int = 200
    text: str | None = None
    tool_name: str | None = None
    tool_input_json: str = "{}"
    error_message: str = "mock error"
    # Input usage as a prompt cache would report it (MockAnthropic(prompt_cache=True)); None: fixed.
    input_usage: dict[str, int] | None = None
    # drip: the text goes out in this many deltas, gap seconds apart; fail_after: deltas, then an error.
    drip: int = 0
    gap: float = 0.0
    fail_after: int | None = None

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.tool_name else "end_turn"

    @property
    def output_tokens(self) -> int:
        size = len(self.tool_input_json) if self.tool_name else len(self.text or "")
        return max(1, math.ceil(size / 4))


_DRIP_RE = re.compile(r"\s*(\d+)(?:\s+gap=([0-9.]+))?\s*\Z")
DRIP_GAP = 0.2


def choose_reply(turn: Turn) -> Reply:
    """Apply the directives (sleep aside) to pick the answer, then how it is streamed."""
    reply = _choose_content(turn)
    d = turn.directives
    if reply.status >= 400 or reply.tool_name or not ("drip" in d or "fail_after" in d):
        return reply
    if "drip" in d:
        match = _DRIP_RE.match(d["drip"])
        if not match or int(match.group(1)) < 1:
            return Reply(status=400, error_message=f"mock: bad drip directive {d['drip']!r}")
        reply.drip = int(match.group(1))
        reply.gap = float(match.group(2)) if match.group(2) else DRIP_GAP
        if "text" not in d:
            reply.text = " ".join(f"part{i + 1}" for i in range(reply.drip))
    if "fail_after" in d:
        try:
            reply.fail_after = max(0, int(d["fail_after"].strip()))
        except ValueError:
            return Reply(status=400, error_message=f"mock: bad fail_after {d['fail_after']!r}")
    return reply


def _choose_content(turn: Turn) -> Reply:
    d = turn.directives
    if "error" in d:
        try:
            status = int(d["error"].strip())
        except ValueError:
            return Reply(status=400, error_message=f"mock: bad error status {d['error']!r}")
        if not 400 <= status <= 599:
            return Reply(status=400, error_message=f"mock: error status {status} is not 4xx/5xx")
        return Reply(status=status)
    if "tool" in d:
        if turn.tool_results:
            return Reply(text="tool said: " + "\n".join(turn.tool_results))
        match = _TOOL_RE.match(d["tool"])
        if not match:
            return Reply(status=400, error_message=f"mock: bad tool directive {d['tool']!r}")
        raw_input = (match.group(2) or "{}").strip()
        try:
            if not isinstance(json.loads(raw_input), dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return Reply(status=400, error_message=f"mock: tool input is not a JSON object: {exc}")
        return Reply(tool_name=match.group(1), tool_input_json=raw_input)
    if "big" in d:
        try:
            return Reply(text="x" * int(d["big"].strip()))
        except ValueError:
            return Reply(status=400, error_message=f"mock: bad big size {d['big']!r}")
    if "text" in d:
        return Reply(text=d["text"])
    if "2+2" in turn.prompt:
        return Reply(text="4")
    return Reply(text="echo: " + turn.prompt[:ECHO_CHARS])


def sleep_seconds(turn: Turn) -> float:
    """The ``sleep`` directive's delay, 0 when absent or unreadable."""
    try:
        return max(0.0, float(turn.directives.get("sleep", "0").strip()))
    except ValueError:
        return 0.0


def _usage(output_tokens: int, input_usage: dict[str, int] | None = None) -> dict[str, int]:
    return {
        "input_tokens": INPUT_TOKENS,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        **(input_usage or {}),
    }


def _tokens(value: Any) -> int:
    """About what the real tokenizer counts: a token per 4 bytes of compact JSON."""
    return math.ceil(len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()) / 4)


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def prompt_segments(body: dict[str, Any]) -> list[tuple[Any, bool]]:
    """The request's prompt in cache order (tools, system, each message), each with whether it holds
    a ``cache_control`` breakpoint; the breakpoint markers themselves are not part of the content."""
    system = body.get("system") or ""
    if isinstance(system, list):
        # The CLI's billing header changes with every request; the real cache does not key on it.
        system = [b for b in system if not str(b.get("text", "")).startswith(BILLING_HEADER)]
    # A string content is one text block to the tokenizer (the CLI sends it as a block when it marks it).
    messages = [
        {**m, "content": _blocks(m.get("content"))} for m in body.get("messages") or [] if isinstance(m, dict)
    ]
    parts = [body.get("tools") or [], system, *messages]
    return [(_without_cache_control(part), "cache_control" in json.dumps(part)) for part in parts]


def turns_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's messages as turns: role, the text without the CLI's reminders, block types."""
    turns = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        blocks = _blocks(message.get("content"))
        turns.append(
            {
                "role": message.get("role"),
                "text": _prompt_text(blocks),
                "types": [b.get("type") for b in blocks],
            }
        )
    return turns


def _content_block(reply: Reply, tool_id: str) -> dict[str, Any]:
    if reply.tool_name:
        return {
            "type": "tool_use",
            "id": tool_id,
            "name": reply.tool_name,
            "input": json.loads(reply.tool_input_json),
        }
    return {"type": "text", "text": reply.text or ""}


def message_json(reply: Reply, message_id: str, model: str, tool_id: str) -> dict[str, Any]:
    """The non-streamed Messages response."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_content_block(reply, tool_id)],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": _usage(reply.output_tokens, reply.input_usage),
    }


def text_pieces(reply: Reply) -> list[str]:
    """The answer's text deltas: ``drip`` of them, else DELTA_CHARS-sized ones."""
    text = reply.text or ""
    if reply.drip:
        size = max(1, math.ceil(len(text) / reply.drip))
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        return pieces + [""] * (reply.drip - len(pieces))
    return [text[i : i + DELTA_CHARS] for i in range(0, len(text), DELTA_CHARS)] or [""]


def sse_events(reply: Reply, message_id: str, model: str, tool_id: str) -> Iterator[tuple[str, dict]]:
    """The streamed Messages response, as (event type, data) pairs."""
    yield (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _usage(1, reply.input_usage),
            },
        },
    )
    if reply.tool_name:
        start = {"type": "tool_use", "id": tool_id, "name": reply.tool_name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": reply.tool_input_json}]
    else:
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in text_pieces(reply)]
    yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}
    for n, delta in enumerate(deltas):
        if reply.fail_after is not None and n == reply.fail_after:
            failure = error_body(400, "mock: failed mid-stream")
            yield "error", failure
            return
        yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def received_view(body: dict[str, Any]) -> dict[str, Any]:
    """A request body as tests compare it: the system prompt's text, each message's role and blocks
    (an image as its media type and decoded size, not its data), and the number of messages."""
    system = body.get("system")
    system_text = (
        system
        if isinstance(system, str)
        else "\n".join(b.get("text", "") for b in _blocks(system) if b.get("type") == "text")
    )
    messages = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        blocks = []
        for block in _blocks(message.get("content")):
            if block.get("type") == "image":
                source = block.get("source") or {}
                data = source.get("data") or ""
                blocks.append(
                    {
                        "type": "image",
                        "media_type": source.get("media_type"),
                        "bytes": len(base64.b64decode(data)) if data else 0,
                    }
                )
            else:
                blocks.append(block)
        messages.append({"role": message.get("role"), "content": blocks})
    return {"system": system_text, "messages": messages, "turns": len(messages)}


# --- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One HTTP request the mock received, whatever its path."""

    method: str
    path: str
    headers: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "headers": self.headers}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The CLI may open many connections at once (retries, MCP start-up); a short backlog drops them.
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], mock: MockAnthropic) -> None:
        self.mock = mock
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get(VERBOSE_ENV) == "1":
            super().log_message(format, *args)

    @property
    def mock(self) -> MockAnthropic:
        return self.server.mock

    @property
    def route(self) -> str:
        return urlsplit(self.path).path

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.mock._record_hit(self)
        self._start_response(200 if self.route == "/" else 404, "application/json", 0)

    def do_GET(self) -> None:  # noqa: N802
        self.mock._record_hit(self)
        if self.route == "/":
            self._send_json(200, {"ok": True})
        elif self.route == "/_mock/requests":
            # ?since=N: only the requests after the first N.
            since = parse_qs(urlsplit(self.path).query).get("since", ["0"])[0]
            self._send_json(200, self.mock.message_requests()[int(since) if since.isdigit() else 0 :])
        elif self.route == "/_mock/turns":
            self._send_json(200, self.mock.turns())
        elif self.route == "/_mock/hits":
            self._send_json(200, [h.as_dict() for h in self.mock.hits])
        else:
            self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        received = time.time()
        self.mock._record_hit(self)
        raw = self._read_body()
        if self.route == "/_mock/reset":
            self.mock.reset()
            self._send_json(200, {"ok": True})
        elif self.route == "/v1/messages":
            self._messages(raw, received)
        else:
            self._not_found()

    def do_PUT(self) -> None:  # noqa: N802
        self.mock._record_hit(self)
        self._read_body()
        self._not_found()

    do_DELETE = do_PATCH = do_PUT

    def _messages(self, raw: bytes, received: float) -> None:
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            self._send_json(400, error_body(400, f"mock: invalid JSON body: {exc}"))
            return
        self.mock._record_request(body)
        turn = Turn.from_body(body)
        self.mock._log_request(received, turn)
        outage = self.mock.outage
        if outage is not None:
            self._send_json(outage, error_body(outage, "mock: upstream outage"))
            return
        delay = sleep_seconds(turn)
        if delay and self.mock._stopping.wait(delay):
            self.close_connection = True
            return
        reply = choose_reply(turn)
        reply.input_usage = self.mock._input_usage(body)
        if reply.status >= 400:
            self._send_json(reply.status, error_body(reply.status, reply.error_message))
            return
        n = self.mock._next_message_id()
        message_id, tool_id = f"msg_mock_{n}", f"toolu_mock_{n}"
        model = str(body.get("model") or "claude-mock")
        if reply.fail_after is not None and not body.get("stream"):
            # The CLI retries a stream that failed without streaming: that fails too.
            self._send_json(400, error_body(400, "mock: failed mid-stream"))
            return
        if body.get("stream"):
            self._send_sse(sse_events(reply, message_id, model, tool_id), gap=reply.gap)
        else:
            self._send_json(200, message_json(reply, message_id, model, tool_id))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end at an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _not_found(self) -> None:
        logger.debug("mockapi: no route for %s %s", self.command, self.path)
        self._send_json(404, error_body(404, f"mock: no route for {self.command} {self.route}"))

    def _start_response(self, status: int, content_type: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("request-id", f"req_mock_{self.mock._next_request_id()}")
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            self._start_response(status, "application/json", len(data))
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_sse(self, events: Iterator[tuple[str, dict]], *, gap: float = 0.0) -> None:
        # Chunked encoding keeps the connection reusable, as the real API's keep-alive is.
        try:
            self._start_response(200, "text/event-stream", None)
            deltas = 0
            for event, data in events:
                if event in ("content_block_delta", "error") and gap:
                    if deltas and self.mock._stopping.wait(gap):
                        self.close_connection = True
                        return
                    deltas += 1
                frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                if gap:
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class MockAnthropic:
    """The mock server; ``start()`` binds ``host:port`` (0: a free port) and serves in a daemon thread.

    ``requests`` lists the parsed bodies of every ``POST /v1/messages`` in arrival order and
    ``hits`` every HTTP request; both are appended under a lock, so read them through
    ``message_requests()`` / ``hits`` for a consistent snapshot.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        prompt_cache: bool = False,
        request_log: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        # A file that gets one JSON line per Messages request as it arrives: the wall-clock time
        # and the prompt's first characters (the benchmark's latency breakdown reads it).
        self.request_log = request_log
        # Usage as the real API's prompt cache reports it: input tokens by size, the longest prefix
        # an earlier request marked with cache_control read from the cache (prompt_segments).
        self.prompt_cache = prompt_cache
        self._cached_prefixes: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        self._message_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._stopping = threading.Event()
        self.outage: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL for ``ANTHROPIC_BASE_URL``."""
        if self._server is None:
            raise RuntimeError("MockAnthropic is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def hits(self) -> list[Hit]:
        """A snapshot of every HTTP request received (method, path with query, headers)."""
        with self._lock:
            return list(self._hits)

    def message_requests(self) -> list[dict[str, Any]]:
        """A snapshot of the recorded ``POST /v1/messages`` bodies."""
        with self._lock:
            return list(self.requests)

    def turns(self) -> list[list[dict[str, Any]]]:
        """Each recorded ``POST /v1/messages`` as its turns (:func:`turns_of`), in arrival order."""
        return [turns_of(body) for body in self.message_requests()]

    def received(self) -> list[dict[str, Any]]:
        """What upstream got, per ``POST /v1/messages``: system prompt, messages and their number."""
        return [received_view(body) for body in self.message_requests()]

    def reset(self) -> None:
        """Forget the recorded requests, hits and cached prompt prefixes."""
        with self._lock:
            self.requests.clear()
            self._hits.clear()
            self._cached_prefixes.clear()
            self.outage = None

    def _input_usage(self, body: dict[str, Any]) -> dict[str, int] | None:
        if not self.prompt_cache:
            return None
        total, read, marked = 0, 0, 0
        digest = hashlib.sha256()
        ends: list[tuple[str, int, bool]] = []
        for part, breakpoint in prompt_segments(body):
            total += _tokens(part)
            digest.update(json.dumps(part, sort_keys=True).encode())
            ends.append((digest.copy().hexdigest(), total, breakpoint))
        with self._lock:
            for key, tokens, breakpoint in ends:
                if key in self._cached_prefixes:
                    read = tokens
                if breakpoint:
                    marked = tokens
                    self._cached_prefixes.add(key)
        created = max(0, marked - read)
        return {
            "input_tokens": max(1, total - read - created),
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": created,
        }

    def start(self) -> MockAnthropic:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("MockAnthropic is already started")
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"mockapi:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut short any ``sleep`` directive, and close the socket."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> MockAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record_hit(self, handler: BaseHTTPRequestHandler) -> None:
        hit = Hit(handler.command, handler.path, dict(handler.headers.items()))
        with self._lock:
            self._hits.append(hit)

    def _record_request(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    def _log_request(self, received: float, turn: Turn) -> None:
        if self.request_log is None:
            return
        line = json.dumps({"t": received, "prompt": turn.prompt[:200]}) + "\n"
        with self._lock, open(self.request_log, "a") as fh:
            fh.write(line)

    def _next_message_id(self) -> int:
        with self._lock:
            return next(self._message_ids)

    def _next_request_id(self) -> int:
        with self._lock:
            return next(self._request_ids)


# --- standalone ----------------------------------------------------------------------------------


def _write_port_file(path: str, port: int) -> None:
    # Write then rename, so a reader polling the file never sees a partial number.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(f"{port}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Run the mock until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description="Mock Anthropic Messages API for the claude CLI")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument("--prompt-cache", action="store_true", help="report usage as a prompt cache would")
    parser.add_argument("--request-log", help="append each Messages request's arrival time and prompt here")
    args = parser.parse_args(argv)

    verbose = os.environ.get(VERBOSE_ENV) == "1"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())

    server = MockAnthropic(
        args.host, args.port, prompt_cache=args.prompt_cache, request_log=args.request_log
    ).start()
    try:
        if args.port_file:
            _write_port_file(args.port_file, server.port)
        print(server.port, flush=True)
        done.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
