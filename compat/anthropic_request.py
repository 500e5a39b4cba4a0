"""``POST /v1/messages`` bodies: validated as the Messages API does, field named first, and mapped.

Messages are user and assistant turns, alternating, the first and the last the user's (an assistant
prefill cannot be given to the CLI). User content: ``text`` and base64 ``image`` blocks; earlier
assistant content: ``text`` (``thinking`` blocks are dropped). Client tools are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from compat.conversation import (
    ImageBudget,
    Turn,
    image_block,
    messages_count_check,
    prompt_build,
    prompt_check_size,
    text_block,
)
from compat.errors import invalid
from queries.prompts import Prompt
from queries.validation import model_problem

# Accepted and passed on, as far as the pipeline goes.
USED = ("model", "messages", "system", "stream", "metadata")
# Accepted, but the CLI cannot honour them: named in the x-gateway-ignored-params header.
IGNORED = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "thinking",
    "service_tier",
    "cache_control",
    "container",
    "context_management",
    "diagnostics",
    "inference_geo",
    "mcp_servers",
    "output_config",
    "output_format",
    "speed",
    "user_profile_id",
    "workspace_id",
)
REFUSED = ("tools", "tool_choice")
TOOLS_REFUSAL = "client tools are not supported: the gateway's MCP servers are chosen by routing"


@dataclass
class MessagesCall:
    model: str
    prompt: Prompt
    stream: bool
    metadata: dict[str, Any] | None
    ignored: list[str] = field(default_factory=list)


def _require_type(value: Any, kind: type | tuple[type, ...], where: str, expected: str) -> None:
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise invalid(f"{where}: Input should be {expected}", param=where)
    if not isinstance(value, kind):
        raise invalid(f"{where}: Input should be {expected}", param=where)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    _require_type(value, (int, float), name, "a valid number")
    if not math.isfinite(value) or not low <= value <= high:
        raise invalid(f"{name}: Input should be between {low:g} and {high:g}", param=name)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"{where}: Input should be a valid string or a list of content blocks", param=where)
    for index, block in enumerate(content):
        if not isinstance(block, dict):
            raise invalid(f"{where}.{index}: Input should be a valid dictionary", param=f"{where}.{index}")
    return content


def _user_block(block: dict[str, Any], where: str, budget: ImageBudget) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        _require_type(text, str, f"{where}.text", "a valid string")
        if not text:
            raise invalid(f"{where}.text: text content blocks must be non-empty", param=f"{where}.text")
        return text_block(text)
    if kind == "image":
        source = block.get("source")
        if not isinstance(source, dict):
            raise invalid(f"{where}.source: Field required", param=f"{where}.source")
        if source.get("type") != "base64":
            raise invalid(
                f"{where}.source.type: only base64 image sources are supported by this gateway",
                param=f"{where}.source.type",
            )
        media_type, data = source.get("media_type"), source.get("data")
        _require_type(media_type, str, f"{where}.source.media_type", "a valid string")
        _require_type(data, str, f"{where}.source.data", "a valid string")
        return image_block(
            media_type=str(media_type),
            data=str(data),
            where=f"{where}.source",
            param=f"{where}.source",
            budget=budget,
        )
    if kind in ("tool_use", "tool_result", "server_tool_use"):
        raise invalid(f"{where}.type: {TOOLS_REFUSAL}", param=f"{where}.type")
    raise invalid(
        f"{where}.type: Input tag {kind!r} found using 'type' does not match any of the expected tags: "
        "'text', 'image'",
        param=f"{where}.type",
    )


def _assistant_block(block: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        _require_type(text, str, f"{where}.text", "a valid string")
        return text_block(str(text))
    if kind in ("thinking", "redacted_thinking"):
        return None
    if kind in ("tool_use", "server_tool_use"):
        raise invalid(f"{where}.type: {TOOLS_REFUSAL}", param=f"{where}.type")
    raise invalid(
        f"{where}.type: Input tag {kind!r} found using 'type' does not match any of the expected tags: "
        "'text', 'thinking', 'redacted_thinking'",
        param=f"{where}.type",
    )


def _turns(messages: Any) -> list[Turn]:
    if messages is None:
        raise invalid("messages: Field required", param="messages")
    _require_type(messages, list, "messages", "a valid list")
    if not messages:
        raise invalid("messages: at least one message is required", param="messages")
    messages_count_check(len(messages), message="messages: {count} messages; the limit is {limit}")
    budget = ImageBudget()
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise invalid(f"{where}: Input should be a valid dictionary", param=where)
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise invalid(f"{where}.{extra[0]}: Extra inputs are not permitted", param=f"{where}.{extra[0]}")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"{where}.role: Input should be 'user' or 'assistant'", param=f"{where}.role")
        if "content" not in message:
            raise invalid(f"{where}.content: Field required", param=f"{where}.content")
        blocks = _blocks(message["content"], f"{where}.content")
        if role == "user":
            mapped = [_user_block(b, f"{where}.content.{i}", budget) for i, b in enumerate(blocks)]
        else:
            kept = [_assistant_block(b, f"{where}.content.{i}") for i, b in enumerate(blocks)]
            mapped = [b for b in kept if b is not None]
        if turns and turns[-1].role == role:
            raise invalid(
                f'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row',
                param="messages",
            )
        if not turns and role != "user":
            raise invalid('messages: first message must use the "user" role', param="messages")
        if role == "user" and not mapped:
            raise invalid(f"{where}.content: user messages must have non-empty content", param=where)
        turns.append(Turn(role, mapped))
    if turns[-1].role != "user":
        raise invalid(
            'messages: the final message must use the "user" role '
            "(an assistant prefill cannot be continued by the CLI)",
            param="messages",
        )
    return turns


def _system(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise invalid("system: Input should be a valid string or a list of text blocks", param="system")
    parts = []
    for index, block in enumerate(system):
        where = f"system.{index}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid(f"{where}.type: Input should be 'text'", param=f"{where}.type")
        _require_type(block.get("text"), str, f"{where}.text", "a valid string")
        parts.append(block["text"])
    return "\n\n".join(parts)


def messages_call_parse(body: Any) -> MessagesCall:
    """The validated call, or ApiError naming the field as the Messages API would."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    for name in REFUSED:
        if body.get(name):
            raise invalid(f"{name}: {TOOLS_REFUSAL}", param=name)
    unknown = sorted(set(body) - set(USED) - set(IGNORED) - set(REFUSED))
    if unknown:
        raise invalid(f"{unknown[0]}: Extra inputs are not permitted", param=unknown[0])
    if "max_tokens" not in body:
        raise invalid("max_tokens: Field required", param="max_tokens")
    max_tokens = body["max_tokens"]
    _require_type(max_tokens, int, "max_tokens", "a valid integer")
    if max_tokens < 1:
        raise invalid("max_tokens: Input should be greater than or equal to 1", param="max_tokens")
    model = body.get("model")
    if model is None:
        raise invalid("model: Field required", param="model")
    _require_type(model, str, "model", "a valid string")
    problem = model_problem(model)
    if problem or not model:
        raise invalid(f"model: {problem or 'must not be empty'}", param="model")
    stream = body.get("stream", False)
    if stream is not None:
        _require_type(stream, bool, "stream", "a valid boolean")
    metadata = body.get("metadata")
    if metadata is not None:
        _require_type(metadata, dict, "metadata", "a valid dictionary")
        extra = sorted(set(metadata) - {"user_id"})
        if extra:
            raise invalid(
                f"metadata.{extra[0]}: Extra inputs are not permitted", param=f"metadata.{extra[0]}"
            )
        if metadata.get("user_id") is not None:
            _require_type(metadata["user_id"], str, "metadata.user_id", "a valid string")
            if len(metadata["user_id"]) > 256:
                raise invalid("metadata.user_id: String should have at most 256 characters")
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    if body.get("top_k") is not None:
        _require_type(body["top_k"], int, "top_k", "a valid integer")
        if body["top_k"] < 0:
            raise invalid("top_k: Input should be greater than or equal to 0", param="top_k")
    stops = body.get("stop_sequences")
    if stops is not None:
        _require_type(stops, list, "stop_sequences", "a valid list")
        for index, stop in enumerate(stops):
            _require_type(stop, str, f"stop_sequences.{index}", "a valid string")
    system = _system(body.get("system"))
    prompt = prompt_build(system=system, turns=_turns(body.get("messages")))
    prompt_check_size(prompt, param="messages")
    return MessagesCall(
        model=model,
        prompt=prompt,
        stream=bool(stream),
        metadata=metadata or None,
        ignored=[name for name in IGNORED if body.get(name) is not None],
    )
