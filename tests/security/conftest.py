"""A site CA, an etcd member on mutual TLS, and TLS daemons: two nodes of site A and one of
site B (both sites share the etcd member under their own cluster ids, which keeps the module
to one etcd process), with site sync between A and B."""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Site
from tests.support.daemon import Daemon, deep_merge, free_port, wait_for
from tests.support.etcd import EtcdCluster, EtcdTls, etcd_available
from tests.support.pki import Issued, Pki

READER_TOKEN = "grafana-read-only-token-0123"
CI_TOKEN = "ci-admin-token-0123456789ab"
SYNC_TOKEN = "site-sync-token-0123456789"


@dataclass(frozen=True)
class Identities:
    """Client certificates: of the site CA (mapped, unknown, expired, revoked) and of a CA
    nobody trusts, under the admin's own name."""

    admin: Issued
    reader: Issued
    unknown: Issued
    expired: Issued
    revoked: Issued
    rogue_admin: Issued


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("rogue-pki"), name="test site CA")  # same name, other key


@pytest.fixture(scope="session")
def identities(pki: Pki, rogue_pki: Pki) -> Identities:
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=60)
    revoked = pki.issue("ops-fired")
    pki.revoke(revoked)
    return Identities(
        admin=pki.issue("ops-admin"),
        reader=pki.issue("ops-reader"),
        unknown=pki.issue("stranger"),
        expired=pki.issue("ops-admin-old", days=30, now=long_ago),
        revoked=revoked,
        rogue_admin=rogue_pki.issue("ops-admin"),
    )


def access_section() -> dict[str, Any]:
    return {
        "certificates": [
            {"name": "ops-admin", "role": "admin"},
            {"name": "ops-admin-old", "role": "admin"},
            {"name": "ops-fired", "role": "admin"},
            {"name": "ops-reader", "role": "read_only"},
        ],
        "tokens": [
            {"name": "grafana", "token": READER_TOKEN, "role": "read_only"},
            {"name": "ci", "token": CI_TOKEN, "role": "admin"},
        ],
    }


class TlsSite(Site):
    """tests.cluster's Site, with TLS on every node, the access section and site sync."""

    def __init__(
        self, workdir: Path, etcd: EtcdCluster, pki: Pki, admin: Issued, site_id: str
    ) -> None:
        super().__init__(workdir, etcd, site_id)
        self.pki = pki
        self.admin = admin
        self.node_certs: list[Issued] = []

    def create_node(self, workers: int = 1, **tls: Any) -> Daemon:
        daemon = super().create_node(workers)
        index = len(self.nodes) - 1
        node_cert = self.pki.issue(f"{self.site_id}-node{index}")
        extra = {
            "api": {"metrics_port": free_port(socket.SOCK_STREAM)},
            "security": {"tls": self.pki.tls_config(node_cert, **tls), "access": access_section()},
            "multi_site": {
                "enabled": True,
                "site_id": self.site_id,
                "sync": {"enabled": True, "token": SYNC_TOKEN, "interval_seconds": 0.5},
            },
        }
        daemon.config = deep_merge(daemon.config, extra)
        daemon.client_ssl = self.pki.client_context(self.admin)
        self.node_certs.append(node_cert)
        return daemon

    def add_peer(self, node: Daemon, site_id: str, peer: Daemon) -> None:
        sync = node.config["multi_site"]["sync"]
        sync["peer_sites"] = [{"site_id": site_id, "endpoint": f"127.0.0.1:{peer.api_port}"}]


@dataclass
class World:
    a: TlsSite
    b: TlsSite
    etcd: EtcdCluster


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, identities: Identities
) -> Iterator[World]:
    if not etcd_available():
        pytest.skip("etcd-server is installed by make test")
    workdir = tmp_path_factory.mktemp("tls-world")
    member = pki.issue("etcd-member")
    tls = EtcdTls(pki.ca_file, member.cert_file, member.key_file, pki.crl_file)
    etcd = EtcdCluster(workdir, size=1, tls=tls).start()
    a = TlsSite(workdir, etcd, pki, identities.admin, "site-a")
    b = TlsSite(workdir, etcd, pki, identities.admin, "site-b")
    try:
        a0 = a.create_node()  # requires client certificates
        a1 = a.create_node(require_client_cert=False)  # tokens without a certificate, too
        b0 = b.create_node()
        a.add_peer(a0, "site-b", b0)
        a.add_peer(a1, "site-b", b0)
        b.add_peer(b0, "site-a", a0)
        for node in (a0, a1, b0):
            node.start()
        assert wait_for(lambda: all(s.status(n).get("leader") for s in (a, b) for n in s.nodes), 20)
        yield World(a, b, etcd)
    finally:
        a.stop()
        b.stop()
        etcd.stop()
