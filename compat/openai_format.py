"""The Chat Completions API's replies: a ``chat.completion`` and the chunks of a streamed one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from compat.anthropic_format import usage as anthropic_usage
from compat.errors import ApiError, openai_error_body

DONE = b"data: [DONE]\n\n"
# An SSE comment: the SDK skips it; it keeps proxies and the connection from timing out.
KEEPALIVE = b": ping\n\n"


def completion_id(request_id: str) -> str:
    return "chatcmpl-" + request_id.replace("-", "")


def finish_reason(result: dict[str, Any]) -> str:
    reason = result.get("stopReason") or result.get("stop_reason")
    return "length" if reason == "max_tokens" else "stop"


def usage(result: dict[str, Any] | None) -> dict[str, Any]:
    raw = anthropic_usage(result)
    prompt = raw["input_tokens"] + raw["cache_read_input_tokens"] + raw["cache_creation_input_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": raw["output_tokens"],
        "total_tokens": prompt + raw["output_tokens"],
        "prompt_tokens_details": {"cached_tokens": raw["cache_read_input_tokens"]},
    }


def completion(*, request_id: str, model: str, created: int, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": str(result.get("response") or ""),
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": finish_reason(result),
            }
        ],
        "usage": usage(result),
    }


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True)
class Chunks:
    """The chunks of one streamed completion: they share its id, model and creation time."""

    request_id: str
    model: str
    created: int
    include_usage: bool = False

    def _payload(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": completion_id(self.request_id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = self._payload([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        if self.include_usage:
            # With include_usage every chunk carries "usage": null but the extra one at the end.
            payload["usage"] = None
        return _data(payload)

    def usage(self, result: dict[str, Any]) -> bytes:
        """The one extra chunk ``stream_options.include_usage`` asks for: no choices, the usage."""
        return _data({**self._payload([]), "usage": usage(result)})


def error_data(error: ApiError) -> bytes:
    """A mid-stream failure: a data line holding ``error``, which the SDK raises as APIError."""
    return _data(openai_error_body(error))
