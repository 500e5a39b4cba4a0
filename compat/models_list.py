"""``GET /v1/models``: the models the gateway offers (V1_MODELS), in one list both SDKs parse.

Each entry carries Anthropic's fields (``type``, ``id``, ``display_name``, ``created_at``) and
OpenAI's (``id``, ``object``, ``created``, ``owned_by``); the page has Anthropic's ``has_more``,
``first_id``, ``last_id`` and OpenAI's ``object: list``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from compat.errors import ApiError, invalid

# The date the gateway lists for every model: it does not know when Anthropic released them.
LISTED_AT = datetime(2025, 1, 1, tzinfo=UTC)
LIST_LIMIT_MAX = 1000


def display_name(model_id: str) -> str:
    """``claude-sonnet-4-5`` as ``Claude Sonnet 4.5``."""
    words = model_id.split("-")
    out: list[str] = []
    for word in words:
        if out and re.fullmatch(r"\d{1,2}", word) and re.fullmatch(r"[\d.]+", out[-1]):
            out[-1] += "." + word
        elif re.fullmatch(r"\d{8}", word):
            continue
        else:
            out.append(word.capitalize() if not word[:1].isdigit() else word)
    return " ".join(out)


def model_entry(model_id: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": display_name(model_id),
        "created_at": LISTED_AT.isoformat().replace("+00:00", "Z"),
        "object": "model",
        "created": int(LISTED_AT.timestamp()),
        "owned_by": "anthropic",
    }


def model_check(model: str, *, param: str = "model") -> None:
    """404 ``not_found_error`` for a model the gateway does not offer, as the real APIs answer."""
    if settings.V1_MODELS and model not in settings.V1_MODELS:
        raise ApiError(404, f"{param}: {model}", param=param, code="model_not_found")


def models_page(query: dict[str, str]) -> dict[str, Any]:
    """One page of the list: Anthropic's ``limit`` (default 20), ``after_id`` and ``before_id`` apply.

    OpenAI's SDK reads ``data`` alone: keep V1_MODELS within 20 entries or it sees the first page only.
    """
    ids = list(settings.V1_MODELS)
    raw_limit = query.get("limit")
    limit = 20 if raw_limit is None else _limit(raw_limit)
    if query.get("after_id"):
        after = query["after_id"]
        ids = ids[ids.index(after) + 1 :] if after in ids else []
    if query.get("before_id"):
        before = query["before_id"]
        ids = ids[: ids.index(before)] if before in ids else []
    page = ids[:limit]
    data = [model_entry(model_id) for model_id in page]
    return {
        "object": "list",
        "data": data,
        "has_more": len(page) < len(ids),
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }


def _limit(raw: str) -> int:
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("limit: Input should be a valid integer", param="limit") from None
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise invalid(f"limit: Input should be between 1 and {LIST_LIMIT_MAX}", param="limit")
    return limit


def model_get(model_id: str) -> dict[str, Any]:
    if model_id not in settings.V1_MODELS:
        raise ApiError(404, f"model: {model_id}", param="model", code="model_not_found")
    return model_entry(model_id)
