"""The monitoring deployment: docker-compose services, Prometheus's config, Grafana's provisioning and
dashboard, checked without a container engine (PyYAML, promtool, and a real scrape of this gateway)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from django.test import Client

from core import metrics
from tests.support import REPO
from tests.support.metrics import parse_samples, promtool
from tests.support.pipeline import run_queued_jobs

COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "claude-gateway.json"

REQUIRED_PANELS = {
    "Queue depth by state": {"claude_queue_size"},
    "Jobs per minute by outcome": {"claude_jobs_completed_total", "claude_jobs_failed_total"},
    "Cache hit ratio": {"claude_cache_hits_total", "claude_cache_misses_total"},
    "Dedup joins per minute": {"claude_dedup_hits_total"},
    "CLI execution duration p50 / p95": {"claude_execution_duration_seconds_bucket"},
    "Cost per hour": {"claude_cost_usd_total"},
    "Webhook deliveries per minute by outcome": {"claude_webhook_deliveries_total"},
}
METRIC_NAME = re.compile(r"\b((?:claude|django)_[a-z0-9_]+)\b")


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_compose_runs_prometheus_and_grafana_with_the_files_this_repository_ships():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"web", "worker", "postgres", "redis", "prometheus", "grafana"} <= set(services)
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    prometheus = services["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    # The scrape token reaches Prometheus as the file its config names, and the web as METRICS_TOKEN.
    assert prometheus["secrets"] == ["metrics_token"]
    assert compose["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    assert "METRICS_TOKEN" in services["web"]["environment"]
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert grafana["depends_on"] == ["prometheus"] and prometheus["depends_on"] == ["web"]


def test_compose_file_passes_docker_compose_config_when_the_plugin_is_there():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("docker compose is not installed here")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"SECRET_KEY": "x", "GRAFANA_ADMIN_PASSWORD": "x", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr


def test_prometheus_config_is_valid_and_scrapes_the_web_with_the_token():
    result = subprocess.run(
        [promtool(), "check", "config", "--syntax-only", str(PROMETHEUS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS.read_text())
    gateway = next(job for job in config["scrape_configs"] if job["job_name"] == "claude-gateway")
    assert gateway["metrics_path"] == "/metrics"
    assert gateway["static_configs"][0]["targets"] == ["web:3000"]
    assert gateway["authorization"]["credentials_file"] == "/run/secrets/metrics_token"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_folder():
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "claude-gateway.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "claude-gateway" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert panel["targets"] and all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])


def test_dashboard_has_every_required_panel_on_the_right_metrics():
    exprs: dict[str, set[str]] = {}
    for title, expr in dashboard_exprs():
        exprs.setdefault(title, set()).update(METRIC_NAME.findall(expr))
    for title, names in REQUIRED_PANELS.items():
        assert title in exprs, f"missing panel {title!r}"
        assert names <= exprs[title], f"{title}: {sorted(exprs[title])}"


def test_dashboard_queries_are_valid_promql(tmp_path):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db(transaction=True)
def test_every_metric_the_dashboard_uses_is_in_a_real_scrape(client, real_claude):
    client.post("/api/query", {"query": "What is 2+2?"}, format="json")
    run_queued_jobs()
    metrics.webhook_delivery_counted("delivered")
    served = {name for name, _labels in parse_samples(Client().get("/metrics").content.decode())}
    used = {name for _, expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    assert used - served == set()
