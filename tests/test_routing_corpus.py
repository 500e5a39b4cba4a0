"""Routing on evidence: the labelled corpus, exclusions, explanations, the corpus command, the migration."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils.html import escape

from routing.corpus import CorpusItem, corpus_evaluate, corpus_read
from routing.models import IntentRule
from routing.services import route_explain, route_query, routing_invalidate

pytestmark = pytest.mark.django_db(transaction=True)

CORPUS = Path(__file__).parent / "data" / "routing_corpus.jsonl"


def test_the_corpus_routes_as_labelled_and_no_general_query_reaches_a_server(seeded):
    items = corpus_read(CORPUS)
    general = [item for item in items if item.intent == "general"]
    assert len(items) >= 150 and len(general) > len(items) / 2
    report = corpus_evaluate(items=items)
    assert report.accuracy >= 0.95, report.misses
    assert report.general_to_server == []


def test_the_explanation_names_the_rule_that_routing_chose(seeded):
    for item in corpus_read(CORPUS):
        explanation = route_explain(query=item.query)
        assert explanation.route.intent == route_query(query=item.query).intent, item.query


@pytest.mark.parametrize(
    ("query", "intent"),
    [
        ("How do I update my profile picture?", "general"),
        ("Please delete the duplicate paragraph", "general"),
        ("What's the best table for a small kitchen?", "general"),
        ("search the web for news", "web"),
        *[(word, "general") for word in ("update", "delete", "select", "table", "file", "path")],
        *[(word, "general") for word in ("class", "rest", "function", "api", "fetch", "join")],
        ("I need to file my expenses by Friday", "general"),
        ("Read todo.txt, then help me file a complaint about the noise", "filesystem"),
    ],
)
def test_everyday_words_carry_no_intent_and_evidence_does(seeded, query, intent):
    assert route_query(query=query).intent == intent


def test_an_exclusion_sets_text_aside_and_says_so(seeded):
    explanation = route_explain(query="Why do my emails land in the spam folder?")
    assert explanation.route.intent == "general" and explanation.deciding.intent == "general"
    (vetoed,) = explanation.vetoed
    assert vetoed.intent == "filesystem" and vetoed.vetoed.text == "in the spam folder"
    assert [e.text for e in vetoed.excluded] == ["spam folder"]
    assert "spam" in vetoed.excluded[0].pattern


def test_the_explanation_gives_the_matching_line_and_text(seeded):
    explanation = route_explain(query="Summarise report.pdf for me")
    deciding = explanation.deciding
    assert (deciding.intent, deciding.order) == ("filesystem", 40)
    assert deciding.matched.text == "report.pdf"
    assert deciding.matched.pattern in IntentRule.objects.get(name="filesystem").pattern.splitlines()
    assert explanation.route.server_names == ["filesystem"]


def test_rules_match_on_any_line_and_exclusions_apply_live(seeded):
    rule = IntentRule.objects.get(name="code")
    rule.pattern = "\\bkotlin\\b\n\\bgradle\\b"
    rule.exclusions = "\\bgradle wrapper\\b"
    rule.full_clean()
    rule.save()
    assert route_query(query="my gradle build fails").intent == "code"
    assert route_query(query="kotlin please").intent == "code"
    assert route_query(query="what is the gradle wrapper").intent == "general"


def test_exclusions_are_checked_like_patterns():
    rule = IntentRule(name="bad", pattern="\\bok\\b\n(unclosed", exclusions="(a)\\1")
    with pytest.raises(ValidationError) as caught:
        rule.full_clean()
    assert "line 2" in caught.value.message_dict["pattern"][0]
    assert "escape" in caught.value.message_dict["exclusions"][0].lower()


def test_the_test_page_shows_the_rule_line_text_and_vetoes(seeded, admin_client):
    page = admin_client.post("/admin/routing/intentrule/test/", {"query": "Summarise report.pdf for me"})
    html = page.content.decode()
    line = route_explain(query="Summarise report.pdf for me").deciding.matched.pattern
    assert 'id="route-intent">filesystem' in html
    assert f'<code class="route-pattern">{escape(line)}</code>' in html
    assert '<mark class="route-text">report.pdf</mark>' in html

    page = admin_client.post("/admin/routing/intentrule/test/", {"query": "Why is it in the spam folder?"})
    html = page.content.decode()
    assert 'id="route-intent">general' in html and "its exclusions vetoed it" in html
    assert "<mark>spam folder</mark>" in html


def test_the_rule_list_and_form_take_exclusions(seeded, admin_client):
    listing = admin_client.get("/admin/routing/intentrule/").content.decode()
    assert "lines)" in listing  # multi-line patterns are summarised
    rule = IntentRule.objects.get(name="web")
    form = {
        "name": "web",
        "pattern": rule.pattern,
        "exclusions": "\\bexample\\.com\\b\n(bad",
        "order": rule.order,
        "enabled": "on",
        "description": "",
    }
    response = admin_client.post(f"/admin/routing/intentrule/{rule.pk}/change/", form)
    assert "line 2" in response.content.decode()
    form["exclusions"] = "\\bexample\\.com\\b"
    response = admin_client.post(f"/admin/routing/intentrule/{rule.pk}/change/", form)
    assert response.status_code == 302
    assert route_query(query="fetch example.com").intent == "general"
    assert route_query(query="fetch example.org").intent == "web"


def test_the_corpus_command_prints_accuracy_confusion_and_misses(seeded, tmp_path, capsys):
    corpus = tmp_path / "mine.csv"
    corpus.write_text(
        "query,intent\n"
        "What is 2+2?,general\n"
        '"Fetch https://example.com, then summarise it",web\n'
        "select * from orders,database\n"
        "tell me about kotlin,code\n"
    )
    call_command("route", "--corpus", str(corpus))
    out = capsys.readouterr().out.splitlines()
    assert f"corpus:    {corpus} (4 queries)" in out
    assert "accuracy:  75.0% (3/4 routed as labelled)" in out
    assert "general queries routed to another intent: 0" in out
    header = out.index("confusion (rows: labelled, columns: routed):") + 1
    table = [line.split() for line in out[header : header + 5]]
    assert table[0] == ["labelled", "general", "code", "database", "web"]
    assert table[1:] == [
        ["general", "1", "0", "0", "0"],
        ["code", "1", "0", "0", "0"],
        ["database", "0", "0", "1", "0"],
        ["web", "0", "0", "0", "1"],
    ]
    assert "  code -> general: 'tell me about kotlin'" in out
    with pytest.raises(CommandError, match="below --min-accuracy 90%"):
        call_command("route", "--corpus", str(corpus), "--min-accuracy", "90")


def test_the_corpus_command_on_the_shipped_corpus(seeded, capsys):
    call_command("route", "--corpus", str(CORPUS), "--min-accuracy", "95")
    out = capsys.readouterr().out
    assert "accuracy:  " in out and "general queries routed to another intent: 0" in out


def test_the_corpus_command_refuses_bad_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "hi", "intent": "general"}\n{"query": "no label"}\n')
    with pytest.raises(CommandError, match=r"bad.jsonl:2: needs a \"query\" and an \"intent\""):
        call_command("route", "--corpus", str(bad))
    with pytest.raises(CommandError, match="either a query or --corpus"):
        call_command("route", "hello", "--corpus", str(bad))
    with pytest.raises(CommandError, match="Give a query"):
        call_command("route")


def test_the_route_command_says_which_line_matched(seeded, capsys):
    call_command("route", "Count the words in ~/drafts/chapter1.txt")
    out = capsys.readouterr().out
    assert "intent:  filesystem" in out
    assert "rule:    filesystem (order 40) matched '~/drafts/chapter1.txt'" in out
    call_command("route", "How is the spam folder sorted?", "--json")
    data = json.loads(capsys.readouterr().out)
    assert data["intent"] == "general" and data["matched"]["rule"] == "general"


def test_corpus_evaluation_counts_per_label_and_route(seeded):
    items = [CorpusItem("What is 2+2?", "general"), CorpusItem("What is 2+2?", "web")]
    report = corpus_evaluate(items=items)
    assert report.correct == 1 and report.confusion[("web", "general")] == 1
    assert report.general_to_server == []


ROUTING_0002 = ("routing", "0002_seed_default_routes")
ROUTING_0003 = ("routing", "0003_rule_exclusions_and_evidence_rules")


def migrate(target: tuple[str, str]):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])
    return MigrationExecutor(connection).loader.project_state([target]).apps


def test_the_migration_updates_unedited_seeded_rules_and_keeps_edited_ones():
    try:
        old = migrate(ROUTING_0002)
        IntentRule0002 = old.get_model("routing", "IntentRule")
        IntentRule0002.objects.all().delete()
        importlib.import_module("routing.migrations.0002_seed_default_routes").seed(old, None)
        IntentRule0002.objects.filter(name="web").update(pattern=r"\bbrowse\b")
        IntentRule0002.objects.filter(name="database").update(order=25)

        new = migrate(ROUTING_0003)
        rules = {rule.name: rule for rule in new.get_model("routing", "IntentRule").objects.all()}
        assert (rules["web"].pattern, rules["web"].exclusions) == (r"\bbrowse\b", "")
        assert (rules["database"].order, rules["database"].pattern.count("\n")) == (25, 0)
        assert rules["code"].order == 30 and "traceback" in rules["code"].pattern
        assert rules["filesystem"].order == 40 and "spam" in rules["filesystem"].exclusions
        assert "Evidence" in rules["filesystem"].description
        assert [s.name for s in rules["code"].servers.all()] == ["github"]
        assert rules["general"].pattern == "."

        old = migrate(ROUTING_0002)
        rules = {rule.name: rule for rule in old.get_model("routing", "IntentRule").objects.all()}
        assert rules["web"].pattern == r"\bbrowse\b"
        assert rules["code"].pattern == r"\b(function|class|implement|refactor|debug|method|variable)\b"
        assert (rules["filesystem"].order, rules["filesystem"].description) == (30, "")
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
        routing_invalidate()
