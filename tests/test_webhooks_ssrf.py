"""SSRF: webhook URLs that could reach a private network are refused at submit and again at connect.

WEBHOOK_ALLOW_PRIVATE is off here, as in production. A canary receiver on 127.0.0.1 stands where an
internal service would; every refusal test checks that it saw no connection at all.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from django.utils import timezone

from core import outbound
from queries.models import Job, QueryRequest
from tests.support.factories import RequestFactory
from tests.support.pipeline import run_queued_jobs
from tests.support.receivers import SECRET, Receiver, verify
from webhooks import services
from webhooks.models import WebhookDelivery

PUBLIC = ipaddress.ip_address("93.184.216.34")


@pytest.fixture
def canary():
    with Receiver() as receiver:
        yield receiver
    assert receiver.connections == 0, "the canary on loopback was reached"


@pytest.fixture
def strict(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_SECRET = SECRET
    settings.WEBHOOK_TIMEOUT = 3.0
    return settings


def refused_urls(port: int) -> list[str]:
    """Every way to name a non-public target that the policy must refuse, ``port`` being the canary's."""
    urls = [
        # loopback, by address and by name
        f"http://127.0.0.1:{port}/hook",
        f"http://127.9.9.9:{port}/hook",
        f"http://localhost:{port}/hook",
        f"http://LOCALHOST.:{port}/hook",
        f"http://hooks.localhost:{port}/hook",
        f"http://[::1]:{port}/hook",
        # unspecified: Linux connects 0.0.0.0 and :: to the local host
        f"http://0.0.0.0:{port}/hook",
        f"http://[::]:{port}/hook",
        # private, link-local (the cloud metadata service), CGNAT, unique-local
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/hook",
        "http://100.64.0.1/hook",
        "http://100.127.255.254/hook",
        "http://[fd00::1]/hook",
        # IPv4 inside IPv6: mapped, compatible, NAT64, 6to4
        f"http://[::ffff:127.0.0.1]:{port}/hook",
        f"http://[::ffff:7f00:1]:{port}/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "http://[::127.0.0.1]/hook",
        "http://[64:ff9b::a9fe:a9fe]/hook",
        "http://[2002:7f00:1::1]/hook",
        # multicast and broadcast
        "http://224.0.0.1/hook",
        "http://239.255.255.250/hook",
        "http://[ff02::1]/hook",
        "http://255.255.255.255/hook",
        # integer, octal, hex and short IPv4 spellings
        f"http://2130706433:{port}/hook",
        f"http://0177.0.0.1:{port}/hook",
        f"http://0x7f.0.0.1:{port}/hook",
        f"http://0x7f000001:{port}/hook",
        f"http://127.1:{port}/hook",
        f"http://017700000001:{port}/hook",
        "http://0/hook",
        # user@host and parser confusion
        f"http://user@127.0.0.1:{port}/hook",
        f"http://example.com@127.0.0.1:{port}/hook",
        "http://user:pass@example.com/hook",
        f"http://127.0.0.1:{port}\\@example.com/hook",
        f"http://127.0.0.%31:{port}/hook",
        # not http(s)
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "http:///hook",
    ]
    # This machine's own name, when it resolves to a non-public address (it does in containers).
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)}
    except OSError:
        addresses = set()
    if addresses and not all(
        outbound.address_is_public(ipaddress.ip_address(a.split("%")[0])) for a in addresses
    ):
        urls.append(f"http://{name}:{port}/hook")
    return urls


def test_every_non_public_target_is_refused_at_submit(strict, client, canary):
    for url in refused_urls(canary.port):
        response = client.post("/api/query", {"query": "x", "webhookUrl": url}, format="json")
        assert response.status_code == 400, url
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and "webhookUrl" in error["details"]["fields"], url
    assert not QueryRequest.objects.exists()


def test_every_non_public_target_is_refused_at_connect(strict, db, canary):
    for url in refused_urls(canary.port):
        result = outbound.post(url=url, body=b"{}", headers={}, timeout=3, allow_private=False)
        assert result.refused and result.status is None and result.address == "", url
        assert result.error.startswith("refused: the URL"), (url, result.error)


def test_a_delivery_to_a_non_public_target_fails_at_once_without_a_connection(strict, db, canary, redis_db):
    for url in refused_urls(canary.port)[:12]:
        request = RequestFactory(webhook_url=url)
        services.webhook_on_job_finished(job=request.job)
        delivery = WebhookDelivery.objects.get(request=request)
        attempt = services.webhook_delivery_attempt(delivery_id=delivery.id)
        delivery.refresh_from_db()
        assert delivery.state == "failed" and delivery.attempts == 1, url
        assert attempt.error.startswith("refused") and attempt.address == "" and attempt.status_code is None


def test_public_addresses_pass_the_check():
    for address in ("93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:93.184.216.34"):
        assert outbound.address_is_public(ipaddress.ip_address(address)), address
    outbound.url_check("https://93.184.216.34:8443/hooks?x=1", allow_private=False)
    outbound.url_check("http://[2606:4700:4700::1111]/", allow_private=False)


def test_allow_private_lifts_the_address_policy_but_not_the_url_rules(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    outbound.url_check("http://127.0.0.1:8080/hook")
    outbound.url_check("http://localhost/hook")
    for url in ("ftp://127.0.0.1/", "http://user@127.0.0.1/", "http:///x", "http://a b/"):
        with pytest.raises(outbound.UnsafeUrl):
            outbound.url_check(url)


METADATA_URLS = [
    # link-local, where the metadata services of AWS, GCP, Azure, OCI, DigitalOcean and ECS answer
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.170.2/v2/credentials",
    "http://169.254.0.1/hook",
    "http://[fe80::1]/hook",
    "http://[fe80::a9fe:a9fe]/hook",
    "http://[febf::1]/hook",
    # metadata services outside link-local: AWS over IPv6, Alibaba, Oracle classic, Azure WireServer
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://192.0.0.192/opc/v1/instance/",
    "http://168.63.129.16/machine",
    # the same inside IPv6: mapped, NAT64, 6to4, compatible
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::1]/",
    "http://[::169.254.169.254]/",
    # numeric spellings the resolver turns into 169.254.169.254
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    # the services' names
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/",
    "http://metadata.goog/",
    "http://instance-data.ec2.internal/",
]


def test_metadata_and_link_local_targets_are_refused_even_when_private_ones_are_allowed(settings, client, db):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    for url in METADATA_URLS:
        response = client.post("/api/query", {"query": "x", "webhookUrl": url}, format="json")
        assert response.status_code == 400, url
        assert "webhookUrl" in response.json()["error"]["details"]["fields"], url
        result = outbound.post(url=url, body=b"{}", headers={}, timeout=3, allow_private=True)
        assert result.refused and result.status is None and result.address == "", url
        assert "metadata" in result.error, (url, result.error)
    assert not QueryRequest.objects.exists()
    # What the setting is for still works: a receiver on this machine or the private network.
    for url in ("http://127.0.0.1:8080/hook", "http://10.1.2.3/hook", "http://[fd00::1]/hook"):
        outbound.url_check(url)


def test_a_name_rebound_to_the_metadata_address_is_refused_at_send_with_private_allowed(
    settings, db, monkeypatch, redis_db
):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    metadata = ipaddress.ip_address("169.254.169.254")
    for rebound in (metadata, ipaddress.ip_address("fd00:ec2::254")):
        dns = Rebinding([ipaddress.ip_address("127.0.0.1")], [rebound])
        monkeypatch.setattr(outbound, "resolve_addresses", dns)
        outbound.url_check("http://hooks.example.test/hook")  # submit: loopback, allowed here
        request = RequestFactory(webhook_url="http://hooks.example.test/hook")
        services.webhook_on_job_finished(job=request.job)
        delivery = WebhookDelivery.objects.get(request=request)
        attempt = services.webhook_delivery_attempt(delivery_id=delivery.id)
        delivery.refresh_from_db()
        assert f"link-local or cloud metadata address ({rebound})" in attempt.error
        assert attempt.address == "" and attempt.status_code is None
        assert delivery.state == "failed" and delivery.attempts == 1


class Rebinding:
    """A DNS seam whose answers change between the submit-time check and the send (DNS rebinding)."""

    def __init__(self, *answers: list):
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list:
        self.calls.append(host)
        literal = outbound.literal_address(host)
        if literal is not None:
            return [literal]
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_a_name_rebound_to_loopback_after_submit_is_refused_at_send(strict, client, canary, monkeypatch):
    loopback = ipaddress.ip_address("127.0.0.1")
    dns = Rebinding([PUBLIC], [loopback])
    monkeypatch.setattr(outbound, "resolve_addresses", dns)
    url = f"http://hooks.example.test:{canary.port}/hook"
    response = client.post("/api/query", {"query": "x", "webhookUrl": url}, format="json")
    assert response.status_code == 202, response.content

    job = Job.objects.get(id=response.json()["jobId"])
    Job.objects.filter(id=job.id).update(state=Job.State.COMPLETED, finished_at=timezone.now(), response="4")
    job.refresh_from_db()
    services.webhook_on_job_finished(job=job)
    delivery = WebhookDelivery.objects.get()
    attempt = services.webhook_delivery_attempt(delivery_id=delivery.id)
    delivery.refresh_from_db()
    assert "resolves to a non-public address (127.0.0.1)" in attempt.error
    assert delivery.state == "failed" and attempt.address == ""
    assert dns.calls == ["hooks.example.test", "hooks.example.test"]


def test_a_name_with_one_private_address_among_public_ones_is_refused(strict, monkeypatch, canary):
    monkeypatch.setattr(outbound, "resolve_addresses", Rebinding([PUBLIC, ipaddress.ip_address("127.0.0.1")]))
    result = outbound.post(
        url=f"http://mixed.example.test:{canary.port}/",
        body=b"{}",
        headers={},
        timeout=3,
        allow_private=False,
    )
    assert result.refused and "127.0.0.1" in result.error


@pytest.mark.django_db(transaction=True)
def test_the_whole_pipeline_never_reaches_a_rebound_canary(strict, real_claude, client, canary, monkeypatch):
    monkeypatch.setattr(
        outbound, "resolve_addresses", Rebinding([PUBLIC], [ipaddress.ip_address("127.0.0.1")])
    )
    url = f"http://hooks.example.test:{canary.port}/hook"
    response = client.post("/api/query", {"query": "What is 2+2?", "webhookUrl": url}, format="json")
    assert response.status_code == 202
    run_queued_jobs()
    delivery = WebhookDelivery.objects.get()
    assert Job.objects.get().state == "completed"
    assert delivery.state == "failed" and "non-public" in delivery.last_error


def test_the_connection_goes_to_the_checked_address_with_the_names_host_header(
    settings, db, monkeypatch, redis_db
):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_SECRET = SECRET
    dns = Rebinding([ipaddress.ip_address("127.0.0.1")], [ipaddress.ip_address("10.9.9.9")])
    monkeypatch.setattr(outbound, "resolve_addresses", dns)
    with Receiver() as receiver:
        request = RequestFactory(webhook_url=f"http://hooks.example.test:{receiver.port}/hook")
        services.webhook_on_job_finished(job=request.job)
        attempt = services.webhook_delivery_attempt(delivery_id=WebhookDelivery.objects.get().id)
    # One resolution per send, and the address it returned is the one dialled.
    assert dns.calls == ["hooks.example.test"]
    assert attempt.status_code == 200 and attempt.address == "127.0.0.1"
    [got] = receiver.requests
    assert got.headers["host"] == f"hooks.example.test:{receiver.port}"
    verify(got)


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for hooks.example.test, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed for the https webhook test (apt-get install openssl)")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=hooks.example.test",
            "-addext",
            "subjectAltName=DNS:hooks.example.test",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return tmp_path


def test_https_to_the_checked_address_sends_sni_and_verifies_the_name(settings, monkeypatch, certificate):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    server_names: list[str | None] = []
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    server.sni_callback = lambda sock, name, ctx: server_names.append(name)
    trusting = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
    monkeypatch.setattr(outbound, "tls_context", lambda: trusting)
    monkeypatch.setattr(outbound, "resolve_addresses", Rebinding([ipaddress.ip_address("127.0.0.1")]))

    with Receiver(tls=server) as receiver:
        ok = outbound.post(
            url=receiver.url(host="hooks.example.test"), body=b"{}", headers={}, timeout=5, allow_private=True
        )
        wrong = outbound.post(
            url=receiver.url(host="other.example.test"), body=b"{}", headers={}, timeout=5, allow_private=True
        )
    assert ok.status == 200 and ok.address == "127.0.0.1"
    assert server_names[0] == "hooks.example.test"
    assert wrong.status is None and wrong.error.startswith("TLS") and "other.example.test" in wrong.error
    assert len(receiver.requests) == 1, "no request is sent over a connection whose certificate is wrong"
