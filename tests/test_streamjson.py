"""The CLI's stream-json output parsed line by line: events, the result, the line cap. No Django."""

from __future__ import annotations

import json
from typing import Any

from claude_cli import upstream
from claude_cli.streamjson import StreamJsonParser
from claude_cli.upstream import UpstreamFailure


def line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def stream_event(event: dict[str, Any], parent: str | None = None) -> bytes:
    return line({"type": "stream_event", "event": event, "parent_tool_use_id": parent})


def delta(text: str, parent: str | None = None) -> bytes:
    return stream_event(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}, parent
    )


RESULT = {"type": "result", "subtype": "success", "is_error": False, "result": "4", "stop_reason": "end_turn"}


def parse(*chunks: bytes, max_line_bytes: int = 1 << 20) -> tuple[StreamJsonParser, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    parser = StreamJsonParser(max_line_bytes=max_line_bytes, on_event=events.append)
    for chunk in chunks:
        parser.feed(chunk)
    parser.finish()
    return parser, events


def test_text_deltas_become_text_events_and_the_result_is_kept() -> None:
    parser, events = parse(
        line({"type": "system", "subtype": "init", "tools": []}),
        stream_event({"type": "message_start", "message": {}}),
        stream_event(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        ),
        delta("Hel"),
        delta("lo"),
        stream_event({"type": "content_block_stop", "index": 0}),
        line({"type": "assistant", "message": {"content": [{"type": "text", "text": "Hello"}]}}),
        line(RESULT),
    )
    assert events == [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    assert parser.result == RESULT and not parser.overflowed


def test_lines_split_across_chunks_and_a_last_line_without_newline_are_read() -> None:
    data = delta("a") + delta("b") + json.dumps(RESULT).encode()
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    parser, events = parse(*chunks)
    assert [e["text"] for e in events] == ["a", "b"]
    assert parser.result == RESULT


def test_a_tool_call_starts_and_ends_with_its_result_and_subagents_are_left_out() -> None:
    tool = {"type": "tool_use", "id": "toolu_1", "name": "mcp__fetch__fetch", "input": {}}
    _, events = parse(
        stream_event({"type": "content_block_start", "index": 1, "content_block": tool}),
        stream_event(
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            }
        ),
        delta("inside a subagent", parent="toolu_9"),
        line(
            {
                "type": "user",
                "message": {"content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
                "parent_tool_use_id": None,
            }
        ),
        line({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "unknown"}]}}),
        delta("done"),
    )
    assert events == [
        {"type": "tool", "name": "mcp__fetch__fetch", "phase": "start"},
        {"type": "tool", "name": "mcp__fetch__fetch", "phase": "end"},
        {"type": "text", "text": "done"},
    ]


def test_a_line_over_the_cap_is_overflow_and_is_dropped_but_later_lines_still_count() -> None:
    huge = b'{"type": "assistant", "pad": "' + b"x" * 5000 + b'"}\n'
    parser, events = parse(huge[:3000], huge[3000:], delta("after"), line(RESULT), max_line_bytes=1024)
    assert parser.overflowed
    assert events == [{"type": "text", "text": "after"}]
    assert parser.result == RESULT


def test_a_single_object_output_is_one_line_and_garbage_is_not_an_object() -> None:
    parser, _ = parse(json.dumps(RESULT, indent=2).replace("\n", " ").encode())
    assert parser.result == RESULT
    parser, events = parse(b"this is not json\n[1, 2]\n")
    assert parser.result is None and events == [] and parser.last_object == [1, 2]
    assert bytes(parser.head).startswith(b"this is not json")


def retry(status: int | None, error: str, attempt: int = 1) -> bytes:
    # As claude 2.1.197 prints a failed upstream request it is about to retry.
    return line(
        {
            "type": "system",
            "subtype": "api_retry",
            "attempt": attempt,
            "max_retries": 10,
            "retry_delay_ms": 600.5,
            "error_status": status,
            "error": error,
        }
    )


def test_api_retry_lines_are_sorted_into_upstream_failure_kinds() -> None:
    seen: list[UpstreamFailure] = []
    parser = StreamJsonParser(max_line_bytes=1 << 20, on_upstream=seen.append)
    for chunk in (
        retry(401, "authentication_failed"),
        retry(429, "rate_limit"),
        retry(529, "overloaded"),
        retry(500, "server_error"),
        retry(None, "unknown"),
        retry(400, "invalid_request"),  # not an upstream trouble the gateway reacts to
    ):
        parser.feed(chunk)
    assert [(f.kind, f.status, f.error) for f in seen] == [
        ("auth", 401, "authentication_failed"),
        ("rate_limit", 429, "rate_limit"),
        ("overloaded", 529, "overloaded"),
        ("overloaded", 500, "server_error"),
        ("network", None, "unknown"),
    ]
    assert parser.upstream == seen[-1] and seen[-1].retry_in == 0.6005
    assert "not authorised" in seen[0].describe() and "HTTP 401" in seen[0].describe()


def test_a_rejected_rate_limit_event_gives_the_reset_time_of_a_429() -> None:
    seen: list[UpstreamFailure] = []
    parser = StreamJsonParser(max_line_bytes=1 << 20, on_upstream=seen.append)
    parser.feed(line({"type": "rate_limit_event", "rate_limit_info": {"status": "allowed", "resetsAt": 1}}))
    parser.feed(retry(529, "overloaded"))
    rejected = {"status": "rejected", "resetsAt": 1.8e9}
    parser.feed(line({"type": "rate_limit_event", "rate_limit_info": rejected}))
    parser.feed(retry(429, "rate_limit"))
    assert [(f.kind, f.reset_at) for f in seen] == [("overloaded", None), ("rate_limit", 1.8e9)]
    assert "resets at 2027-01-15T08:00:00Z" in seen[1].describe()


def test_a_result_with_an_api_error_status_is_an_upstream_failure() -> None:
    assert upstream.from_result({"is_error": True, "api_error_status": 403, "result": "Failed"}) == (
        UpstreamFailure("auth", 403, "Failed")
    )
    assert upstream.from_result({"is_error": True, "api_error_status": 400, "result": "bad"}) is None
    assert upstream.from_result({"is_error": False, "api_error_status": 529}) is None
