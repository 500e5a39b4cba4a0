"""Network and UTS namespaces for tests that run several gateway hosts on this one machine.

``Network`` makes a bridge in the root namespace (``10.213.N.1/24``, N one that no interface
here uses) and, per host, a namespace joined to it by a veth pair (``10.213.N.2``, ``.3``…). A process
started with ``Network.command`` runs inside that namespace under its own hostname (a UTS namespace
of its own, through ``unshare --uts``), so to the gateway it is another machine: another
``socket.gethostname()``, another address, the same process ids as seen from here (no PID
namespace). Everything is deleted again by ``Network.delete``, which first kills what still runs
in the namespaces.

``TcpForwarder`` lets the hosts reach a service that listens on 127.0.0.1 only (the shared
PostgreSQL): it listens on the bridge's address and connects to 127.0.0.1, so the service sees
local connections and its configuration stays as it is.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

SUBNET_PREFIX = "10.213"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no ``ip``/``unshare``), or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "unshare", "hostname") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    probe = f"gwprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def namespace_pids(namespace: str) -> list[int]:
    """The processes running in a network namespace (none once it is gone)."""
    found = _ip("netns", "pids", namespace, check=False)
    return [int(pid) for pid in found.stdout.split()] if found.returncode == 0 else []


def namespace_kill(namespace: str, *, timeout: float = 10.0) -> None:
    """SIGKILL every process in the namespace until none is left (a respawn is killed too)."""
    deadline = time.monotonic() + timeout
    while pids := namespace_pids(namespace):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes left in namespace {namespace}: {pids}")
        time.sleep(0.05)


# Held while a network picks its subnet and makes its bridge, so that two test processes at once
# (pytest-xdist) never take the same one.
_LOCK_FILE = Path(tempfile.gettempdir()) / "gateway-test-netns.lock"


def _subnets_in_use() -> set[str]:
    addresses = _ip("-o", "-4", "addr", "show").stdout.split()
    return {".".join(a.split("/")[0].split(".")[:3]) for a in addresses if a.startswith(f"{SUBNET_PREFIX}.")}


class Network:
    """A bridge with an address here and namespaces on it, one per host (module docstring)."""

    def __init__(self, hosts: list[str]):
        tag = os.getpid() % 10000
        self.subnet = ""
        self.bridge = f"gwbr{tag}"
        # Interface names are at most 15 characters.
        self.namespaces = {host: f"gw{tag}{host}" for host in hosts}
        self.veths = {host: f"gwv{tag}{host}"[:15] for host in hosts}
        self.addresses: dict[str, str] = {}
        self.hostnames = {host: f"gwhost-{host}-{tag}" for host in hosts}

    def create(self) -> None:
        """Make the bridge and the namespaces; on any failure, whatever was made is deleted."""
        try:
            with open(_LOCK_FILE, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                used = _subnets_in_use()
                start = os.getpid() % 200
                free = (f"{SUBNET_PREFIX}.{(start + i) % 200 + 20}" for i in range(200))
                self.subnet = next(subnet for subnet in free if subnet not in used)
                _ip("link", "add", self.bridge, "type", "bridge")
                _ip("addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            self.addresses = {host: f"{self.subnet}.{i + 2}" for i, host in enumerate(self.namespaces)}
            for host, namespace in self.namespaces.items():
                veth, inside = self.veths[host], "eth0"
                _ip("netns", "add", namespace)
                _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
                _ip("link", "set", f"{veth}p", "netns", namespace)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", namespace, "link", "set", f"{veth}p", "name", inside)
                _ip("-n", namespace, "addr", "add", f"{self.addresses[host]}/24", "dev", inside)
                _ip("-n", namespace, "link", "set", inside, "up")
                _ip("-n", namespace, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            self.delete()
            raise RuntimeError(f"could not make the test network: {exc.stderr}") from exc

    @property
    def gateway_ip(self) -> str:
        """The bridge's address: where the hosts reach the shared services."""
        return f"{self.subnet}.1"

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside the host's namespace under its hostname (exec'd: the same process)."""
        return [
            "ip",
            "netns",
            "exec",
            self.namespaces[host],
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.hostnames[host],
            *argv,
        ]

    def kill(self, host: str) -> None:
        namespace_kill(self.namespaces[host])

    def delete(self) -> None:
        """Kill what runs in the namespaces, then delete them (their veths go with them) and the bridge."""
        for namespace in self.namespaces.values():
            namespace_kill(namespace)
            _ip("netns", "del", namespace, check=False)
        for veth in self.veths.values():
            _ip("link", "del", veth, check=False)
        _ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        """The namespaces and links of this network that still exist (none after ``delete``)."""
        namespaces = _ip("netns", "list").stdout
        links = _ip("-o", "link", "show").stdout
        names = [*self.namespaces.values(), *self.veths.values(), self.bridge]
        return [
            name
            for name in names
            if any(line.split()[0] == name for line in namespaces.splitlines() if line.strip())
            or f": {name}:" in links
            or f": {name}@" in links
        ]


class TcpForwarder:
    """Listens on ``listen`` and pipes each connection to ``target`` (threads; for a test's load)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self._server = socket.create_server(listen, reuse_port=False)
        self._server.settimeout(0.2)
        self.address = self._server.getsockname()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="tcp-forwarder", daemon=True)

    def start(self) -> TcpForwarder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                for sock in (source, sink):
                    if sock in self._sockets:
                        self._sockets.discard(sock)
                        sock.close()


def free_port_on(address: str) -> int:
    """A port on ``address`` that nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]
