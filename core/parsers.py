"""The API's one request parser: JSON, with nesting bounded so hostile bodies end in a 400."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rest_framework import negotiation, parsers
from rest_framework.exceptions import ParseError
from rest_framework.renderers import BaseRenderer

# Far deeper than any real request (metadata has its own, lower METADATA_MAX_DEPTH), far shallower
# than the interpreter's recursion limit that the serializers and json.dumps later walk into.
JSON_MAX_DEPTH = 64


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_inspect(value: Any) -> tuple[int, bool]:
    """(nesting depth, every string storable) of parsed JSON, in one pass without recursion.

    A scalar has depth 0, ``{}`` and ``[]`` depth 1. A string is storable unless it holds a NUL
    character or half of a surrogate pair: JSON may spell both (``\\u0000``, ``\\ud800``), but
    PostgreSQL text and jsonb refuse the first and UTF-8 cannot encode the second, so either would
    surface as a database error long after validation.
    """
    if isinstance(value, str):
        return 0, _storable(value)
    if not isinstance(value, dict | list):
        return 0, True
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            for key in item:
                if not _storable(key):
                    return deepest, False
            children = item.values()
        else:
            children = item
        for child in children:
            if type(child) is str:
                if not _storable(child):
                    return deepest, False
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return deepest, True


def json_depth(value: Any) -> int:
    return json_inspect(value)[0]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_loads_strict(body: bytes) -> Any:
    """The API's JSON rules without DRF: UTF-8, no NaN or Infinity, bounded nesting, storable strings.

    Raises ValueError for anything JSONParser would refuse.
    """
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deep") from None
    depth, storable = json_inspect(data)
    if depth > JSON_MAX_DEPTH or not storable:
        raise ValueError("nested too deep or holding unstorable strings")
    return data


class JSONParser(parsers.JSONParser):
    """DRF's strict JSON parser (no NaN or Infinity), refusing bodies nested past JSON_MAX_DEPTH
    and strings that cannot be stored (see json_inspect).

    ``json.loads`` raises RecursionError, not ValueError, on a body of many thousand ``[``: DRF would
    let it through as a 500.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {JSON_MAX_DEPTH} levels.") from None
        depth, storable = json_inspect(data)
        if depth > JSON_MAX_DEPTH:
            raise ParseError(f"JSON parse error - nested deeper than {JSON_MAX_DEPTH} levels.")
        if not storable:
            raise ParseError(
                "JSON parse error - strings may not contain NUL characters (\\u0000) or unpaired surrogates."
            )
        return data


class JsonNegotiation(negotiation.DefaultContentNegotiation):
    """A view that renders only JSON answers in JSON without reading the Accept header.

    The API has one representation; a client that asked for another still gets JSON (as it gets JSON
    errors) rather than a 406. Views with several renderers (the OpenAPI schema) negotiate as usual.
    """

    def select_renderer(
        self, request: Any, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> Any:
        renderers = list(renderers)
        if len(renderers) == 1 and not format_suffix:
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)
