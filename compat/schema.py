"""The /v1/ endpoints in the gateway's OpenAPI document (a drf-spectacular postprocessing hook).

The views are plain async Django views, so their operations are written here. Request bodies are
described no more strictly than compat's validation checks them, and every status a view can answer
is listed with its media type, so the fuzzing run (tests/test_fuzz.py) can hold the views to it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from compat import anthropic_request, openai_request

SECURITY: list[dict[str, list[str]]] = [{"BearerKey": []}, {"ApiKeyHeader": []}]
_ERROR = {"$ref": "#/components/schemas/V1Error"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    descriptions = {
        400: "Invalid request: the message names the field (OpenAI: also `param`).",
        401: "No API key, or an invalid, revoked or expired one.",
        403: "The key may not use this model or priority.",
        404: "Unknown model or path.",
        405: "Method not allowed on this path.",
        413: "Body, messages or prompt over the /v1/ limits.",
        414: "The URL is longer than the gateway accepts.",
        429: "The key's rate, concurrency or budget limit, or the upstream breaker open for a rate limit "
        "(with `retry-after`), or its job was refused.",
        431: "The request headers are larger than the gateway accepts.",
        500: "The job failed (see the message: the job failure type).",
        504: "The CLI timed out, or no answer within V1_MAX_WAIT_SECONDS.",
        529: "The queue is unavailable, or the upstream circuit breaker is open (overloaded_error).",
    }
    out = {str(status): _json(descriptions[status], _ERROR) for status in statuses}
    for status in (429, 529):
        if str(status) in out:
            out[str(status)]["headers"] = {"retry-after": {"schema": {"type": "string"}}}
    return out


def _content_schema(block_types: list[str]) -> dict[str, Any]:
    return {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"type": {"type": "string", "enum": block_types}},
                    "required": ["type"],
                },
            },
        ]
    }


def _model() -> dict[str, Any]:
    return {"type": "string", "enum": list(settings.V1_MODELS)} if settings.V1_MODELS else {"type": "string"}


def _messages_array() -> dict[str, Any]:
    limit = settings.V1_MAX_MESSAGES
    return {"type": "array", "minItems": 1, "description": f"At most V1_MAX_MESSAGES ({limit}): a 413 above."}


def _messages_request() -> dict[str, Any]:
    loose: dict[str, Any] = {name: {} for name in anthropic_request.IGNORED}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "max_tokens", "messages"],
        "properties": {
            **loose,
            "model": _model(),
            "max_tokens": {"type": "integer", "minimum": 1},
            "messages": {
                **_messages_array(),
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"type": "string", "enum": ["user", "assistant"]},
                        "content": _content_schema(["text", "image", "thinking", "redacted_thinking"]),
                    },
                },
            },
            "system": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["type", "text"],
                            "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}},
                        },
                    },
                ]
            },
            "stream": {"type": "boolean"},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"user_id": {"type": ["string", "null"], "maxLength": 256}},
            },
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "top_k": {"type": "integer", "minimum": 0},
            "stop_sequences": {"type": "array", "items": {"type": "string"}},
            "tools": {"description": "Refused (400) when not empty: client tools are not supported."},
            "tool_choice": {"description": "Refused (400) when given."},
        },
    }


def _chat_request() -> dict[str, Any]:
    loose: dict[str, Any] = {name: {} for name in openai_request.IGNORED}
    number = {"type": "number"}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "messages"],
        "properties": {
            **loose,
            "model": _model(),
            "messages": {
                **_messages_array(),
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {
                        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                        "content": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "object", "required": ["type"]}},
                                {"type": "null"},
                            ]
                        },
                    },
                },
            },
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {
                "type": ["object", "null"],
                "properties": {"include_usage": {"type": "boolean"}},
            },
            "user": {"type": ["string", "null"]},
            "metadata": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "string"},
                "maxProperties": 16,
            },
            "temperature": {**number, "minimum": 0, "maximum": 2},
            "top_p": {**number, "minimum": 0, "maximum": 1},
            "max_tokens": {"type": ["integer", "null"], "minimum": 1},
            "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
            **{
                name: {"description": "Refused (400) unless absent or harmless: see the README."}
                for name in openai_request.REFUSED
            },
        },
    }


_DESCRIPTIONS = {
    "type": "The object's type (Anthropic's `error`, `message`, `model`).",
    "error": "The error: its type, a message naming the field, OpenAI's param and code.",
    "message": "What went wrong; a validation error names the field first.",
    "param": "OpenAI: the parameter at fault, or null.",
    "code": "OpenAI: a code (`invalid_api_key`, `model_not_found`, the job failure type, ...) or null.",
    "id": "The object's id.",
    "role": "Always `assistant`.",
    "model": "The model asked for.",
    "content": "The answer: one text block.",
    "stop_reason": "Why the model stopped, as the CLI reported it.",
    "stop_sequence": "Always null (stop_sequences are not honoured).",
    "usage": "Tokens the CLI reported: input, output, prompt-cache reads and writes.",
    "object": "The object's kind (OpenAI's `chat.completion`, `model`, `list`).",
    "created": "Unix time the object was made.",
    "choices": "One choice: the assistant message and its finish_reason.",
    "owned_by": "Always `anthropic`.",
    "display_name": "A readable name derived from the id.",
    "created_at": "RFC 3339 time the gateway lists for the model.",
    "data": "The models, in V1_MODELS order.",
    "has_more": "Whether another page follows (Anthropic's pagination).",
    "first_id": "The first id on the page.",
    "last_id": "The last id on the page (after_id for the next page).",
}


def _described(components: dict[str, Any]) -> dict[str, Any]:
    for component in components.values():
        for name, prop in component.get("properties", {}).items():
            prop.setdefault("description", _DESCRIPTIONS[name])
        for name, prop in component.get("properties", {}).get("error", {}).get("properties", {}).items():
            prop.setdefault("description", _DESCRIPTIONS[name])
    return components


def _components() -> dict[str, Any]:
    return _described(_raw_components())


def _raw_components() -> dict[str, Any]:
    return {
        "V1Error": {
            "type": "object",
            "description": "Anthropic's error shape on /v1/messages, OpenAI's on /v1/chat/completions, "
            "both at once on /v1/models and unknown paths.",
            "required": ["error"],
            "properties": {
                "type": {"type": "string", "enum": ["error"]},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {
                        "type": {"type": "string"},
                        "message": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                },
            },
        },
        "V1Message": {
            "type": "object",
            "required": ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"],
            "properties": {
                "id": {"type": "string", "pattern": "^msg_"},
                "type": {"enum": ["message"]},
                "role": {"enum": ["assistant"]},
                "model": {"type": "string"},
                "content": {"type": "array", "items": {"type": "object", "required": ["type", "text"]}},
                "stop_reason": {"type": "string"},
                "stop_sequence": {"type": ["string", "null"]},
                "usage": {"type": "object", "required": ["input_tokens", "output_tokens"]},
            },
        },
        "V1ChatCompletion": {
            "type": "object",
            "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string", "pattern": "^chatcmpl-"},
                "object": {"enum": ["chat.completion"]},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "minItems": 1, "maxItems": 1},
                "usage": {
                    "type": "object",
                    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                },
            },
        },
        "V1Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by", "type", "display_name", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "object": {"enum": ["model"]},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
                "type": {"enum": ["model"]},
                "display_name": {"type": "string"},
                "created_at": {"type": "string"},
            },
        },
        "V1ModelList": {
            "type": "object",
            "required": ["object", "data", "has_more", "first_id", "last_id"],
            "properties": {
                "object": {"enum": ["list"]},
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/V1Model"}},
                "has_more": {"type": "boolean"},
                "first_id": {"type": ["string", "null"]},
                "last_id": {"type": ["string", "null"]},
            },
        },
    }


def _post(operation_id: str, summary: str, request: dict[str, Any], reply: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["v1"],
            "security": SECURITY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "responses": {
                "200": {
                    "description": "The answer; with `stream: true`, server-sent events.",
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{reply}"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors(400, 401, 403, 404, 405, 413, 414, 429, 431, 500, 504, 529),
            },
        }
    }


def _oas30(node: Any) -> Any:
    """OpenAPI 3.0's spelling (the document's version) of ``"type": [X, "null"]`` and ``"type": "null"``."""
    if isinstance(node, list):
        return [_oas30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _oas30(value) for key, value in node.items()}
    kind = out.get("type")
    if isinstance(kind, list):
        others = [k for k in kind if k != "null"]
        out["type"] = others[0]
        out["nullable"] = True
    elif kind == "null":
        del out["type"]
        out.update(nullable=True, enum=[None])
    return out


def add_v1_paths(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """POSTPROCESSING_HOOK: ``/v1/messages``, ``/v1/chat/completions`` and ``/v1/models``."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(_oas30(_components()))
    paths: dict[str, Any] = {}
    paths["/v1/messages"] = _post(
        "v1_messages_create", "Anthropic Messages API: create a message", _messages_request(), "V1Message"
    )
    paths["/v1/chat/completions"] = _post(
        "v1_chat_completions_create", "OpenAI Chat Completions API", _chat_request(), "V1ChatCompletion"
    )
    paths["/v1/models"] = {
        "get": {
            "operationId": "v1_models_list",
            "summary": "The models the gateway offers, in a list both SDKs read",
            "tags": ["v1"],
            "security": SECURITY,
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                {"name": "after_id", "in": "query", "schema": {"type": "string"}},
                {"name": "before_id", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json("The models.", {"$ref": "#/components/schemas/V1ModelList"}),
                **_errors(400, 401, 405, 414, 431),
            },
        }
    }
    paths["/v1/models/{model_id}"] = {
        "get": {
            "operationId": "v1_models_retrieve",
            "summary": "One model",
            "tags": ["v1"],
            "security": SECURITY,
            "parameters": [
                {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": _json("The model.", {"$ref": "#/components/schemas/V1Model"}),
                **_errors(401, 404, 405, 414, 431),
            },
        }
    }
    result.setdefault("paths", {}).update(_oas30(paths))
    return result
