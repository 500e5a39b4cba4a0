"""``POST /v1/chat/completions`` bodies: validated as OpenAI does (``param`` names the field), and mapped.

``system`` and ``developer`` messages make the system prompt; ``user`` and ``assistant`` messages the
turns (consecutive ones of a role merged), the last of them the user's; ``image_url`` parts with
``data:`` URLs become image blocks. The same conversation maps to the same Prompt as through
``/v1/messages`` (compat.conversation).
"""

from __future__ import annotations

import math
import re
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
    turns_merge,
)
from compat.errors import invalid
from queries.prompts import Prompt
from queries.validation import model_problem

USED = ("model", "messages", "stream", "stream_options", "user", "metadata")
IGNORED = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "logit_bias",
    "parallel_tool_calls",
    "prediction",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning_effort",
    "safety_identifier",
    "service_tier",
    "store",
    "verbosity",
    "modalities",
    "moderation",
)
# Refused when given with a value the CLI cannot honour (see _refusals).
REFUSED = (
    "n",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "response_format",
    "audio",
    "web_search_options",
)
_DATA_URL = re.compile(r"data:(?P<media>[\w/+.-]+);base64,(?P<data>.*)", re.DOTALL)


@dataclass
class ChatCall:
    model: str
    prompt: Prompt
    stream: bool
    include_usage: bool
    metadata: dict[str, Any] | None
    ignored: list[str] = field(default_factory=list)


def _check(condition: bool, message: str, param: str) -> None:
    if not condition:
        raise invalid(message, param=param)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _refusals(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None:
        _check(
            isinstance(n, int) and not isinstance(n, bool), "Invalid type for 'n': expected an integer.", "n"
        )
        _check(n == 1, f"n={n} is not supported: the gateway returns one choice.", "n")
    for name in ("tools", "functions"):
        if body.get(name):
            raise invalid(f"'{name}': client tools are not supported by this gateway.", param=name)
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise invalid(f"'{name}': client tools are not supported by this gateway.", param=name)
    if body.get("logprobs") not in (None, False):
        raise invalid("'logprobs' is not supported by this gateway.", param="logprobs")
    if body.get("top_logprobs") is not None:
        raise invalid("'top_logprobs' is not supported by this gateway.", param="top_logprobs")
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        _check(
            kind == "text",
            f"response_format type {kind!r} is not supported: only 'text'.",
            "response_format",
        )
    for name in ("audio", "web_search_options"):
        if body.get(name) is not None:
            raise invalid(f"'{name}' is not supported by this gateway.", param=name)
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise invalid("'modalities': only ['text'] is supported.", param="modalities")


def _numbers(body: dict[str, Any]) -> None:
    for name, low, high in (
        ("temperature", 0, 2),
        ("top_p", 0, 1),
        ("frequency_penalty", -2, 2),
        ("presence_penalty", -2, 2),
    ):
        value = body.get(name)
        if value is None:
            continue
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"Invalid type for '{name}': expected a number.",
            name,
        )
        _check(
            math.isfinite(value) and low <= value <= high, f"'{name}' must be between {low} and {high}.", name
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        _check(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"Invalid '{name}': expected an integer of at least 1.",
            name,
        )
    stop = body.get("stop")
    if stop is not None:
        _check(
            _is_str(stop) or (isinstance(stop, list) and len(stop) <= 4 and all(map(_is_str, stop))),
            "Invalid 'stop': expected a string or a list of at most 4 strings.",
            "stop",
        )


def _text_of(content: Any, param: str) -> str:
    """The text of a system or developer message: a string or text parts."""
    if _is_str(content):
        return content
    _check(isinstance(content, list), f"Invalid type for '{param}': expected a string or an array.", param)
    parts = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        _check(
            isinstance(part, dict) and part.get("type") == "text",
            f"Invalid '{where}': expected a text part.",
            where,
        )
        _check(
            _is_str(part.get("text")), f"Invalid type for '{where}.text': expected a string.", f"{where}.text"
        )
        parts.append(part["text"])
    return "\n\n".join(parts)


def _image(part: dict[str, Any], where: str, budget: ImageBudget) -> dict[str, Any]:
    image_url = part.get("image_url")
    _check(
        isinstance(image_url, dict), f"Missing required parameter: '{where}.image_url'.", f"{where}.image_url"
    )
    url = image_url.get("url") if isinstance(image_url, dict) else None
    _check(
        _is_str(url),
        f"Invalid type for '{where}.image_url.url': expected a string.",
        f"{where}.image_url.url",
    )
    match = _DATA_URL.fullmatch(str(url))
    _check(
        match is not None,
        f"Invalid '{where}.image_url.url': only base64 data: URLs are supported by this gateway.",
        f"{where}.image_url.url",
    )
    assert match is not None
    return image_block(
        media_type=match["media"],
        data=match["data"],
        where=f"{where}.image_url.url",
        param=f"{where}.image_url.url",
        budget=budget,
    )


def _user_blocks(content: Any, param: str, budget: ImageBudget) -> list[dict[str, Any]]:
    if _is_str(content):
        return [text_block(content)]
    _check(isinstance(content, list), f"Invalid type for '{param}': expected a string or an array.", param)
    blocks = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        _check(isinstance(part, dict), f"Invalid type for '{where}': expected an object.", where)
        kind = part.get("type")
        if kind == "text":
            _check(
                _is_str(part.get("text")),
                f"Invalid type for '{where}.text': expected a string.",
                f"{where}.text",
            )
            blocks.append(text_block(part["text"]))
        elif kind == "image_url":
            blocks.append(_image(part, where, budget))
        else:
            raise invalid(
                f"Invalid value: {kind!r}. Supported values are: 'text' and 'image_url'.",
                param=f"{where}.type",
            )
    return blocks


def _assistant_blocks(message: dict[str, Any], param: str) -> list[dict[str, Any]]:
    if message.get("tool_calls") or message.get("function_call"):
        raise invalid("client tools are not supported by this gateway.", param=f"{param}.tool_calls")
    content = message.get("content")
    if content is None:
        return []
    if _is_str(content):
        return [text_block(content)]
    _check(
        isinstance(content, list),
        f"Invalid type for '{param}.content': expected a string or an array.",
        param,
    )
    blocks = []
    for index, part in enumerate(content):
        where = f"{param}.content[{index}]"
        _check(isinstance(part, dict), f"Invalid type for '{where}': expected an object.", where)
        if part.get("type") == "text" and _is_str(part.get("text")):
            blocks.append(text_block(part["text"]))
        elif part.get("type") == "refusal" and _is_str(part.get("refusal")):
            blocks.append(text_block(part["refusal"]))
        else:
            raise invalid(f"Invalid '{where}': expected a text or refusal part.", param=where)
    return blocks


def _conversation(messages: Any) -> tuple[str, list[Turn]]:
    _check(messages is not None, "Missing required parameter: 'messages'.", "messages")
    _check(isinstance(messages, list), "Invalid type for 'messages': expected an array.", "messages")
    _check(
        bool(messages),
        "Invalid 'messages': empty array. Expected an array with minimum length 1.",
        "messages",
    )
    messages_count_check(len(messages), message="'messages' has {count} messages; the limit is {limit}.")
    budget = ImageBudget()
    system: list[str] = []
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        _check(isinstance(message, dict), f"Invalid type for '{param}': expected an object.", param)
        role = message.get("role")
        if role in ("system", "developer"):
            _check(
                "content" in message, f"Missing required parameter: '{param}.content'.", f"{param}.content"
            )
            system.append(_text_of(message["content"], f"{param}.content"))
        elif role == "user":
            _check(
                "content" in message, f"Missing required parameter: '{param}.content'.", f"{param}.content"
            )
            turns.append(Turn("user", _user_blocks(message["content"], f"{param}.content", budget)))
        elif role == "assistant":
            turns.append(Turn("assistant", _assistant_blocks(message, param)))
        elif role in ("tool", "function"):
            raise invalid(
                f"'{role}' messages: client tools are not supported by this gateway.", param=f"{param}.role"
            )
        else:
            raise invalid(
                f"Invalid value: {role!r}. Supported values are: "
                "'system', 'developer', 'user' and 'assistant'.",
                param=f"{param}.role",
            )
    merged = turns_merge(turns)
    _check(
        bool(merged) and merged[-1].role == "user", "The last message must be a 'user' message.", "messages"
    )
    return "\n\n".join(system), merged


def chat_call_parse(body: Any) -> ChatCall:
    """The validated call, or ApiError with ``param`` naming the field."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    unknown = sorted(set(body) - set(USED) - set(IGNORED) - set(REFUSED))
    if unknown:
        raise invalid(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    _refusals(body)
    model = body.get("model")
    _check(model is not None, "Missing required parameter: 'model'.", "model")
    _check(_is_str(model) and bool(model), "Invalid type for 'model': expected a string.", "model")
    problem = model_problem(model)
    if problem:
        raise invalid(f"Invalid 'model': {problem}", param="model")
    stream = body.get("stream")
    _check(
        stream is None or isinstance(stream, bool), "Invalid type for 'stream': expected a boolean.", "stream"
    )
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        _check(
            isinstance(options, dict),
            "Invalid type for 'stream_options': expected an object.",
            "stream_options",
        )
        _check(
            bool(stream),
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
        value = options.get("include_usage")
        _check(
            value is None or isinstance(value, bool),
            "Invalid type for 'stream_options.include_usage': expected a boolean.",
            "stream_options.include_usage",
        )
        include_usage = bool(value)
    user = body.get("user")
    _check(user is None or _is_str(user), "Invalid type for 'user': expected a string.", "user")
    metadata = body.get("metadata")
    if metadata is not None:
        _check(
            isinstance(metadata, dict) and len(metadata) <= 16 and all(map(_is_str, metadata.values())),
            "Invalid 'metadata': expected an object of at most 16 string values.",
            "metadata",
        )
    _numbers(body)
    system, turns = _conversation(body.get("messages"))
    prompt = prompt_build(system=system, turns=turns)
    prompt_check_size(prompt, param="messages")
    recorded = {k: v for k, v in (("user", user), ("metadata", metadata)) if v}
    return ChatCall(
        model=str(model),
        prompt=prompt,
        stream=bool(stream),
        include_usage=include_usage,
        metadata=recorded or None,
        ignored=[name for name in IGNORED if body.get(name) is not None],
    )
