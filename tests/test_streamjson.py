"""The CLI's stream-json output parsed line by line: events, the result, the line cap. No Django."""

from __future__ import annotations

import json
from typing import Any

from claude_cli.streamjson import StreamJsonParser


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
