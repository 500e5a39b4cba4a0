"""The Messages API's replies: a Message, and the SSE events of a streamed one, as pure functions."""

from __future__ import annotations

import json
from typing import Any

from compat.errors import ApiError, anthropic_error_body

STOP_REASONS = ("end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal")


def message_id(request_id: str) -> str:
    """``msg_`` and the gateway's request id: a Message names the QueryRequest that answered it."""
    return "msg_" + request_id.replace("-", "")


def stop_reason(result: dict[str, Any]) -> str:
    reason = result.get("stopReason") or result.get("stop_reason")
    return reason if reason in STOP_REASONS else "end_turn"


def usage(result: dict[str, Any] | None) -> dict[str, int]:
    """The Messages API's usage from a Result's (camelCase in the native Result, snake_case in events)."""
    raw = (result or {}).get("usage") or {}

    def pick(snake: str, camel: str) -> int:
        value = raw.get(snake, raw.get(camel))
        return int(value) if isinstance(value, int | float) else 0

    return {
        "input_tokens": pick("input_tokens", "inputTokens"),
        "output_tokens": pick("output_tokens", "outputTokens"),
        "cache_creation_input_tokens": pick("cache_creation_input_tokens", "cacheCreationInputTokens"),
        "cache_read_input_tokens": pick("cache_read_input_tokens", "cacheReadInputTokens"),
    }


def message(*, request_id: str, model: str, result: dict[str, Any]) -> dict[str, Any]:
    """The non-streamed reply: a Message with one text block holding the answer."""
    return {
        "id": message_id(request_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": str(result.get("response") or "")}],
        "stop_reason": stop_reason(result),
        "stop_sequence": None,
        "usage": usage(result),
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def message_start(*, request_id: str, model: str) -> bytes:
    return sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id(request_id),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        },
    )


def ping() -> bytes:
    return sse("ping", {"type": "ping"})


def block_start(index: int = 0) -> bytes:
    return sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
    )


def text_delta(text: str, index: int = 0) -> bytes:
    return sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}},
    )


def block_stop(index: int = 0) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def message_end(result: dict[str, Any]) -> bytes:
    """``message_delta`` (the stop reason, the usage: output and input tokens), then ``message_stop``."""
    return sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(result), "stop_sequence": None},
            "usage": usage(result),
        },
    ) + sse("message_stop", {"type": "message_stop"})


def error_event(error: ApiError) -> bytes:
    return sse("error", anthropic_error_body(error))
