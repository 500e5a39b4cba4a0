"""Validation rules of a query submission, shared by the API's serializer and the cache-hit path."""

from __future__ import annotations

from django.conf import settings

MODEL_MAX_CHARS = 100
MODEL_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:[]@/")


def query_problem(value: str) -> str | None:
    """What is wrong with a query string, or None."""
    if not value.strip():
        return "This field may not be blank."
    if len(value) > settings.QUERY_MAX_CHARS:
        return f"Ensure this field has no more than {settings.QUERY_MAX_CHARS} characters."
    return None


def model_problem(value: str | None) -> str | None:
    """What is wrong with a model name, or None."""
    if value is None:
        return None
    if not value or value[0] in "-@/" or not set(value) <= MODEL_NAME_CHARS:
        return "Must be a model name or alias: letters, digits and - . _ : [ ] @ /, not starting with -."
    return None
