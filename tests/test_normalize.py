import pytest

from queries.models import response_format
from queries.services import normalize_query, query_hash


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("What is 2+2?", "what is 2+2?"),
        ("  What   is\t2+2?\n", "what is 2+2?"),
        ("WHAT IS 2+2?", "what is 2+2?"),
        ("cafe\u0301", "caf\u00e9"),  # NFD input, NFC output
        ("a\u00a0\u2003b", "a b"),  # Unicode spaces are whitespace too
    ],
)
def test_normalization_trims_collapses_lowercases_and_composes(raw, expected):
    assert normalize_query(raw) == expected


def test_normalization_is_idempotent():
    once = normalize_query("  Some\tQUERY  with   Spaces ")
    assert normalize_query(once) == once


def test_hash_is_full_sha256_hex():
    digest = query_hash(normalized="x", model=None, servers=[])
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_hash_ignores_case_and_spacing_through_normalization():
    a = query_hash(normalized=normalize_query("What is 2+2?"), model=None, servers=[])
    b = query_hash(normalized=normalize_query("  what IS   2+2? "), model=None, servers=[])
    assert a == b


def test_hash_depends_on_query_model_and_servers():
    base = query_hash(normalized="q", model=None, servers=[])
    assert query_hash(normalized="q2", model=None, servers=[]) != base
    assert query_hash(normalized="q", model="opus", servers=[]) != base
    assert query_hash(normalized="q", model=None, servers=["fetch"]) != base


def test_hash_does_not_depend_on_server_order():
    assert query_hash(normalized="q", model=None, servers=["b", "a"]) == query_hash(
        normalized="q", model=None, servers=["a", "b"]
    )


def test_empty_model_hashes_like_no_model():
    assert query_hash(normalized="q", model="", servers=[]) == query_hash(
        normalized="q", model=None, servers=[]
    )


@pytest.mark.parametrize(
    ("text", "fmt"),
    [("4", "text"), ("hello", "text"), ('{"a": 1}', "json"), (" [1, 2] ", "json"), ("{not json", "text")],
)
def test_response_format_is_json_only_for_objects_and_arrays(text, fmt):
    assert response_format(text) == fmt
