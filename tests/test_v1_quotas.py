"""The key's quotas on /v1/: refusals in each API's shape, with retry-after (Django's test client)."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from queries.models import ApiKey

# The views do their ORM work on web threads (core.asgi.in_web_thread): committed rows only.
pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}


def post(path: str, body: dict, key: str) -> tuple[int, dict, dict]:
    response = Client().post(path, data=json.dumps(body), content_type="application/json", HTTP_X_API_KEY=key)
    return response.status_code, json.loads(response.content), dict(response.headers)


def test_the_rate_limit_is_a_429_with_retry_after_in_each_shape(api_key, settings):
    # No worker runs here: an admitted call gives up on its queued job at once, with its 504.
    settings.V1_MAX_WAIT_SECONDS, settings.V1_PING_SECONDS = 0.1, 0.05
    key, secret = api_key
    ApiKey.objects.filter(pk=key.pk).update(rate_limit_per_minute=1)
    first, body, _ = post("/v1/chat/completions", {**CHAT, "user": "x"}, secret)
    assert first == 504 and body["error"]["type"] == "timeout_error"
    status, body, headers = post("/v1/messages", MESSAGES, secret)
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": body["error"]["message"]},
    }
    status, body, headers = post("/v1/chat/completions", CHAT, secret)
    assert status == 429 and headers["Retry-After"]
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded"


def test_a_model_the_key_may_not_use_is_a_403(api_key):
    key, secret = api_key
    ApiKey.objects.filter(pk=key.pk).update(allowed_models=["claude-haiku-4-5"])
    status, body, _ = post("/v1/messages", MESSAGES, secret)
    assert status == 403 and body["error"]["type"] == "permission_error"


def test_the_request_id_header_names_the_request(api_key):
    status, body, headers = post("/v1/messages", {**MESSAGES, "max_tokens": 0}, api_key[1])
    assert status == 400 and headers["request-id"] == headers["X-Request-ID"]
