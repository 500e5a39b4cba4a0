"""Conversation sessions in the pipeline: who may continue one, the keys of continued turns, the
admin pages and the purge command."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from core.errors import InvalidRequest, NotFound
from queries import services
from queries.models import Job, QueryRequest, Session
from queries.pool import descriptor_from_meta, job_meta
from queries.services.sessions import session_for_caller
from tests.support.factories import JobFactory, RequestFactory, SessionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_session(api_key) -> Session:
    job = JobFactory(query="Name a colour.", response="Blue.")
    RequestFactory(job=job, api_key=api_key[0])
    return SessionFactory(job=job, api_key=api_key[0])


def test_identical_concurrent_continuations_make_one_job_and_other_words_another(api_key, own_session):
    key = api_key[0]
    first = services.query_submit(api_key=key, query="Why?", session_id=own_session.cli_session_id)
    second = services.query_submit(api_key=key, query="Why?", session_id=own_session.cli_session_id)
    assert first.outcome == QueryRequest.Outcome.QUEUED
    assert second.outcome == QueryRequest.Outcome.DEDUPLICATED and second.job_id == first.job_id
    other = services.query_submit(api_key=key, query="Why not red?", session_id=own_session.cli_session_id)
    assert other.job_id != first.job_id
    job = Job.objects.get(id=first.job_id)
    assert job.session_parent == own_session and job.turn_number == 2 and job.session_mode == "resumed"
    assert job.lineage_prefix == own_session.lineage_hash


def test_why_in_two_conversations_is_two_questions(api_key, own_session):
    key = api_key[0]
    job = JobFactory(query="Name a fruit.", response="Pear.")
    RequestFactory(job=job, api_key=key)
    fruit = SessionFactory(job=job, api_key=key)
    a = services.query_submit(api_key=key, query="Why?", session_id=own_session.cli_session_id)
    b = services.query_submit(api_key=key, query="Why?", session_id=fruit.cli_session_id)
    plain = services.query_submit(api_key=key, query="Why?")
    assert len({a.job_id, b.job_id, plain.job_id}) == 3
    assert len(set(Job.objects.values_list("hash", flat=True).filter(query="Why?"))) == 3


def test_only_a_key_that_received_the_answer_may_continue_it(api_key, own_session):
    other, _ = services.api_key_create(name="B")
    with pytest.raises(NotFound):
        session_for_caller(session_id=own_session.cli_session_id, api_key=other)
    # B received the same answer (a shared cache entry, CACHE_SCOPE=global): it may continue it.
    RequestFactory(job=own_session.job, api_key=other, outcome=QueryRequest.Outcome.CACHED)
    assert session_for_caller(session_id=own_session.cli_session_id, api_key=other) == own_session


def test_an_expired_session_is_unknown(api_key, own_session):
    Session.objects.filter(id=own_session.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(NotFound):
        session_for_caller(session_id=own_session.cli_session_id, api_key=api_key[0])


def test_with_sessions_disabled_a_session_id_is_refused(settings, api_key, own_session):
    settings.SESSIONS_ENABLED = False
    with pytest.raises(InvalidRequest):
        services.query_submit(api_key=api_key[0], query="Why?", session_id=own_session.cli_session_id)


def test_the_api_answers_a_foreign_session_with_a_404_in_our_error_shape(client, own_session):
    other, other_key = services.api_key_create(name="B")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {other_key}")
    response = client.post(
        "/api/query", {"query": "Why?", "sessionId": own_session.cli_session_id}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert Job.objects.filter(query="Why?").count() == 0


def test_purge_sessions_deletes_the_expired_ones_or_all(own_session):
    old = SessionFactory(expires_at=timezone.now() - timedelta(minutes=1))
    call_command("purge_sessions")
    assert set(Session.objects.values_list("id", flat=True)) == {own_session.id}
    assert Job.objects.filter(id=old.job_id).exists()  # the record stays
    call_command("purge_sessions", "--all")
    assert not Session.objects.exists()


def test_the_admin_lists_sessions_with_their_turns_requests_and_jobs(admin_client, api_key, own_session):
    follow_up = JobFactory(
        query="Why?", response="The sky.", session_parent=own_session, session_mode="resumed"
    )
    RequestFactory(job=follow_up, api_key=api_key[0], api=QueryRequest.Api.ANTHROPIC)
    child = SessionFactory(job=follow_up, parent=own_session, turns=2, api_key=api_key[0])

    listing = admin_client.get(reverse("admin:queries_session_changelist"))
    assert listing.status_code == 200
    assert child.cli_session_id in listing.content.decode()

    page = admin_client.get(reverse("admin:queries_session_change", args=[child.pk])).content.decode()
    assert "Name a colour." in page and "Blue." in page and "The sky." in page
    assert reverse("admin:queries_job_change", args=[follow_up.id]) in page
    assert "queued via anthropic" in page and own_session.cli_session_id in page

    job_page = admin_client.get(reverse("admin:queries_job_change", args=[follow_up.id])).content.decode()
    assert own_session.cli_session_id in job_page and child.cli_session_id in job_page


def test_a_resumed_job_takes_no_warm_cli():
    assert descriptor_from_meta(job_meta(model=None, servers=[])) == (None, ())
    assert descriptor_from_meta(job_meta(model=None, servers=[], resume=True)) is None
