"""Two gateway hosts on one machine: each a web (gunicorn) and a worker pool, as scripts/serve starts
them, in a network and UTS namespace of its own (its own address and hostname), sharing PostgreSQL
and a Redis of the test's own over the test's bridge, with the real CLI against the mock API.

Identical submissions through both webs make one job; both hosts' /metrics agree on what they read
from the shared stores; a host that dies whole (every process in its namespace SIGKILLed) leaves its
running jobs to end ``worker_lost`` and its queued ones to run on the other host; and nothing is
left behind, not a process, not a namespace, not a link.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from django.conf import settings as django_settings
from rq import Worker

from queries import services
from queries.models import Job, QueryRequest
from tests.mockapi import MockAnthropic
from tests.support import REPO
from tests.support.metrics import Samples, parse_samples, value
from tests.support.netns import Network, TcpForwarder, free_port_on, namespace_pids, netns_unavailable
from tests.support.processes import Processes, process_environment
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for

# Skipped, with the reason, only where namespaces cannot be made (not root, no iproute2).
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HOSTS = ("a", "b")
PORT = 3000
POOL = 2
# Small, so that a dead host's jobs are settled within seconds: heartbeats every second, a worker
# silent for 3 s is dead, and every worker sweeps (reconciles) every 5 s (the least allowed).
LIVENESS = {"WORKER_HEARTBEAT_INTERVAL": "1", "WORKER_STALE_AFTER": "3", "WEBHOOK_SWEEP_INTERVAL": "5"}


@dataclass
class Host:
    name: str
    hostname: str
    url: str
    namespace: str


@dataclass
class Cluster:
    network: Network
    hosts: dict[str, Host]
    redis: RedisServer
    key: str
    processes: Processes
    left_after_stop: dict[str, list[int]] = field(default_factory=dict)

    def session(self) -> requests.Session:
        """Requests with the cluster's key (requests' pool of 10 connections a host is enough)."""
        session = requests.Session()
        session.headers.update(Authorization=f"Bearer {self.key}")
        return session


def _procfile() -> dict[str, str]:
    lines = (REPO / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


PROCFILE = _procfile()


def _database_url(address: str, port: int) -> str:
    db = django_settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{address}:{port}/{db['NAME']}"


@contextmanager
def two_hosts(tmp_path: Path) -> Iterator[Cluster]:
    """The network, the shared services and both hosts; on the way out (a failure too) every process
    is stopped (host b's and what is left of host a's by SIGTERM, as scripts/serve's supervisor
    would), what a stop left in a namespace is noted in ``left_after_stop`` and killed, and the
    namespaces, links and services are gone."""
    if reason := netns_unavailable():
        pytest.skip(f"no network namespaces here: {reason}")
    with ExitStack() as cleanup:
        # Undone in reverse, each step even if another failed: the services, then the network.
        network = Network(list(HOSTS))
        network.create()
        cleanup.callback(network.delete)
        redis = RedisServer(tmp_path / "redis", host=network.gateway_ip)
        cleanup.callback(redis.stop)
        redis.start()
        db = django_settings.DATABASES["default"]
        forwarder = TcpForwarder(
            (network.gateway_ip, free_port_on(network.gateway_ip)), (db["HOST"], int(db["PORT"]))
        )
        cleanup.callback(forwarder.stop)
        forwarder.start()
        mock = MockAnthropic(host=network.gateway_ip)
        cleanup.callback(mock.stop)
        mock.start()
        processes = Processes(tmp_path)
        cluster = Cluster(network, {}, redis, "", processes)
        cleanup.callback(_stop_hosts, cluster)
        yield _start_hosts(cluster, mock, forwarder.address, tmp_path)


def _stop_hosts(cluster: Cluster) -> None:
    """SIGTERM (then SIGKILL) to every process started; note what a stop left in a namespace."""
    cluster.processes.stop_all()
    namespaces = cluster.network.namespaces.values()
    cluster.left_after_stop = {ns: pids for ns in namespaces if (pids := namespace_pids(ns))}


def _start_hosts(cluster: Cluster, mock: MockAnthropic, database: tuple[str, int], tmp_path: Path) -> Cluster:
    """Both hosts' web and worker pool, once every web serves and every worker has registered."""
    network, processes, redis = cluster.network, cluster.processes, cluster.redis
    _, cluster.key = services.api_key_create(name="multihost")
    for name in HOSTS:
        address = network.addresses[name]
        env = process_environment(
            mock,
            tmp_path / name / "home",
            tmp_path / name / "workdir",
            DATABASE_URL=_database_url(*database),
            REDIS_URL=redis.url,
            GATEWAY_VAR_DIR=str(tmp_path / name / "var"),
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / name / "prometheus"),
            HOST=address,
            PORT=str(PORT),
            WEB_CONCURRENCY="2",
            QUEUE_CONCURRENCY=str(POOL),
            ALLOWED_HOSTS=",".join(network.addresses.values()),
            **LIVENESS,
        )
        # The Procfile's two commands, as scripts/serve runs them, in the host's namespace.
        for process, command in PROCFILE.items():
            processes.start(network.command(name, ["sh", "-c", command]), env, f"{name}-{process}")
        cluster.hosts[name] = Host(
            name, network.hostnames[name], f"http://{address}:{PORT}", network.namespaces[name]
        )
    for host in cluster.hosts.values():
        wait_for(lambda host=host: _serves(host.url), timeout=60, message=f"host {host.name}'s web")
    connection = redis.client()
    wait_for(
        lambda: len(Worker.all(connection=connection)) == POOL * len(HOSTS),
        timeout=60,
        message="both hosts' worker pools to register",
    )
    return cluster


def test_two_hosts_share_dedup_metrics_and_a_dead_hosts_jobs(transactional_db: None, tmp_path: Path):
    """One cluster for the three checks (starting one takes most of the time), then its teardown."""
    with two_hosts(tmp_path) as cluster:
        _deduplicate_across_hosts_and_agree_on_metrics(cluster)
        _kill_host_a_and_settle(cluster)
    # Host b stopped on SIGTERM with nothing left in its namespace (CLIs, MCP servers); every process
    # the test started has exited; the namespaces, veths and bridge are gone.
    assert cluster.left_after_stop == {}
    assert all(proc.poll() is not None for proc in cluster.processes.started)
    assert cluster.redis.proc is None
    assert cluster.network.leftovers() == []


def _serves(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False


def _scrape(url: str) -> Samples:
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return parse_samples(response.text)


def _shared(samples: Samples) -> Samples:
    """The gateway's figures, which every host reads from the shared Redis (django-prometheus's HTTP
    figures are each web's own)."""
    return {key: v for key, v in samples.items() if key[0].startswith("claude_")}


def _deduplicate_across_hosts_and_agree_on_metrics(cluster: Cluster) -> None:
    a, b = cluster.hosts["a"], cluster.hosts["b"]
    assert a.hostname != b.hostname
    http = cluster.session()
    query = "[[mock:drip=10 gap=0.2]] the same question, through both hosts"
    barrier = threading.Barrier(6)

    def submit(index: int) -> requests.Response:
        url = (a if index % 2 else b).url
        barrier.wait()
        return http.post(f"{url}/api/query", json={"query": query}, timeout=30)

    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(submit, range(6)))
    assert all(r.status_code == 202 for r in replies), [(r.status_code, r.text) for r in replies]
    job_ids = {r.json()["jobId"] for r in replies}
    assert len(job_ids) == 1
    assert sum(1 for r in replies if r.json().get("deduplicated")) == 5
    assert Job.objects.filter(query=query).count() == 1
    assert QueryRequest.objects.filter(job__query=query).count() == 6
    (job_id,) = job_ids

    def finished_on(host: Host) -> dict | None:
        body = http.get(f"{host.url}/api/query/{job_id}", timeout=10).json()
        return body if body["state"] == "completed" else None

    wait_for(lambda: finished_on(a), timeout=60, message="the job to complete")
    assert (
        finished_on(b)["result"]["response"] == "part1 part2 part3 part4 part5 part6 part7 part8 part9 part10"
    )
    job = Job.objects.get(id=job_id)
    assert job.worker_name.rpartition(":")[0] in (a.hostname, b.hostname)

    def agree() -> Samples | None:
        first, second = _shared(_scrape(a.url)), _shared(_scrape(b.url))
        return first if first == second else None

    samples = wait_for(agree, timeout=30, message="both hosts' /metrics to agree")
    assert value(samples, "claude_metrics_store_up") == 1
    assert value(samples, "claude_jobs_completed_total") == 1
    assert value(samples, "claude_dedup_hits_total") == 5
    assert value(samples, "claude_cache_misses_total") == 6  # each submission looked
    assert value(samples, "claude_queue_size", queue="default", state="queued") == 0
    workers = sum(v for (name, _), v in samples.items() if name == "claude_workers")
    assert workers == POOL * len(HOSTS)


def _kill_host_a_and_settle(cluster: Cluster) -> None:
    a, b = cluster.hosts["a"], cluster.hosts["b"]
    http = cluster.session()

    def submit(host: Host, n: int) -> str:
        query = f"[[mock:drip=30 gap=0.2]] job {n}"
        reply = http.post(f"{host.url}/api/query", json={"query": query}, timeout=30)
        assert reply.status_code == 202, reply.text
        return reply.json()["jobId"]

    # One job for each of the four workers (each runs one at a time), all submitted through host a.
    running = [submit(a, n) for n in range(POOL * len(HOSTS))]

    def hosts_running() -> dict[str, list[str]] | None:
        jobs = Job.objects.filter(id__in=running, state=Job.State.RUNNING)
        by_host: dict[str, list[str]] = {}
        for job in jobs:
            by_host.setdefault(job.worker_name.rpartition(":")[0], []).append(str(job.id))
        return by_host if sum(map(len, by_host.values())) == len(running) else None

    by_host = wait_for(hosts_running, timeout=60, message="every worker of both hosts to run a job")
    assert sorted(map(len, by_host.values())) == [POOL, POOL]
    on_a = by_host[a.hostname]
    # Two more: no worker is free, so they wait in the queue.
    queued = [submit(a, n) for n in range(len(running), len(running) + 2)]
    assert Job.objects.filter(id__in=queued, state=Job.State.QUEUED).count() == 2

    # Host a dies whole: its web, its pool and its workers, their CLIs.
    assert cluster.network.namespaces["a"] == a.namespace
    cluster.network.kill("a")

    def settled() -> bool:
        states = {str(j.id): j for j in Job.objects.filter(id__in=running + queued)}
        return all(states[job_id].state in (Job.State.COMPLETED, Job.State.FAILED) for job_id in states)

    wait_for(settled, timeout=90, message="host a's jobs to be settled by host b")
    jobs = {str(j.id): j for j in Job.objects.filter(id__in=running + queued)}
    for job_id in on_a:
        assert (jobs[job_id].state, jobs[job_id].error_type) == (Job.State.FAILED, Job.ErrorType.WORKER_LOST)
    for job_id in [*by_host[b.hostname], *queued]:
        assert jobs[job_id].state == Job.State.COMPLETED, (jobs[job_id].state, jobs[job_id].error_message)
    for job_id in queued:
        assert jobs[job_id].worker_name.rpartition(":")[0] == b.hostname
    # Host b still answers, and counts host a's workers as dead.
    body = http.get(f"{b.url}/api/query/{on_a[0]}", timeout=10).json()
    assert body["state"] == "failed" and body["error"]["type"] == "worker_lost"
    ready = requests.get(f"{b.url}/ready", timeout=10).json()
    assert ready["components"]["workers"]["workers"] == POOL, ready
    samples = _scrape(b.url)
    assert value(samples, "claude_jobs_failed_total", reason="worker_lost") == POOL
    assert value(samples, "claude_jobs_completed_total") == 1 + POOL + len(queued)
