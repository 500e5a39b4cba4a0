"""Routing end to end: the real CLI starts the real filesystem MCP server that routing chose."""

from __future__ import annotations

import json
import time

import pytest

from queries.models import Job
from routing.models import IntentRule, McpServer
from tests.support.waiting import wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def run(http, query: str) -> tuple[dict, Job]:
    job_id = http.post(f"{http.base}/api/query", json={"query": query, "noCache": True}, timeout=30).json()[
        "jobId"
    ]
    return wait_finished(http, job_id), Job.objects.get(id=job_id)


def tools_offered(mock, index: int = -1) -> list[str]:
    return [tool["name"] for tool in mock.message_requests()[index].get("tools", [])]


def read_file_query(path) -> str:
    directive = json.dumps({"path": str(path)})
    return f"[[mock:tool=mcp__filesystem__read_text_file input={directive}]] Read the file notes.txt"


def test_a_filesystem_query_gets_the_real_filesystem_server_and_its_answer(
    seeded,
    http,
    worker_process,
    mock,
    tmp_path,
):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("The secret word is pomegranate.\n")
    McpServer.objects.filter(name="filesystem").update(workdir=str(docs))
    worker_process()

    body, job = run(http, read_file_query(docs / "notes.txt"))
    assert body["state"] == "completed", body
    assert body["result"]["intent"] == "filesystem" and body["result"]["mcpServers"] == ["filesystem"]
    assert "pomegranate" in body["result"]["response"]
    assert body["result"]["numTurns"] >= 2
    first_turn = mock.message_requests()[0]
    assert "mcp__filesystem__read_text_file" in [t["name"] for t in first_turn["tools"]]
    tool_result = json.dumps(mock.message_requests()[1]["messages"][-1])
    assert "pomegranate" in tool_result


def test_a_general_query_offers_no_mcp_tool_even_with_user_level_mcp_configuration(
    seeded,
    http,
    worker_process,
    mock,
    tmp_path,
):
    home = tmp_path / "leaky-home"
    home.mkdir()
    leak = {
        "mcpServers": {
            "leaky": {"type": "stdio", "command": "mcp-server-filesystem", "args": [str(tmp_path)]}
        }
    }
    (home / ".claude.json").write_text(json.dumps(leak))
    worker_process(env={"HOME": str(home)})

    body, job = run(http, "What is 2+2?")
    assert body["state"] == "completed" and body["result"]["response"] == "4"
    assert job.intent == "general" and job.mcp_servers == []
    offered = tools_offered(mock)
    assert offered, "the CLI offers its own tools"
    assert not [name for name in offered if name.startswith("mcp__")]


def test_admin_edits_change_the_next_job_in_running_processes(
    seeded,
    http,
    worker_process,
    mock,
    tmp_path,
    admin_client,
):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "notes.txt").write_text(f"This is the {folder.name} folder.\n")
    McpServer.objects.filter(name="filesystem").update(workdir=str(first))
    worker_process()

    body, _ = run(http, read_file_query(second / "notes.txt"))
    assert body["state"] == "completed"
    assert "second folder" not in body["result"]["response"]  # outside what the server serves

    # The running worker uses the server's new directory for its next job, without a restart.
    server = McpServer.objects.get(name="filesystem")
    response = admin_client.post(
        f"/admin/routing/mcpserver/{server.pk}/change/",
        {
            "name": "filesystem",
            "enabled": "on",
            "description": server.description,
            "command": server.command,
            "args": json.dumps(server.args),
            "env": "{}",
            "workdir": str(second),
            "transport": "stdio",
            "url": "",
            "headers": "{}",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    body, _ = run(http, read_file_query(second / "notes.txt"))
    assert "This is the second folder." in body["result"]["response"]

    # The running web server routes by the edited rule within ROUTING_REFRESH_SECONDS.
    rule = IntentRule.objects.get(name="filesystem")
    response = admin_client.post(
        f"/admin/routing/intentrule/{rule.pk}/change/",
        {
            "name": "filesystem",
            "pattern": r"\bdossier\b",
            "order": rule.order,
            "enabled": "on",
            "servers": [server.pk],
            "description": "",
            "cache_ttl": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    time.sleep(1.5)
    body, job = run(http, "Read the file notes.txt")
    assert job.intent == "general" and job.mcp_servers == []
    body, job = run(http, "Read the dossier")
    assert job.intent == "filesystem"
