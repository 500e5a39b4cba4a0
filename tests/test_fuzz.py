"""Fuzzing: schemathesis against the live server's own schema, and properties of normalization."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import requests
from django.conf import settings as django_settings
from hypothesis import example, given, settings
from hypothesis import strategies as st

from queries.services import normalize_query, query_hash
from tests.support.processes import start_web_server
from tests.support.waiting import wait_for

# What must hold for every generated request, valid or not. Left out: positive_data_acceptance (a
# schema-valid webhookUrl is still refused when its host does not resolve to a public address, and
# a valid query may meet a quota), use_after_free and ensure_resource_availability (no DELETE).
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "ignored_auth",
    ]
)
MAX_EXAMPLES = 60


@pytest.mark.e2e
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    transactional_db, redis_db, mock, processes, api_key, tmp_path
):
    # /ready answers 503 without a live queue worker, a correct 5xx that the run would report. The
    # worker started here is a real rq worker, but on a queue nothing is sent to: fuzzed queries must
    # not run, since a generated webhookUrl may name any public address. So a valid /v1/ call's job
    # never runs either: the call gives up after V1_MAX_WAIT_SECONDS with its documented 504.
    web_server = start_web_server(processes, mock, tmp_path, V1_MAX_WAIT_SECONDS="1", V1_PING_SECONDS="0.2")
    processes.start(
        [
            str(Path(sys.executable).with_name("rq")),
            "worker",
            "--url",
            django_settings.REDIS_URL,
            # A heartbeat every 5 s (rq waits worker_ttl - 15 s per dequeue), well inside the age
            # at which /ready stops counting a worker alive (WORKER_STALE_AFTER).
            "--worker-ttl",
            "20",
            "fuzz-idle",
        ],
        {**os.environ},
        "idle-worker",
    )
    wait_for(lambda: requests.get(f"{web_server}/ready", timeout=30).status_code == 200, timeout=60)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{web_server}/api/schema/?format=json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {api_key[1]}",
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "7",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        # One worker: with two threads, hypothesis describing the /v1/ schemas' strategies trips
        # CPython 3.11's ast recursion-depth check ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "schemathesis"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    summary = result.stdout[-6000:]
    print(summary)
    assert result.returncode == 0, summary + result.stderr[-3000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout


# --- normalization and hashing --------------------------------------------------------------------

# Python's str.split() treats these as whitespace; normalization collapses any run of them.
WHITESPACE = st.sampled_from([" ", "\t", "\n", "\r", "\x0b", "\x0c", "\u00a0", "\u2003", "\u3000", "\x1c"])
WORD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=12
).filter(lambda w: not any(c.isspace() for c in w))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
@example("İstanbul ǅ ß ﬃ")
@example("e\u0301")
def test_normalization_is_idempotent(text):
    once = normalize_query(text)
    assert normalize_query(once) == once
    assert once == once.strip() and "  " not in once
    assert unicodedata.is_normalized("NFC", once)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(WORD, min_size=1, max_size=8), st.lists(st.lists(WHITESPACE, min_size=1, max_size=3), min_size=9)
)
def test_whitespace_runs_do_not_change_the_hash(words, gaps):
    plain = " ".join(words)
    spaced = "".join(gaps[0]) + "".join(w + "".join(g) for w, g in zip(words, gaps[1:], strict=False))
    assert normalize_query(spaced) == normalize_query(plain)
    assert hash_of(spaced) == hash_of(plain)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), max_size=100), st.randoms(use_true_random=False))
def test_letter_case_does_not_change_the_hash(text, rng):
    recased = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)
    assert hash_of(recased) == hash_of(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_composed_and_decomposed_spellings_hash_alike(text):
    assert hash_of(unicodedata.normalize("NFD", text)) == hash_of(unicodedata.normalize("NFC", text))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_different_queries_hash_differently(a, b):
    if normalize_query(a) != normalize_query(b):
        assert hash_of(a) != hash_of(b)
    else:
        assert hash_of(a) == hash_of(b)


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=40),
    st.one_of(st.none(), st.sampled_from(["haiku", "sonnet", "opus"])),
    st.lists(st.sampled_from(["fetch", "sqlite", "filesystem", "github"]), unique=True),
    st.one_of(st.none(), st.integers(min_value=1, max_value=10**6).map(lambda n: f"key:{n}")),
)
def test_model_servers_and_scope_are_part_of_the_hash(text, model, servers, scope):
    normalized = normalize_query(text)
    base = query_hash(normalized=normalized, model=model, servers=servers, scope=scope)
    assert len(base) == 64 and int(base, 16) >= 0
    assert (
        query_hash(normalized=normalized, model=model, servers=list(reversed(servers)), scope=scope) == base
    )
    assert query_hash(normalized=normalized, model=(model or "") + "x", servers=servers, scope=scope) != base
    assert query_hash(normalized=normalized, model=model, servers=[*servers, "extra"], scope=scope) != base
    assert (
        query_hash(normalized=normalized, model=model, servers=servers, scope=(scope or "key:0") + "1")
        != base
    )


def test_the_hash_without_a_scope_is_the_contracts():
    """SHA-256 of the canonical JSON of query, model and sorted servers (design.md): unchanged by scopes."""
    import hashlib

    expected = hashlib.sha256(b'{"mcpServers":["a","b"],"model":null,"query":"what is 2+2?"}').hexdigest()
    assert query_hash(normalized="what is 2+2?", model=None, servers=["b", "a"]) == expected


def hash_of(text: str) -> str:
    return query_hash(normalized=normalize_query(text), model=None, servers=[])
