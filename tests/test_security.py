"""Hostile input, the error shape of every refusal, tenant isolation, the admin, production settings."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.core.exceptions import PermissionDenied
from django.test import Client
from rest_framework.test import APIClient

from core import admin_login
from queries import services
from queries.models import ApiKey, Job
from tests.support import REPO
from tests.support.pipeline import run_queued_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def assert_json_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, getattr(response, "content", response)
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}
    assert body["error"]["type"] == error_type and body["error"]["message"]
    assert "Traceback" not in json.dumps(body)
    return body["error"]


def post(client, body, **kwargs):
    return client.post("/api/query", body, format="json", **kwargs)


# --- hostile bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000,
        '{"query": "x", "metadata": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}",
        '{"query": "x", "metadata": ' + "[" * 70 + "]" * 70 + "}",
    ],
    ids=["deep-array", "deep-metadata-5000", "deep-70"],
)
def test_deeply_nested_json_is_a_400_not_a_crash(client, raw):
    error = assert_json_error(
        client.post("/api/query", raw, content_type="application/json"), 400, "invalid_request_error"
    )
    assert "nested deeper" in error["message"]
    assert Job.objects.count() == 0


def test_metadata_deeper_than_the_limit_is_refused(client, settings):
    settings.METADATA_MAX_DEPTH = 3
    assert post(client, {"query": "x", "metadata": {"a": {"b": {"c": 1}}}}).status_code == 202
    error = assert_json_error(
        post(client, {"query": "y", "metadata": {"a": {"b": {"c": {"d": 1}}}}}), 400, "invalid_request_error"
    )
    assert "metadata" in error["details"]["fields"] and "limit is 3" in error["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_numbers_are_refused(client, literal):
    raw = '{"query": "x", "metadata": {"n": ' + literal + "}}"
    response = client.post("/api/query", raw, content_type="application/json")
    assert_json_error(response, 400, "invalid_request_error")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"],
)
def test_only_json_bodies_are_accepted(client, content_type):
    response = client.post("/api/query", "query=x", content_type=content_type)
    assert_json_error(response, 415, "invalid_request_error")


@pytest.mark.parametrize(
    "raw",
    [
        '{"query": "nul \\u0000 inside"}',
        '{"query": "x", "metadata": {"k": "\\u0000"}}',
        '{"query": "x", "metadata": {"\\u0000": 1}}',
        '{"query": "lone \\ud800 surrogate"}',
        '{"query": "x", "metadata": {"a": ["\\udfff"]}}',
    ],
)
def test_strings_the_database_cannot_store_are_a_400(client, raw):
    error = assert_json_error(
        client.post("/api/query", raw, content_type="application/json"), 400, "invalid_request_error"
    )
    assert "NUL" in error["message"]
    assert Job.objects.count() == 0


def test_astral_characters_are_fine(client):
    response = client.post("/api/query", '{"query": "emoji \\ud83d\\ude00"}', content_type="application/json")
    assert response.status_code == 202


def test_invalid_utf8_is_a_400(client):
    response = client.post("/api/query", b'{"query": "\xff\xfe"}', content_type="application/json")
    assert_json_error(response, 400, "invalid_request_error")


def test_an_absurdly_long_key_is_401_without_hashing_it():
    response = post(APIClient(), {"query": "x"}, HTTP_AUTHORIZATION="Bearer " + "k" * 5000)
    assert_json_error(response, 401, "authentication_error")


# --- absurd URLs and headers (Django) --------------------------------------------------------------


def test_a_url_over_the_limit_is_414(client, settings):
    settings.URL_MAX_CHARS = 300
    error = assert_json_error(client.get("/api/query/" + "a" * 400), 414, "request_too_large")
    assert "300" in error["message"]
    assert client.get("/api/query/" + "a" * 100).status_code == 404


def test_headers_over_the_limit_are_431(client, settings):
    settings.HEADERS_MAX_BYTES = 2048
    response = client.get("/api/query/x", HTTP_X_PADDING="p" * 3000)
    assert_json_error(response, 431, "request_too_large")


# --- Django's own error pages on API paths are JSON ------------------------------------------------


def test_bad_host_is_a_json_400():
    response = Client(HTTP_HOST="evil.example").get("/api/query/x")
    assert_json_error(response, 400, "invalid_request_error")


def test_unknown_api_path_is_a_json_404(client):
    assert_json_error(client.get("/api/nothing"), 404, "not_found_error")
    assert_json_error(client.get("/v1/whatever"), 404, "not_found_error")


def test_wrong_method_on_plain_django_views_is_a_json_405():
    response = Client().post("/health")
    error = assert_json_error(response, 405, "invalid_request_error")
    assert response["Allow"] == "GET" and error["message"]
    assert_json_error(APIClient().put("/api/query/x"), 401, "authentication_error")


def test_django_level_403_and_500_are_json(client, monkeypatch):
    def denied() -> str:
        raise PermissionDenied

    monkeypatch.setattr(admin_login, "_login_path", denied)
    assert_json_error(post(client, {"query": "x"}), 403, "permission_error")

    def broken() -> str:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(admin_login, "_login_path", broken)
    quiet = APIClient(raise_request_exception=False)
    quiet.credentials(**client._credentials)
    error = assert_json_error(post(quiet, {"query": "x"}), 500, "api_error")
    assert "secret internals" not in error["message"]


def test_an_error_inside_the_api_is_a_json_500_without_internals(client, monkeypatch):
    def boom(**kwargs):
        raise RuntimeError("password=hunter2")

    monkeypatch.setattr(services, "query_submit", boom)
    response = post(client, {"query": "x"})
    error = assert_json_error(response, 500, "api_error")
    assert "hunter2" not in response.content.decode() and error["details"] == {}


# --- the same, through gunicorn ---------------------------------------------------------------------


def raw_http(url: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


@pytest.mark.e2e
def test_the_server_answers_every_refusal_as_json(web_server, api_key):
    auth = {"Authorization": f"Bearer {api_key[1]}"}
    cases = [
        # Django's limits (URL_MAX_CHARS, HEADERS_MAX_BYTES, REQUEST_MAX_BYTES)
        (requests.get(f"{web_server}/api/query/{'a' * 3000}", headers=auth, timeout=10), 414),
        (
            requests.get(
                f"{web_server}/api/query/x", headers={**auth, **{f"X-Pad{i}": "p" * 7000 for i in range(3)}}
            ),
            431,
        ),
        (
            requests.post(f"{web_server}/api/query", data=b"x" * (2 * 1024 * 1024), headers=auth, timeout=30),
            413,
        ),
        (
            requests.post(
                f"{web_server}/api/query", data="query=x", headers={**auth, "Content-Type": "text/plain"}
            ),
            415,
        ),
        (requests.post(f"{web_server}/health", timeout=10), 405),
        # gunicorn's own ceilings
        (requests.get(f"{web_server}/api/query/{'a' * 9000}", headers=auth, timeout=10), 414),
        (requests.get(f"{web_server}/api/query/x", headers={**auth, "X-Pad": "p" * 9000}, timeout=10), 431),
        (
            requests.get(
                f"{web_server}/api/query/x", headers={f"X-H{i}": "1" for i in range(150)}, timeout=10
            ),
            431,
        ),
    ]
    for response, status in cases:
        assert response.status_code == status, (status, response.text[:200])
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json()
        assert body["error"]["type"] in ("request_too_large", "invalid_request_error")
        assert body["error"]["message"] and isinstance(body["error"]["details"], dict)
    status, headers, body = raw_http(web_server, b"GARBAGE\r\n\r\n")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


# --- isolation -------------------------------------------------------------------------------------


def key_client() -> tuple[ApiKey, APIClient]:
    row, key = services.api_key_create(name="tenant")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return row, client


def test_by_default_keys_share_neither_cached_answers_nor_in_flight_jobs(fake_claude, settings, redis_db):
    assert settings.CACHE_SCOPE == "key"
    _, tenant_a = key_client()
    _, tenant_b = key_client()
    a = post(tenant_a, {"query": "What does our database say?"}).json()
    b = post(tenant_b, {"query": "what does our database say?"}).json()
    assert a["jobId"] != b["jobId"] and "deduplicated" not in b
    run_queued_jobs()
    again_b = post(tenant_b, {"query": "What does our database say?"}).json()
    assert again_b["cached"] is True and again_b["jobId"] == b["jobId"]
    assert tenant_a.get(f"/api/query/{b['jobId']}").status_code == 404
    assert tenant_b.get(f"/api/query/{a['jobId']}").status_code == 404


def test_global_scope_shares_answers_across_keys(fake_claude, settings, redis_db):
    settings.CACHE_SCOPE = "global"
    _, tenant_a = key_client()
    _, tenant_b = key_client()
    a = post(tenant_a, {"query": "Shared fact"}).json()
    run_queued_jobs()
    b = post(tenant_b, {"query": "shared fact"}).json()
    assert b["cached"] is True and b["jobId"] == a["jobId"]
    # Receiving the cached answer makes that job one of b's own.
    assert tenant_b.get(f"/api/query/{a['jobId']}").status_code == 200


def test_a_key_cannot_see_another_keys_job_by_guessing_its_id(fake_claude, redis_db):
    _, owner = key_client()
    _, stranger = key_client()
    job_id = post(owner, {"query": "private"}).json()["jobId"]
    run_queued_jobs()
    error = assert_json_error(stranger.get(f"/api/query/{job_id}"), 404, "not_found_error")
    assert "private" not in json.dumps(error)
    assert owner.get(f"/api/query/{job_id}").json()["state"] == "completed"


# --- the admin -------------------------------------------------------------------------------------


ADMIN_PAGES = [
    "/admin/",
    "/admin/queries/job/",
    "/admin/queries/apikey/",
    "/admin/rq/",
    "/admin/rq/queues/0/",
]


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_admin_and_queue_pages_are_staff_only(path, redis_db):
    anonymous = Client().get(path)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]

    User.objects.create_user("visitor", password="a long passphrase 1")
    member = Client()
    member.login(username="visitor", password="a long passphrase 1")
    response = member.get(path)
    assert response.status_code in (302, 403)
    if response.status_code == 302:
        assert "/admin/login/" in response["Location"]

    User.objects.create_user("operator", password="a long passphrase 2", is_staff=True, is_superuser=True)
    staff = Client()
    staff.login(username="operator", password="a long passphrase 2")
    assert staff.get(path).status_code == 200


def login(client: Client, username: str, password: str, address: str = "203.0.113.7"):
    return client.post(
        "/admin/login/?next=/admin/", {"username": username, "password": password}, REMOTE_ADDR=address
    )


def test_admin_login_attempts_are_rate_limited(settings, redis_db):
    settings.ADMIN_LOGIN_MAX_FAILURES = 3
    User.objects.create_user("operator", password="the right passphrase", is_staff=True)
    client = Client()
    for _ in range(3):
        assert login(client, "operator", "wrong").status_code == 200  # the form again, with an error
    locked = login(client, "operator", "the right passphrase")
    assert (
        locked.status_code == 429 and 0 < int(locked["Retry-After"]) <= settings.ADMIN_LOGIN_LOCKOUT_SECONDS
    )
    # The username stays locked from another address, and the address for another username.
    assert login(Client(), "operator", "the right passphrase", address="198.51.100.1").status_code == 429
    assert login(Client(), "someone-else", "x").status_code == 429
    # Another address and username are unaffected.
    User.objects.create_user("other", password="another passphrase", is_staff=True)
    assert login(Client(), "other", "another passphrase", address="198.51.100.2").status_code == 302


def test_a_successful_login_clears_its_usernames_count(settings, redis_db):
    settings.ADMIN_LOGIN_MAX_FAILURES = 3
    User.objects.create_user("operator", password="the right passphrase", is_staff=True)
    for _ in range(2):
        login(Client(), "operator", "wrong", address="198.51.100.9")
    assert login(Client(), "operator", "the right passphrase", address="198.51.100.10").status_code == 302
    for _ in range(2):
        assert login(Client(), "operator", "wrong", address="198.51.100.11").status_code == 200


# --- production settings ---------------------------------------------------------------------------

PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(60),
    "ALLOWED_HOSTS": "gateway.example.com",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_PRELOAD": "true",
    "TRUST_X_FORWARDED_PROTO": "true",
}


def check_deploy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "GATEWAY_VAR_DIR": str(tmp_path / "var"),
        "CLAUDE_WORKDIR": str(tmp_path / "workdir"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"),
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path):
    result = check_deploy(tmp_path, **PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_when_auth_is_off_or_https_settings_are_missing(tmp_path):
    result = check_deploy(tmp_path, **PRODUCTION_ENV, GATEWAY_REQUIRE_AUTH="false")
    assert result.returncode != 0 and "gateway.W001" in result.stderr
    insecure = check_deploy(tmp_path, DEBUG="false", SECRET_KEY=PRODUCTION_ENV["SECRET_KEY"])
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in insecure.stderr


def test_https_settings_take_effect(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    plain = client.get("/api/query/x")
    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    assert client.get("/health").status_code == 200  # probes stay on plain HTTP
    forwarded = client.get("/api/query/x", HTTP_X_FORWARDED_PROTO="https")
    assert forwarded.status_code == 404 and forwarded["Strict-Transport-Security"].startswith("max-age=3600")


# --- the OpenAPI description ------------------------------------------------------------------------


def test_schema_describes_every_endpoint_field_and_error():
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    operations = {(path, method): op for path, item in schema["paths"].items() for method, op in item.items()}
    assert set(operations) == {
        ("/api/query", "post"),
        ("/api/query/{job_id}", "get"),
        ("/api/query/{job_id}/stream", "get"),
        ("/health", "get"),
        ("/ready", "get"),
    }
    for (path, method), op in operations.items():
        assert op.get("summary") or op.get("description"), (path, method)
        for status, reply in op["responses"].items():
            assert reply["description"], (path, method, status)
    create = operations[("/api/query", "post")]["responses"]
    assert {"200", "202", "400", "401", "403", "413", "415", "429", "500", "503"} <= set(create)
    assert create["429"]["headers"]["Retry-After"]["required"] is True
    undescribed = [
        f"{name}.{field}"
        for name, component in schema["components"]["schemas"].items()
        for field, prop in component.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert undescribed == []
    request = schema["components"]["schemas"]["QueryCreateRequest"]
    assert request["additionalProperties"] is False and request["required"] == ["query"]
    assert {s for s in schema["components"]["securitySchemes"]} == {"BearerKey", "ApiKeyHeader"}


def test_docs_page_uses_local_static_files_only():
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html and "/api/schema/" in html
    assert "cdn" not in html.lower() and "https://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"drf_spectacular_sidecar/swagger-ui-dist/{asset}" in html
        assert finders.find(f"drf_spectacular_sidecar/swagger-ui-dist/{asset}")
