"""The admin's lists: records are never deleted there, times are shown to the second, no dead links."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from django.test import Client

from tests.support.factories import JobFactory, RequestFactory, backdate
from webhooks.models import WebhookAttempt, WebhookDelivery

pytestmark = pytest.mark.django_db

T0 = datetime(2030, 1, 7, 12, 30, 5, tzinfo=UTC)


@pytest.fixture
def records() -> dict[str, object]:
    job = JobFactory(finished_at=T0, started_at=T0)
    backdate(job, T0)
    request = RequestFactory(job=job, webhook_url="https://hooks.example.com/in")
    backdate(request, T0)
    delivery = WebhookDelivery.objects.create(
        request=request, url=request.webhook_url, event="query.completed", body="{}", max_attempts=8
    )
    attempt = WebhookAttempt.objects.create(
        delivery=delivery, number=1, url=delivery.url, webhook_timestamp=0, started_at=T0, status_code=200
    )
    return {"job": job, "queryrequest": request, "webhookdelivery": delivery, "webhookattempt": attempt}


RECORD_LISTS = {
    "job": "/admin/queries/job/",
    "queryrequest": "/admin/queries/queryrequest/",
    "webhookdelivery": "/admin/webhooks/webhookdelivery/",
    "webhookattempt": "/admin/webhooks/webhookattempt/",
}


@pytest.mark.parametrize("model", RECORD_LISTS)
def test_records_have_no_delete_action_or_page_even_for_a_superuser(admin_client: Client, records, model):
    listing = admin_client.get(RECORD_LISTS[model])
    assert listing.status_code == 200
    assert 'value="delete_selected"' not in listing.content.decode()
    row = records[model]
    assert admin_client.get(f"{RECORD_LISTS[model]}{row.pk}/delete/").status_code == 403
    detail = admin_client.get(f"{RECORD_LISTS[model]}{row.pk}/change/").content.decode()
    assert "deletelink" not in detail
    assert type(row).objects.filter(pk=row.pk).exists()


def test_the_explicit_record_actions_are_still_offered(admin_client: Client, records):
    jobs = admin_client.get(RECORD_LISTS["job"]).content.decode()
    for action in ("retry", "cancel", "purge_cache", "redeliver_webhooks"):
        assert f'value="{action}"' in jobs
    deliveries = admin_client.get(RECORD_LISTS["webhookdelivery"]).content.decode()
    assert 'value="redeliver_now"' in deliveries


@pytest.mark.parametrize("model", ["job", "queryrequest", "webhookattempt"])
def test_list_times_are_shown_to_the_second(admin_client: Client, records, model):
    html = admin_client.get(RECORD_LISTS[model]).content.decode()
    assert "7 Jan 2030, 12:30:05" in html


def test_detail_times_are_shown_to_the_second(admin_client: Client, records):
    job = records["job"]
    html = admin_client.get(f"/admin/queries/job/{job.pk}/change/").content.decode()
    assert re.search(r"field-created_at.*?7 Jan 2030, 12:30:05", html, re.S)


def test_the_header_links_the_api_docs_and_not_a_site_that_does_not_exist(admin_client: Client):
    html = admin_client.get("/admin/").content.decode()
    assert "View site" not in html
    assert 'href="/api/docs/"' in html
    assert admin_client.get("/api/docs/").status_code == 200
