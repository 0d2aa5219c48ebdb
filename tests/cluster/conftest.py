"""A real site on loopback: a 3-member etcd cluster and 3 daemons, shared by a module."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import fetch_curl
from tests.support.daemon import Daemon, wait_for
from tests.support.etcd import EtcdCluster, etcd_available

TOKEN = "test-admin-token-0123456789"

pytestmark = pytest.mark.skipif(
    not etcd_available(), reason="etcd-server is installed by make test"
)


def node_config(
    index: int, etcd: EtcdCluster, workdir: Path, workers: int = 1, cluster_id: str = "site-a"
) -> dict[str, Any]:
    size = len(etcd.endpoints)
    return {
        "node": {"node_id": f"node{index}", "cluster_id": cluster_id},
        "api": {"token": TOKEN},
        "clustering": {
            "enabled": True,
            # Each node prefers a different etcd member, as in a real site.
            "etcd_endpoints": etcd.endpoints[index % size :] + etcd.endpoints[: index % size],
            "state_dir": str(workdir / f"{cluster_id}-node{index}-state"),
            "lease_ttl": 2,
            # Long: catch-up must come from the start-up sync, the watch and retries, not a timer.
            "resync_seconds": 600,
            "replication": {"gc_grace_seconds": 3600},
        },
        "performance": {"thread_pool": {"workers": workers}},
    }


class Site:
    def __init__(self, workdir: Path, etcd: EtcdCluster, site_id: str = "site-a") -> None:
        self.workdir = workdir
        self.etcd = etcd
        self.site_id = site_id
        self.nodes: list[Daemon] = []

    def create_node(self, workers: int = 1) -> Daemon:
        """A configured, not yet started node (its ports are known: peers can point at it)."""
        index = len(self.nodes)
        root = self.workdir / f"{self.site_id}-node{index}-root"
        root.mkdir()
        config = node_config(index, self.etcd, self.workdir, workers, self.site_id)
        daemon = Daemon(self.workdir, root, config)
        daemon.config["clustering"]["advertise"] = f"127.0.0.1:{daemon.api_port}"
        self.nodes.append(daemon)
        return daemon

    def add_node(self, workers: int = 1) -> Daemon:
        return self.create_node(workers).start()

    def request(
        self,
        node: Daemon,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
    ) -> tuple[int, Any]:
        all_headers = {"Authorization": f"Bearer {token}"} if token else {}
        all_headers.update(headers or {})
        req = urllib.request.Request(node.url(path), body, all_headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=15, context=node.client_ssl) as response:
                return int(response.status), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read() or b"null")

    def upload(self, node: Daemon, path: str, data: bytes, **headers: str) -> tuple[int, Any]:
        return self.request(node, "PUT", f"/api/v1/files/{path}", data, headers)

    def delete(self, node: Daemon, path: str) -> tuple[int, Any]:
        return self.request(node, "DELETE", f"/api/v1/files/{path}")

    def fetch(self, node: Daemon, path: str) -> bytes | None:
        # A file of its own per fetch: tests fetch from several threads at once.
        local = self.workdir / f"fetch-{uuid.uuid4().hex}"
        try:
            fetch_curl("127.0.0.1", node.port, path, local)
            return local.read_bytes() if local.exists() else None
        finally:
            local.unlink(missing_ok=True)

    def status(self, node: Daemon) -> dict[str, Any]:
        _, status = node.get_json("/api/v1/cluster/status")
        return dict(status)

    def wait_served_everywhere(self, path: str, data: bytes | None, timeout: float = 20) -> bool:
        """Every running node serves `data` at `path` (None: serves nothing there)."""

        def check() -> bool:
            return all(self.fetch(n, path) == data for n in self.running())

        return wait_for(check, timeout, interval=0.2)

    def describe(self, path: str) -> str:
        """What each node serves at `path` and how it sees the cluster (for failure messages)."""
        lines = []
        for node in self.nodes:
            data = self.fetch(node, path)
            status = self.status(node)
            lines.append(
                f"{status.get('node_id')}: {path} -> "
                f"{sha(data)[:12] if data is not None else None}; leader={status.get('leader')} "
                f"quorum={status.get('quorum')} pending={status.get('pending_entries')} "
                f"errors={status.get('recent_errors')}"
            )
        return "\n".join(lines)

    def running(self) -> list[Daemon]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def leader(self, via: Daemon) -> str | None:
        return self.status(via).get("leader")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("site")
    etcd = EtcdCluster(workdir).start()
    site = Site(workdir, etcd)
    try:
        site.add_node()
        site.add_node()
        site.add_node(workers=2)  # the cluster node in a supervisor, TFTP in forked workers
        assert wait_for(lambda: all(site.status(n).get("leader") for n in site.nodes), 20)
        yield site
    finally:
        site.stop()
        etcd.stop()
