"""A real etcd cluster on loopback for tests (Debian `etcd-server`), started and stopped by PID.

With `tls`, client and peer traffic are mutual TLS, set up by the environment that
`templates/etcd/etcd-tls.env.j2` renders for a site's members: the template is what is tested."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import jinja2

from tests.support.daemon import free_port

START_TIMEOUT = 30.0
TLS_TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "etcd" / "etcd-tls.env.j2"


def etcd_available() -> bool:
    return shutil.which("etcd") is not None


@dataclass(frozen=True)
class EtcdTls:
    """The member's certificate (also its peer and client certificate) and the CA bundle."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def environment(self, member: str) -> dict[str, str]:
        """The ETCD_* variables the site template sets (systemd reads the same lines)."""
        template = jinja2.Template(TLS_TEMPLATE.read_text(), undefined=jinja2.StrictUndefined)
        text = template.render(
            node=SimpleNamespace(name=member),
            site="tests",
            etcd_tls=SimpleNamespace(
                ca=self.ca_file, cert=self.cert_file, key=self.key_file, crl=self.crl_file
            ),
        )
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        return dict(line.split("=", 1) for line in lines)


class EtcdMember:
    def __init__(self, name: str, workdir: Path, tls: EtcdTls | None = None) -> None:
        self.name = name
        self.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self.data_dir = workdir / name
        self.client_port = free_port(socket.SOCK_STREAM)
        self.peer_port = free_port(socket.SOCK_STREAM)
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, state: str = "new") -> None:
        argv = [
            "etcd", "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", "simple-tftpd-tests",
            # Fast elections on loopback keep failover tests short.
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]  # fmt: skip
        env = dict(os.environ)
        if self.tls is not None:
            env.update(self.tls.environment(self.name))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def healthy(self) -> bool:
        try:
            context = self.tls.client_context() if self.tls is not None else None
            url = f"{self.client_url}/health"
            with urllib.request.urlopen(url, timeout=1, context=context) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class EtcdCluster:
    def __init__(self, workdir: Path, size: int = 3, tls: EtcdTls | None = None) -> None:
        self.members = [EtcdMember(f"etcd{i}", workdir, tls) for i in range(size)]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        # Plain ones stay "host:port", as the cluster tests have always configured them.
        return [m.client_url if m.tls else m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.start(self.initial_cluster)
        self.wait_healthy()
        return self

    def wait_healthy(self, members: list[EtcdMember] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = members or self.members
        while time.monotonic() < deadline:
            if all(m.healthy() for m in waiting):
                return
            time.sleep(0.2)
        logs = "\n".join(m.log_path.read_text(errors="replace")[-2000:] for m in waiting)
        raise RuntimeError(f"etcd not healthy in {START_TIMEOUT}s:\n{logs}")

    def restart(self, member: EtcdMember) -> None:
        member.start(self.initial_cluster, state="existing")
        self.wait_healthy([member])

    def stop(self) -> None:
        for member in self.members:
            with contextlib.suppress(Exception):
                member.stop()
