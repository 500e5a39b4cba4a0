"""A conversation of several turns, resumed against flat replay: what reaches upstream, and how fast.

The same questions and answers twice, through the native API:

- resumed: each turn after the first sends ``sessionId`` (the previous answer's), so the worker
  restores the CLI session and runs ``--resume … --fork-session`` with the new question alone;
- flat replay: each turn is a fresh query holding the earlier turns as a transcript, as a chat
  client's history was run before conversations.

Per turn it records the upstream requests' bytes (the mock's record of what the CLI sent) and the
input tokens the mock reported (it runs with ``--prompt-cache``: input by size, the longest prefix an
earlier request marked with ``cache_control`` as cache reads), and the turn's latency (POST until
the result is visible). A resumed turn starts its CLI cold; a fresh one takes a warm CLI.
"""

from __future__ import annotations

import json
import time
from statistics import median
from typing import Any

import psycopg
import requests
from stack import Gateway, Setup, wait_result

TURNS = 10
SMOKE_TURNS = 3
# An answer long enough that the history grows as a real conversation's does.
ANSWER_WORDS = 60


def _question(run_id: str, mode: str, number: int) -> tuple[str, str]:
    answer = f"Answer {number}: " + " ".join(f"word{number}x{i}" for i in range(ANSWER_WORDS))
    return f"[{run_id} {mode}] Question {number}: tell me more. [[mock:text={answer}]]", answer


def _flat(turns: list[tuple[str, str]], question: str) -> str:
    lines = ["The conversation so far:"]
    for user, answer in turns:
        lines += [f"User: {user}", f"Assistant: {answer}"]
    return "\n\n".join([*lines, "Now answer this, the next user message:", question])


def _upstream(setup: Setup, since: int) -> list[dict[str, Any]]:
    return requests.get(f"{setup.mock_url}/_mock/requests", params={"since": since}, timeout=30).json()


def _request_count(setup: Setup) -> int:
    return len(_upstream(setup, 0))


def _mock_reset(setup: Setup) -> None:
    """Forget the mock's record and its prompt cache: each conversation starts cold."""
    requests.post(f"{setup.mock_url}/_mock/reset", timeout=30).raise_for_status()


def run_conversation(setup: Setup, gateway: Gateway, run_id: str, *, mode: str, turns: int) -> list[dict]:
    """One conversation; a dict per turn: latency, upstream bytes and requests, and input tokens."""
    session = gateway.session()
    history: list[tuple[str, str]] = []
    session_id: str | None = None
    figures = []
    _mock_reset(setup)
    with psycopg.connect(setup.database_url, autocommit=True) as db:
        for number in range(1, turns + 1):
            question, answer = _question(run_id, mode, number)
            body: dict[str, Any] = {"query": question}
            if mode == "resumed" and session_id:
                body["sessionId"] = session_id
            elif mode == "flat" and history:
                body["query"] = _flat(history, question)
            before = _request_count(setup)
            started = time.monotonic()
            response = session.post(f"{gateway.url}/api/query", json=body, timeout=30)
            if response.status_code != 202:
                raise RuntimeError(f"turn {number}: {response.status_code} {response.text[:300]}")
            result = wait_result(session, gateway.url, response.json()["jobId"], 0.005, db=db)["result"]
            latency = time.monotonic() - started
            if result["response"] != answer:
                raise RuntimeError(f"turn {number} answered {result['response'][:80]!r}")
            sent = _upstream(setup, before)
            usage = result["usage"]
            mode_row = db.execute(
                "SELECT session_mode FROM queries_job WHERE id = %s", (response.json()["jobId"],)
            ).fetchone()
            figures.append(
                {
                    "turn": number,
                    "ran": mode_row[0] if mode_row else "",
                    "latency": latency,
                    "requests": len(sent),
                    "bytes": sum(len(json.dumps(b, separators=(",", ":")).encode()) for b in sent),
                    "input_tokens": usage["inputTokens"] or 0,
                    "cache_read": usage["cacheReadInputTokens"] or 0,
                    "cache_write": usage["cacheCreationInputTokens"] or 0,
                }
            )
            history.append((question, answer))
            session_id = result["sessionId"]
    return figures


def billed_input(turn: dict[str, Any]) -> float:
    """Input as the API bills it: cache writes at 1.25×, cache reads at 0.1× the input price."""
    return turn["input_tokens"] + 1.25 * turn["cache_write"] + 0.1 * turn["cache_read"]


def summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    later = [t["latency"] for t in turns[1:]] or [t["latency"] for t in turns]
    return {
        "bytes_total": sum(t["bytes"] for t in turns),
        "input_total": sum(t["input_tokens"] + t["cache_write"] + t["cache_read"] for t in turns),
        "uncached_total": sum(t["input_tokens"] + t["cache_write"] for t in turns),
        "cache_read_total": sum(t["cache_read"] for t in turns),
        "billed_input_total": sum(billed_input(t) for t in turns),
        "latency_p50_later": median(later),
        "latency_first": turns[0]["latency"],
        "modes": [t["ran"] for t in turns],
    }


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    turns = SMOKE_TURNS if setup.args.smoke else TURNS
    resumed = run_conversation(setup, gateway, run_id, mode="resumed", turns=turns)
    flat = run_conversation(setup, gateway, run_id, mode="flat", turns=turns)
    return {
        "conversation": {
            "turns": turns,
            "resumed": resumed,
            "flat": flat,
            "resumed_summary": summary(resumed),
            "flat_summary": summary(flat),
        }
    }
