"""Rows in any state, at any time: keys, jobs and the requests that point to them (factory_boy)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from queries.models import ApiKey, Job, QueryRequest, Session


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """A key row without a usable secret (``services.api_key_create`` makes real ones)."""

    class Meta:
        model = ApiKey

    name = factory.Sequence(lambda n: f"key-{n}")
    prefix = factory.Sequence(lambda n: f"cgw_{n:08d}")
    key_hash = factory.Sequence(lambda n: f"{n:064x}")


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    hash = factory.Sequence(lambda n: f"{n:064x}")
    query = factory.Sequence(lambda n: f"What is {n}+{n}?")
    normalized_query = factory.LazyAttribute(lambda o: o.query.lower())
    state = Job.State.COMPLETED
    progress = 100
    response = "4"
    model = "claude-test"
    cost_usd = Decimal("0.001000")
    finished_at = factory.LazyFunction(timezone.now)


class RequestFactory(factory.django.DjangoModelFactory):
    """A caller's request; without ``webhook_url`` it asks for no delivery."""

    class Meta:
        model = QueryRequest

    job = factory.SubFactory(JobFactory)
    query = factory.LazyAttribute(lambda o: o.job.query)
    hash = factory.LazyAttribute(lambda o: o.job.hash)
    outcome = QueryRequest.Outcome.QUEUED


def failed_job(**fields: object) -> Job:
    defaults = {
        "state": Job.State.FAILED,
        "error_type": Job.ErrorType.WORKER_LOST,
        "error_message": "The worker process died.",
        "response": "",
        "cost_usd": None,
    }
    return JobFactory(**{**defaults, **fields})


def backdate(obj: Job | QueryRequest, when: datetime) -> None:
    """created_at is auto_now_add: set it after the insert."""
    type(obj).objects.filter(pk=obj.pk).update(created_at=when)
    obj.created_at = when


class SessionFactory(factory.django.DjangoModelFactory):
    """A kept CLI session of an answered turn."""

    class Meta:
        model = Session

    cli_session_id = factory.Faker("uuid4")
    job = factory.SubFactory(JobFactory)
    lineage_hash = factory.Sequence(lambda n: f"{n:064x}")
    size_bytes = 8
    content = b'{"x":1}\n'
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=7))
