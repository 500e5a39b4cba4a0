"""Every admin page fits a 1366×768 window: nothing scrolls sideways, with rows as real traffic leaves.

Each page's screenshot is kept in ``test-artifacts/browser/`` (full page, at that width).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from queries import services
from queries.models import ApiKey, Job, QueryRequest
from tests.support.browser import contrast_ratio, log_in, sideways_scroll
from tests.support.factories import JobFactory, RequestFactory, failed_job
from webhooks.models import WebhookAttempt, WebhookDelivery

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG_QUERY = (
    "Summarise the attached quarterly report for the board, with the three largest risks first, "
    "then the revenue by region as a table, and keep it under two hundred words please"
)
LONG_URL = "https://hooks.internal-receiver.example.com/claude-gateway/v1/callbacks/tenant-4411/" + "x" * 90


def realistic_rows() -> dict[str, object]:
    """Keys, jobs in every state, requests and webhook deliveries with long texts, as traffic leaves."""
    now = timezone.now()
    keys = [
        services.api_key_create(
            name=f"{team} integration (production, eu-west)",
            limits={
                "expires_at": now + timedelta(days=90),
                "allowed_priorities": ["high", "normal"],
                "allowed_models": ["haiku", "sonnet"],
                "rate_limit_per_minute": 600,
                "max_concurrent_jobs": 20,
                "monthly_budget_usd": Decimal("2500.00"),
            },
        )[0]
        for team in ("Billing analytics", "Customer support assistant", "Search relevance team")
    ]
    ApiKey.objects.filter(pk=keys[0].pk).update(last_used_at=now)
    completed = JobFactory(
        query=LONG_QUERY,
        intent="filesystem",
        mcp_servers=["filesystem"],
        cost_usd=Decimal("0.123456"),
        duration_ms=12_345,
        started_at=now - timedelta(seconds=14),
        retry_of=failed_job(query=LONG_QUERY, error_type=Job.ErrorType.CLI_OUTPUT_INVALID),
    )
    failed = failed_job(
        query=LONG_QUERY,
        error_type=Job.ErrorType.CLI_OUTPUT_INVALID,
        error_message="The CLI printed something that is not its JSON result: " + "y" * 200,
    )
    JobFactory(state=Job.State.QUEUED, finished_at=None, progress=0, query=LONG_QUERY, priority="high")
    for hour in range(0, 24, 2):  # a day of CLI runs, for the run-time chart
        finished = now - timedelta(hours=hour, minutes=7)
        for seconds in (0.08, 0.1, 0.3 + hour / 10):
            JobFactory(started_at=finished - timedelta(seconds=seconds), finished_at=finished)
    for key, job in zip(keys, (completed, failed, completed), strict=True):
        request = RequestFactory(
            job=job,
            api_key=key,
            webhook_url=LONG_URL,
            outcome=QueryRequest.Outcome.QUEUED
            if key is keys[0] or job is failed
            else QueryRequest.Outcome.DEDUPLICATED,
        )
        delivery = WebhookDelivery.objects.create(
            request=request,
            url=LONG_URL,
            event=WebhookDelivery.Event.FAILED if job is failed else WebhookDelivery.Event.COMPLETED,
            body="{}",
            state=WebhookDelivery.State.PENDING,
            attempts=2,
            max_attempts=8,
            next_attempt_at=now + timedelta(minutes=5),
            last_status_code=503,
            last_error="HTTP 503 from the receiver: upstream connect error or disconnect/reset " * 3,
        )
        for number in (1, 2):
            WebhookAttempt.objects.create(
                delivery=delivery,
                number=number,
                url=LONG_URL,
                webhook_timestamp=int(now.timestamp()),
                started_at=now - timedelta(minutes=number),
                finished_at=now - timedelta(minutes=number) + timedelta(seconds=2),
                address="2001:db8:85a3::8a2e:370:7334",
                status_code=503,
                duration_ms=2013,
                error="HTTP 503 from the receiver: upstream connect error or disconnect/reset before headers",
                response_excerpt="<html><body>" + "z" * 300,
            )
    return {"key": keys[0], "job": completed, "failed": failed, "delivery": delivery}


def test_every_admin_page_fits_1366_pixels_without_scrolling_sideways(page, operator_login, seeded):
    rows = realistic_rows()
    pages = {
        "dashboard": "/admin/",
        "jobs": "/admin/queries/job/",
        "job": f"/admin/queries/job/{rows['job'].pk}/change/",
        "failed-job": f"/admin/queries/job/{rows['failed'].pk}/change/",
        "requests": "/admin/queries/queryrequest/",
        "request": f"/admin/queries/queryrequest/{QueryRequest.objects.first().pk}/change/",
        "api-keys": "/admin/queries/apikey/",
        "api-key": f"/admin/queries/apikey/{rows['key'].pk}/change/",
        "api-key-add": "/admin/queries/apikey/add/",
        "deliveries": "/admin/webhooks/webhookdelivery/",
        "delivery": f"/admin/webhooks/webhookdelivery/{rows['delivery'].pk}/change/",
        "attempts": "/admin/webhooks/webhookattempt/",
        "attempt": f"/admin/webhooks/webhookattempt/{rows['delivery'].attempt_rows.first().pk}/change/",
        "secrets": "/admin/webhooks/webhooksecret/",
        "intent-rules": "/admin/routing/intentrule/",
        "mcp-servers": "/admin/routing/mcpserver/",
        "cache": "/admin/cache/",
        "cache-purge-all": "/admin/cache/purge-all/",
        "django-rq": "/admin/rq/",
    }
    log_in(page)
    page.wait_for_selector("#gateway-dashboard")
    overflow = {}
    for name, url in pages.items():
        response = page.goto(url)
        assert response is not None and response.status == 200, (name, url)
        page.shot(f"1366-{name}")
        overflow[name] = sideways_scroll(page)
    assert {name: o for name, o in overflow.items() if o["document"] or o["boxes"]} == {}


def test_the_cache_pages_key_pattern_is_readable_on_its_header(page, operator_login):
    log_in(page)
    page.wait_for_selector("#gateway-dashboard")
    page.goto("/admin/cache/")
    assert page.inner_text(".module h2 code") == "claude:*"
    # WCAG AA for normal text: 4.5 to 1 (Django's grey code on the blue header: about 1.2).
    assert contrast_ratio(page, ".module h2 code") >= 4.5
    page.shot("cache-header")


def test_the_header_links_the_api_docs_instead_of_a_site_that_is_not_there(page, operator_login):
    log_in(page)
    page.wait_for_selector("#gateway-dashboard")
    assert page.locator("#user-tools a", has_text="View site").count() == 0
    page.click("#api-docs-link")
    page.wait_for_url("**/api/docs/")
    page.wait_for_selector(".swagger-ui")
    assert page.foreign_requests == []
    page.shot("api-docs")
