"""The CLI's ``--output-format stream-json`` output, line by line, as it arrives.

With ``--verbose --include-partial-messages`` the CLI prints one JSON object per line: ``system``
(init), ``stream_event`` (the upstream's raw SSE events, as they arrive), ``assistant`` and ``user``
messages (tool results), and last the ``result`` object. :class:`StreamJsonParser` turns them into
the events a client needs, as plain dicts:

- ``{"type": "text", "text": delta}`` for each ``text_delta`` of the main conversation;
- ``{"type": "tool", "name": name, "phase": "start"}`` when a ``tool_use`` block starts, and
  ``"phase": "end"`` when its ``tool_result`` comes back;

and keeps the ``result`` object. Each failed upstream request that the CLI reports (``system``
``api_retry`` lines, claude_cli.upstream) goes to ``on_upstream`` and is kept as ``upstream``.
Only the line being read is held in memory: a line longer than ``max_line_bytes`` marks the
output as overflowed and is dropped, the rest of it read and discarded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from claude_cli import upstream as upstream_failures
from claude_cli.upstream import UpstreamFailure

Event = dict[str, Any]
HEAD_BYTES = 2048


class StreamJsonParser:
    """Feed it stdout chunks; it calls ``on_event`` for each event and keeps the ``result`` line.

    ``result`` is the last ``"type": "result"`` object; ``last_object`` the last JSON object of any
    kind (what a run without a result line printed last); ``head`` the first bytes of the output,
    for error messages. Output that is one JSON object (``--output-format json`` in
    CLAUDE_EXTRA_ARGS) is one line, so it is read the same way.
    """

    def __init__(
        self,
        *,
        max_line_bytes: int,
        on_event: Callable[[Event], None] | None = None,
        on_upstream: Callable[[UpstreamFailure], None] | None = None,
    ) -> None:
        self._max = max_line_bytes
        self._on_event = on_event
        self._on_upstream = on_upstream
        self._line = bytearray()
        self._skipping = False  # inside a line past the cap, until its newline
        self._running: dict[str, str] = {}  # tool_use id → name, until its result
        self.head = bytearray()
        self.result: dict[str, Any] | None = None
        self.last_object: Any = None
        self.overflowed = False
        self.size = 0
        # The last failed upstream request the CLI reported, and a usage limit's reset time.
        self.upstream: UpstreamFailure | None = None
        self.limit_reset: float | None = None

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self._skipping:
                if len(self._line) + len(piece) > self._max:
                    self.overflowed = True
                    self._skipping = True
                    self._line.clear()
                else:
                    self._line += piece
            if end < 0:
                return
            if self._skipping:
                self._skipping = False
            else:
                self._take(bytes(self._line))
            self._line.clear()
            start = end + 1

    def finish(self) -> None:
        """The output ended: a last line without a newline is a line too."""
        if self._line and not self._skipping:
            self._take(bytes(self._line))
        self._line.clear()
        self._skipping = False

    def _take(self, line: bytes) -> None:
        text = line.strip()
        if not text:
            return
        try:
            obj = json.loads(text)
        except ValueError:
            return
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "control_response":
            return  # the answer to a warm CLI's system prompt (invocation.warm_input), not output
        self.last_object = obj
        if not isinstance(obj, dict):
            return
        if kind == "result":
            self.result = obj
        elif kind == "stream_event" and obj.get("parent_tool_use_id") is None:
            event = obj.get("event")
            if isinstance(event, dict):
                self._stream_event(event)
        elif kind == "user" and obj.get("parent_tool_use_id") is None:
            self._tool_results(obj.get("message"))
        elif kind == "system" and obj.get("subtype") == "api_retry":
            failure = upstream_failures.from_retry(obj, self.limit_reset)
            if failure is not None:
                self.upstream = failure
                if self._on_upstream is not None:
                    self._on_upstream(failure)
        elif kind == "rate_limit_event":
            self.limit_reset = upstream_failures.limit_reset(obj) or self.limit_reset

    def _stream_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    self._emit({"type": "text", "text": text})
        elif kind == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict) and block.get("type") in ("tool_use", "server_tool_use"):
                name = str(block.get("name") or "")
                self._running[str(block.get("id") or "")] = name
                self._emit({"type": "tool", "name": name, "phase": "start"})

    def _tool_results(self, message: Any) -> None:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            return
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                name = self._running.pop(str(block.get("tool_use_id") or ""), None)
                if name is not None:
                    self._emit({"type": "tool", "name": name, "phase": "end"})

    def _emit(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)
