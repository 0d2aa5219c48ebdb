"""A real etcd cluster on loopback for tests (Debian `etcd-server`), started and stopped by PID."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.support.daemon import free_port

START_TIMEOUT = 30.0


def etcd_available() -> bool:
    return shutil.which("etcd") is not None


class EtcdMember:
    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.data_dir = workdir / name
        self.client_port = free_port(socket.SOCK_STREAM)
        self.peer_port = free_port(socket.SOCK_STREAM)
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, state: str = "new") -> None:
        argv = [
            "etcd", "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"http://{self.endpoint}",
            "--advertise-client-urls", f"http://{self.endpoint}",
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", "simple-tftpd-tests",
            # Fast elections on loopback keep failover tests short.
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
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
    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.members = [EtcdMember(f"etcd{i}", workdir) for i in range(size)]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

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
