"""The admin as operators use it: headless Chromium (Debian's ``chromium``) driven by Playwright,
against the real gunicorn server, with a real rq worker and the real CLI where a job runs.

Screenshots of each step go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.models import User

from core.redis import redis_client
from queries import services
from queries.models import Job
from routing.models import IntentRule
from tests.support.browser import PASSWORD, log_in
from tests.support.factories import failed_job
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_logs_in_and_reads_the_dashboard(page, operator_login):
    failure = failed_job(error_type="cli_error", error_message="API Error: 400 bad request")
    services.query_submit(api_key=None, query="What is 2+2?")  # one waiting job

    log_in(page)
    page.wait_for_selector("#gateway-dashboard")
    assert page.inner_text("#gw-queues tr[data-queue=default] [data-figure=queued]") == "1"
    assert page.inner_text("[data-figure=workers-alive]") == "0"
    assert page.locator("#gw-jobs-per-hour svg rect[data-series=failed]").count() == 1
    page.shot("dashboard")

    # Styles come from the project's own static files; nothing is fetched from anywhere else.
    css = page.request.get("/static/gateway/admin.css")
    assert css.status == 200 and ".gw-cards" in css.text()
    assert page.foreign_requests == []

    page.click(f"#gw-last-failures a[href*='{failure.id}']")
    page.wait_for_url(re.compile(rf"/admin/queries/job/{failure.id}/change/"))
    assert "API Error: 400 bad request" in page.content()
    page.shot("failed-job")

    page.goto("/admin/")
    page.click("text=Queues and workers (Django RQ)")
    page.wait_for_url(re.compile(r"/admin/rq/$"))
    assert "default" in page.content()
    page.shot("django-rq")


def test_an_invalid_intent_pattern_is_refused_with_the_reason(page, operator_login, seeded):
    rule = IntentRule.objects.get(name="web")
    before = rule.pattern
    log_in(page)
    page.goto("/admin/routing/intentrule/")
    page.click("#result_list a:text-is('web')")
    page.fill("#id_pattern", "(fetch|browse")
    page.click("input[name=_save]")
    page.wait_for_selector(".errornote")
    error = page.inner_text(".field-pattern .errorlist")
    assert "missing )" in error.lower() or "invalid" in error.lower(), error
    page.shot("bad-regex-refused")
    rule.refresh_from_db()
    assert rule.pattern == before

    page.fill("#id_pattern", r"\b(fetch|browse)\b")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")
    rule.refresh_from_db()
    assert rule.pattern == r"\b(fetch|browse)\b"
    page.shot("good-regex-saved")


def test_an_operator_retries_a_failed_job_and_sees_it_complete(page, operator_login, worker_process):
    worker_process()
    old = failed_job(
        query="What is 2+2?", hash=services.query_hash(normalized="what is 2+2?", model=None, servers=[])
    )

    log_in(page)
    page.goto("/admin/queries/job/?state__exact=failed")
    page.check(f"input[name=_selected_action][value='{old.id}']")
    page.select_option("select[name=action]", "retry")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist .success")
    assert f"Retried 1 job(s): {old.id} →" in page.inner_text(".messagelist")
    page.shot("retry-requested")

    retry = Job.objects.get(retry_of=old)
    page.goto(f"/admin/queries/job/{old.id}/change/")
    page.click(f".field-retries_links a[href*='{retry.id}']")

    def completed() -> bool:
        page.reload()
        return "Completed" in page.inner_text(".field-state")

    wait_for(completed, timeout=60, interval=0.5, message="the retry to complete")
    assert page.inner_text(".field-response .readonly").strip() == "4"
    assert page.locator(f".field-retry_of_link a[href*='{old.id}']").count() == 1
    page.shot("retry-completed")


def test_purging_the_cache_asks_for_confirmation_and_spares_other_keys(page, operator_login):
    redis = redis_client()
    for i in range(3):
        redis.set(f"claude:{i:064x}", json.dumps({"jobId": "x", "result": {}}))
    redis.set("dedup:in-flight", "job")
    redis.set("rq:queue:default-like", "x")

    log_in(page)
    page.goto("/admin/cache/")
    assert page.inner_text("#cache-entries") == "3"
    page.shot("cache-page")

    page.click("#purge-all-link")
    page.wait_for_selector("#confirm-purge")
    assert page.inner_text("#purge-count") == "3"
    assert len(list(redis.scan_iter(match="claude:*"))) == 3  # nothing happens before confirming
    page.shot("purge-confirmation")

    page.click("#confirm-purge")
    page.wait_for_selector(".messagelist .success")
    assert "Purged all cached answers: 3 entries deleted." in page.inner_text(".messagelist")
    assert page.inner_text("#cache-entries") == "0"
    assert list(redis.scan_iter(match="claude:*")) == []
    assert redis.get("dedup:in-flight") == b"job" and redis.get("rq:queue:default-like") == b"x"
    page.shot("purged")


ADMIN_PAGES = [
    "/admin/",
    "/admin/cache/",
    "/admin/cache/purge-all/",
    "/admin/queries/job/",
    "/admin/queries/apikey/add/",
    "/admin/routing/intentrule/",
    "/admin/rq/",
    "/admin/rq/queues/0/",
    "/admin/rq/workers/0/",
    "/admin/django_rq/dashboard/",
]


def test_a_user_who_is_not_staff_reaches_none_of_it(page, db):
    User.objects.create_user("visitor", password=PASSWORD)
    log_in(page, "visitor")
    page.wait_for_selector(".errornote")
    assert "staff account" in page.inner_text(".errornote")
    page.shot("non-staff-login-refused")

    for url in ADMIN_PAGES:
        page.goto(url)
        assert "/admin/login/" in page.url, url
        assert page.locator("#gateway-dashboard").count() == 0
    stats = page.request.get("/admin/rq/stats.json")
    assert stats.status == 401
    page.shot("non-staff-sent-to-login")
