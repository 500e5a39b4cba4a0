"""Intent routing: seeded rules, ordering, switches, safety of patterns, CLI arguments, recording."""

from __future__ import annotations

import importlib
import json
import time

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.core.management import call_command

from claude_cli.invocation import ClaudeInvocation, RunnerConfig, build_argv
from core.redis import redis_client
from queries import services
from queries.models import Job
from routing.models import IntentRule, McpServer
from routing.services import (
    Route,
    compile_pattern,
    route_for_job,
    route_preview,
    route_query,
    routing_invalidate,
)
from tests.support.pipeline import run_queued_jobs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("query", "intent", "servers"),
    [
        ("Fetch https://example.com and summarise it", "web", ["fetch"]),
        ("What does the GraphQL endpoint return?", "web", ["fetch"]),
        ("Write SQL to list users", "database", ["sqlite"]),
        ("which TABLE holds orders", "database", ["sqlite"]),
        ("Open the file and count lines", "filesystem", ["filesystem"]),
        ("summarise notes.md please", "filesystem", ["filesystem"]),
        ("Refactor this function", "code", ["github"]),
        ("What is 2+2?", "general", []),
        ("Tell me about apiaries and selections of profiles", "general", []),  # whole words only
    ],
)
def test_each_seeded_intent_routes_to_its_server(seeded, query, intent, servers):
    route = route_query(query=query)
    assert route.intent == intent
    assert route.server_names == servers


def test_seeded_servers_describe_real_commands(seeded):
    entries = {s.name: s.cli_entry() for s in McpServer.objects.all()}
    assert entries["fetch"] == {"command": "mcp-server-fetch", "args": []}
    assert entries["sqlite"]["command"] == "mcp-server-sqlite"
    assert entries["filesystem"]["command"] == "mcp-server-filesystem"
    assert entries["github"]["command"] == "mcp-server-github"


def test_seeding_again_keeps_operator_edits(seeded):
    IntentRule.objects.filter(name="web").update(pattern=r"\bbrowse\b", order=99)
    McpServer.objects.filter(name="fetch").update(args=["--ignore-robots-txt"])
    importlib.import_module("routing.migrations.0002_seed_default_routes").seed(apps, None)
    assert IntentRule.objects.get(name="web").pattern == r"\bbrowse\b"
    assert McpServer.objects.get(name="fetch").args == ["--ignore-robots-txt"]
    assert IntentRule.objects.filter(name="web").count() == 1


def test_rules_are_tried_in_order(seeded):
    query = "fetch the rows of that table"  # web and database words
    assert route_query(query=query).intent == "web"
    IntentRule.objects.filter(name="database").update(order=5)
    routing_invalidate()
    assert route_query(query=query).intent == "database"


def test_disabled_rules_are_skipped_and_disabled_servers_left_out(seeded):
    IntentRule.objects.filter(name="web").update(enabled=False)
    routing_invalidate()
    assert route_query(query="call the api").intent == "general"
    McpServer.objects.filter(name="sqlite").update(enabled=False)
    routing_invalidate()
    route = route_query(query="select everything")
    assert route.intent == "database" and route.server_names == []


def test_mcp_disabled_routes_everything_to_general(seeded, settings):
    settings.MCP_ENABLED = False
    assert route_query(query="Fetch https://example.com") == Route()


def test_no_rules_at_all_is_general():
    assert route_query(query="select * from file") == Route()


def test_an_edit_in_this_process_applies_at_once(seeded):
    rule = IntentRule.objects.get(name="code")
    rule.pattern = r"\bkotlin\b"
    rule.save()
    assert route_query(query="kotlin please").intent == "code"


def test_an_edit_made_elsewhere_applies_within_the_refresh_interval(seeded, settings):
    settings.ROUTING_REFRESH_SECONDS = 0.3
    assert route_query(query="kotlin please").intent == "general"
    # A queryset update sends no signal: this process learns of it only by reloading, like any other.
    IntentRule.objects.filter(name="code").update(pattern=r"\bkotlin\b")
    time.sleep(0.4)
    assert route_query(query="kotlin please").intent == "code"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [("(unclosed", "missing )"), (r"(a)\1", "escape"), ("", "empty"), ("x" * 5000, "longer than")],
)
def test_invalid_patterns_are_refused_with_the_reason(pattern, reason):
    rule = IntentRule(name="bad", pattern=pattern)
    with pytest.raises(ValidationError) as caught:
        rule.full_clean()
    assert reason in " ".join(caught.value.message_dict["pattern"]).lower()


def test_a_pathological_pattern_against_a_long_hostile_query_stays_fast():
    IntentRule.objects.create(name="evil", pattern=r"(a+)+$|(x+x+)+y|^(a|aa)+$", order=1)
    hostile = "a" * 100_000 + "!"
    started = time.perf_counter()
    route = route_query(query=hostile)
    elapsed = time.perf_counter() - started
    assert route.intent == "general"
    # Python's backtracking engine would take longer than the age of the universe here.
    assert elapsed < 1.0, f"matching took {elapsed:.3f}s"
    assert compile_pattern(r"(a+)+$").search("a" * 50 + "b") is None


def test_cli_arguments_name_exactly_the_chosen_servers_and_allow_their_tools(seeded):
    route = route_query(query="call the api")
    invocation = ClaudeInvocation(
        prompt="call the api", mcp_config=route.mcp_config(), allowed_tools=route.allowed_tools()
    )
    argv = build_argv(invocation, RunnerConfig(binary="claude", timeout=5))
    config = json.loads(argv[argv.index("--mcp-config") + 1])
    assert list(config["mcpServers"]) == ["fetch"]
    assert "--strict-mcp-config" in argv
    tools = argv[argv.index("--allowedTools") + 1 :]
    assert tools == ["mcp__fetch"]
    assert "call the api" not in argv  # the prompt goes to stdin


def test_a_filesystem_server_serves_its_configured_directory(tmp_path):
    server = McpServer(name="files", command="mcp-server-filesystem", args=[str(tmp_path)])
    server.full_clean()
    assert server.workdir == str(tmp_path)
    rule = IntentRule.objects.create(name="files", pattern=r"\bfile\b")
    server.save()
    rule.servers.add(server)
    routing_invalidate()
    assert route_query(query="read the file").workdir == str(tmp_path)


def test_server_validation_messages():
    with pytest.raises(ValidationError) as caught:
        McpServer(name="bad name!", command="").full_clean()
    assert "name" in caught.value.message_dict and "command" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        McpServer(name="x", command="c", args="not a list", env={"A": 1}).full_clean()
    assert "args" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        McpServer(name="remote", transport="http").full_clean()
    assert "url" in caught.value.message_dict


def test_http_servers_become_typed_entries():
    server = McpServer(name="remote", transport="http", url="https://mcp.example.com/mcp", headers={"A": "b"})
    assert server.cli_entry() == {"type": "http", "url": "https://mcp.example.com/mcp", "headers": {"A": "b"}}


def test_the_job_records_intent_and_servers_and_the_hash_covers_them(seeded, redis_db):
    web = services.query_submit(api_key=None, query="call the api")
    job = Job.objects.get(id=web.job_id)
    assert job.intent == "web" and job.mcp_servers == ["fetch"]
    assert job.hash == services.query_hash(normalized="call the api", model=None, servers=["fetch"])
    # After a routing change the same text has another server set, so it is neither joined nor cached.
    IntentRule.objects.filter(name="web").update(enabled=False)
    routing_invalidate()
    other = services.query_submit(api_key=None, query="call the api")
    assert other.job_id != web.job_id and other.outcome == "queued"
    assert Job.objects.get(id=other.job_id).intent == "general"


def test_results_carry_intent_and_servers(seeded, fake_claude, tmp_path, redis_db):
    argv_file = tmp_path / "argv.json"
    fake_claude("ok", FAKE_CLAUDE_ARGV_FILE=str(argv_file))
    submission = services.query_submit(api_key=None, query="refactor this function")
    run_queued_jobs()
    result = Job.objects.get(id=submission.job_id).result_payload()
    assert result["intent"] == "code" and result["mcpServers"] == ["github"]
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--allowedTools") + 1] == "mcp__github"


def test_secrets_stay_out_of_jobs_queues_argv_and_logs(seeded, fake_claude, tmp_path, caplog, redis_db):
    secret = "ghp_TopSecretToken123"
    McpServer.objects.filter(name="github").update(env={"GITHUB_PERSONAL_ACCESS_TOKEN": secret})
    routing_invalidate()
    argv_file = tmp_path / "argv.json"
    fake_claude("ok", FAKE_CLAUDE_ARGV_FILE=str(argv_file))
    caplog.set_level("DEBUG")
    submission = services.query_submit(api_key=None, query="debug this method")
    import django_rq

    rq_job = django_rq.get_queue("default").fetch_job(str(submission.job_id))
    assert secret not in json.dumps([rq_job.args, rq_job.kwargs, rq_job.description])
    run_queued_jobs()
    job = Job.objects.get(id=submission.job_id)
    assert job.state == Job.State.COMPLETED
    row = json.dumps({f.name: str(getattr(job, f.name)) for f in Job._meta.fields})
    assert secret not in row
    assert secret not in argv_file.read_text()
    assert secret not in caplog.text
    preview = route_preview(query="debug this method")
    assert secret not in json.dumps(preview.argv) and "***" in json.dumps(preview.argv)


def test_a_server_disabled_before_the_job_runs_fails_it_as_mcp_unavailable(seeded, fake_claude, redis_db):
    fake_claude("ok")
    submission = services.query_submit(api_key=None, query="select the rows")
    McpServer.objects.filter(name="sqlite").update(enabled=False)
    run_queued_jobs()
    job = Job.objects.get(id=submission.job_id)
    assert job.state == Job.State.FAILED and job.error_type == "mcp_unavailable"
    assert "sqlite" in job.error_message
    assert redis_client().get(f"dedup:{job.hash}") is None


def test_route_for_job_uses_the_servers_configuration_as_it_is_now(seeded):
    McpServer.objects.filter(name="fetch").update(args=["--user-agent", "gateway"])
    route = route_for_job(intent="web", server_names=["fetch"])
    assert route.servers["fetch"]["args"] == ["--user-agent", "gateway"]
    assert route.cache_ttl == 300


def test_a_never_cache_rule_neither_stores_nor_serves_from_the_cache(seeded, fake_claude, redis_db):
    fake_claude("ok")
    first = services.query_submit(api_key=None, query="select the rows")
    run_queued_jobs()
    job = Job.objects.get(id=first.job_id)
    assert job.state == Job.State.COMPLETED and job.use_cache is False
    assert redis_client().get(f"claude:{job.hash}") is None
    services.cache_put(job=job)  # an entry from before the policy changed is not served either
    assert services.query_submit(api_key=None, query="select the rows").outcome == "queued"


def test_a_rule_ttl_bounds_the_cache_entry(seeded, fake_claude, redis_db):
    fake_claude("ok")
    submission = services.query_submit(api_key=None, query="call the api")
    run_queued_jobs()
    job = Job.objects.get(id=submission.job_id)
    assert 0 < redis_client().ttl(f"claude:{job.hash}") <= 300


def test_route_command_prints_intent_servers_and_masked_argv(seeded, capsys):
    McpServer.objects.filter(name="fetch").update(env={"API_TOKEN": "tok_very_secret"})
    routing_invalidate()
    call_command("route", "fetch https://example.com")
    out = capsys.readouterr().out
    assert "intent:  web" in out and "servers: fetch" in out and "cache:   300" in out
    assert "--strict-mcp-config" in out and "mcp__fetch" in out
    assert "tok_very_secret" not in out and "***" in out
    call_command("route", "What is 2+2?", "--json")
    data = json.loads(capsys.readouterr().out)
    assert data["intent"] == "general" and data["servers"] == [] and "--mcp-config" not in data["argv"]


def test_admin_refuses_a_bad_pattern_and_shows_the_test_page(seeded, admin_client):
    rule = IntentRule.objects.get(name="web")
    response = admin_client.post(
        f"/admin/routing/intentrule/{rule.pk}/change/",
        {
            "name": "web",
            "pattern": "(unclosed",
            "order": 10,
            "enabled": "on",
            "servers": [],
            "description": "",
        },
    )
    assert response.status_code == 200
    assert "Not a valid RE2 regular expression" in response.content.decode()
    assert IntentRule.objects.get(pk=rule.pk).pattern != "(unclosed"

    page = admin_client.post("/admin/routing/intentrule/test/", {"query": "Fetch https://example.com"})
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="route-intent">web' in html and "mcp__fetch" in html and "--strict-mcp-config" in html
