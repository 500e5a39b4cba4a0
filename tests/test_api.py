"""The public API's contract: validation, the error shape, authentication and visibility."""

import json

import pytest
from rest_framework.test import APIClient

from queries import services
from queries.models import ApiKey, Job, QueryRequest

pytestmark = pytest.mark.django_db(transaction=True)


def assert_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


def post(client: APIClient, body, **kwargs):
    return client.post("/api/query", body, format="json", **kwargs)


def test_new_query_is_queued_with_a_request_and_a_job(client, api_key):
    response = post(client, {"query": "What is 2+2?", "priority": "high", "metadata": {"ticket": 7}})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"requestId", "jobId", "status"}
    assert body["status"] == "queued"
    job = Job.objects.get(id=body["jobId"])
    assert job.state == Job.State.QUEUED and job.priority == "high" and job.normalized_query == "what is 2+2?"
    request = QueryRequest.objects.get(id=body["requestId"])
    assert request.job_id == job.id and request.api_key == api_key[0]
    assert request.outcome == "queued" and request.metadata == {"ticket": 7}


def test_new_job_is_put_on_its_priority_queue(client):
    import django_rq

    ids = {
        p: post(client, {"query": f"q {p}", "priority": p}).json()["jobId"] for p in ("high", "normal", "low")
    }
    assert django_rq.get_queue("high").job_ids == [ids["high"]]
    assert django_rq.get_queue("default").job_ids == [ids["normal"]]
    assert django_rq.get_queue("low").job_ids == [ids["low"]]
    rq_job = django_rq.get_queue("high").fetch_job(ids["high"])
    assert rq_job.args == (ids["high"],)  # only the id travels


def test_get_returns_the_contract_fields(client):
    job_id = post(client, {"query": "hello"}).json()["jobId"]
    response = client.get(f"/api/query/{job_id}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "jobId",
        "state",
        "progress",
        "priority",
        "createdAt",
        "startedAt",
        "finishedAt",
        "result",
        "error",
    }
    assert body["state"] == "queued" and body["progress"] == 0 and body["priority"] == "normal"
    assert body["result"] is None and body["error"] is None and body["createdAt"].endswith("Z")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "   \n\t "}, "query"),
        ({"query": 42}, "query"),
        ({"query": None}, "query"),
        ({"query": "x", "priority": "urgent"}, "priority"),
        ({"query": "x", "webhookUrl": "ftp://example.com/hook"}, "webhookUrl"),
        ({"query": "x", "webhookUrl": "not a url"}, "webhookUrl"),
        ({"query": "x", "webhookUrl": "http://127.0.0.1/hook"}, "webhookUrl"),
        ({"query": "x", "webhookUrl": "http://169.254.169.254/latest"}, "webhookUrl"),
        ({"query": "x", "webhookUrl": "https://example.com/" + "a" * 2048}, "webhookUrl"),
        ({"query": "x", "metadata": [1, 2]}, "metadata"),
        ({"query": "x", "metadata": {"blob": "x" * 17000}}, "metadata"),
        ({"query": "x", "noCache": "yes"}, "noCache"),
        ({"query": "x", "model": "--dangerously-skip-permissions"}, "model"),
        ({"query": "x", "model": "opus; rm -rf /"}, "model"),
    ],
)
def test_bad_fields_are_400_naming_the_field(client, body, field):
    error = assert_error(post(client, body), 400, "invalid_request_error")
    assert field in error["details"]["fields"]
    assert field in error["message"]
    assert Job.objects.count() == 0 and QueryRequest.objects.count() == 0


def test_oversized_query_is_refused(client, settings):
    settings.QUERY_MAX_CHARS = 10
    error = assert_error(post(client, {"query": "x" * 11}), 400, "invalid_request_error")
    assert "10 characters" in error["message"]


def test_unknown_fields_are_named(client):
    error = assert_error(
        post(client, {"query": "x", "webhook": "u", "prio": 1}), 400, "invalid_request_error"
    )
    assert "prio, webhook" in error["message"]


def test_body_must_be_an_object(client):
    assert_error(post(client, ["query"]), 400, "invalid_request_error")


def test_non_json_body_is_400(client):
    response = client.post("/api/query", "{not json", content_type="application/json")
    error = assert_error(response, 400, "invalid_request_error")
    assert "JSON" in error["message"]


def test_wrong_content_type_is_415(client):
    response = client.post("/api/query", "query=x", content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "invalid_request_error")


def test_body_over_the_limit_is_413_before_parsing(client, settings):
    settings.REQUEST_MAX_BYTES = 2048
    response = client.post("/api/query", json.dumps({"query": "x" * 5000}), content_type="application/json")
    error = assert_error(response, 413, "request_too_large")
    assert error["details"]["limitBytes"] == 2048


def test_missing_key_is_401():
    assert_error(APIClient().post("/api/query", {"query": "x"}, format="json"), 401, "authentication_error")


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_AUTHORIZATION": "Bearer cgw_wrong"},
        {"HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz"},
        {"HTTP_X_API_KEY": "cgw_wrong"},
    ],
)
def test_wrong_key_is_401(headers, redis_db):
    response = APIClient().post("/api/query", {"query": "x"}, format="json", **headers)
    assert_error(response, 401, "authentication_error")


def test_x_api_key_header_works(api_key):
    response = APIClient().post("/api/query", {"query": "x"}, format="json", HTTP_X_API_KEY=api_key[1])
    assert response.status_code == 202


def test_revoked_key_is_401(client, api_key):
    ApiKey.objects.filter(pk=api_key[0].pk).update(is_active=False)
    assert_error(post(client, {"query": "x"}), 401, "authentication_error")


def test_key_records_last_use(client, api_key):
    post(client, {"query": "x"})
    assert ApiKey.objects.get(pk=api_key[0].pk).last_used_at is not None


def test_keys_are_stored_only_as_hashes(api_key):
    row, key = api_key
    assert key.startswith("cgw_") and len(key) > 40
    assert row.key_hash == ApiKey.hash_key(key) and key not in (row.prefix, row.key_hash, row.name)


def test_a_key_sees_only_jobs_its_own_requests_point_to(client, settings):
    settings.CACHE_SCOPE = "global"  # keys share in-flight jobs only when the operator says so
    job_id = post(client, {"query": "mine"}).json()["jobId"]
    _, other_key = services.api_key_create(name="other")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {other_key}")
    assert_error(other.get(f"/api/query/{job_id}"), 404, "not_found_error")
    # Joining the same job through dedup makes it visible to the other key too.
    other_post = post(other, {"query": "MINE"})
    assert other_post.json()["jobId"] == job_id
    assert other.get(f"/api/query/{job_id}").status_code == 200


def test_unknown_and_malformed_job_ids_are_404(client):
    assert_error(client.get("/api/query/00000000-0000-0000-0000-000000000000"), 404, "not_found_error")
    assert_error(client.get("/api/query/not-a-uuid"), 404, "not_found_error")
    # Whatever was put in the path (a pasted key, say) is not echoed back.
    error = assert_error(client.get("/api/query/cgw_pasted_secret_key"), 404, "not_found_error")
    assert "cgw_pasted_secret_key" not in error["message"]


def test_wrong_method_is_405_json(client):
    assert_error(client.delete("/api/query"), 405, "invalid_request_error")


def test_unknown_path_is_json_404(client):
    assert_error(client.get("/api/nothing-here"), 404, "not_found_error")


def test_auth_can_be_switched_off_for_development(settings, redis_db):
    settings.GATEWAY_REQUIRE_AUTH = False
    anonymous = APIClient()
    job_id = anonymous.post("/api/query", {"query": "x"}, format="json").json()["jobId"]
    assert anonymous.get(f"/api/query/{job_id}").status_code == 200


def test_health_is_cheap_and_ok():
    response = APIClient().get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
