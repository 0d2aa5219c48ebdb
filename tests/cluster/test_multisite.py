"""Three real sites on loopback, each with its own etcd and daemons, chained A <-> B <-> C
(C hears of A only through B). Every peer connection goes through a TCP proxy so a test can
partition a site."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import TOKEN, Site, sha
from tests.interop.conftest import needs_clients
from tests.support.daemon import Daemon, wait_for
from tests.support.etcd import EtcdCluster, etcd_available
from tests.support.proxy import TcpProxy

pytestmark = [
    pytest.mark.cluster,
    needs_clients,
    pytest.mark.skipif(not etcd_available(), reason="etcd-server is installed by make test"),
]

SYNC_TOKEN = "site-sync-token-0123456789"
TOPOLOGY = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}


class World:
    def __init__(self, workdir: Path) -> None:
        self.sites: dict[str, Site] = {}
        self.proxies: dict[str, TcpProxy] = {}
        self.etcds: list[EtcdCluster] = []
        for name in TOPOLOGY:
            etcd = EtcdCluster(workdir / f"etcd-{name}", size=1)
            (workdir / f"etcd-{name}").mkdir()
            self.etcds.append(etcd.start())
            site = Site(workdir, etcd, site_id=f"site-{name}")
            site.create_node()
            if name == "a":
                site.create_node()  # two nodes: one can die while the other takes over
            self.sites[name] = site
        for name, site in self.sites.items():
            self.proxies[name] = TcpProxy(site.nodes[0].api_port)
        for name, site in self.sites.items():
            peers = [f"site-{p}:127.0.0.1:{self.proxies[p].port}" for p in TOPOLOGY[name]]
            for node in site.nodes:
                node.config["multi_site"] = {
                    "enabled": True,
                    "site_id": site.site_id,
                    "sync": {
                        "enabled": True,
                        "token": SYNC_TOKEN,
                        "interval_seconds": 0.5,
                        "peer_sites": peers,
                    },
                }
                node.start()

    def all_nodes(self) -> list[tuple[Site, Daemon]]:
        return [(site, node) for site in self.sites.values() for node in site.running()]

    def manifest(self, site: Site) -> dict[str, str]:
        _, listing = site.request(site.running()[0], "GET", "/api/v1/files")
        return {f["path"]: f["digest"] for f in listing["files"]}

    def served_everywhere(self, path: str, data: bytes | None, timeout: float = 30) -> bool:
        return wait_for(
            lambda: all(site.fetch(node, path) == data for site, node in self.all_nodes()),
            timeout,
            interval=0.3,
        )

    def converged(self, timeout: float = 40) -> bool:
        return wait_for(
            lambda: (
                len({json.dumps(self.manifest(s), sort_keys=True) for s in self.sites.values()})
                == 1
            ),
            timeout,
            interval=0.5,
        )

    def close(self) -> None:
        for site in self.sites.values():
            site.stop()
        for proxy in self.proxies.values():
            proxy.close()
        for etcd in self.etcds:
            etcd.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = World(tmp_path_factory.mktemp("world"))
    try:
        for site in built.sites.values():
            assert wait_for(lambda s=site: all(s.status(n).get("leader") for n in s.nodes), 20)
        yield built
    finally:
        built.close()


def test_a_change_at_any_site_reaches_every_node_of_every_site(world: World) -> None:
    a, b, c = (world.sites[n] for n in "abc")
    first = os.urandom(50_000)
    assert a.upload(a.nodes[0], "boot/from-a.efi", first)[0] == 201
    assert world.served_everywhere("boot/from-a.efi", first)  # C only through B
    from_c = os.urandom(20_000)
    assert c.upload(c.nodes[0], "cfg/from-c.cfg", from_c)[0] == 201
    assert world.served_everywhere("cfg/from-c.cfg", from_c)
    replaced = os.urandom(30_000)
    assert b.upload(b.nodes[0], "boot/from-a.efi", replaced)[0] == 201
    assert world.served_everywhere("boot/from-a.efi", replaced)
    assert c.delete(c.nodes[0], "boot/from-a.efi")[0] == 200
    assert world.served_everywhere("boot/from-a.efi", None)
    assert world.converged()


def test_partition_then_heal_converges_by_the_rule(world: World) -> None:
    a, b, c = (world.sites[n] for n in "abc")
    base = os.urandom(1000)
    assert a.upload(a.nodes[0], "shared.cfg", base)[0] == 201
    assert a.upload(a.nodes[0], "doomed.cfg", base)[0] == 201
    assert world.served_everywhere("shared.cfg", base)
    assert world.served_everywhere("doomed.cfg", base)
    for proxy in world.proxies.values():
        proxy.block()  # every site alone
    try:
        only_a, only_b = os.urandom(2000), os.urandom(3000)
        assert a.upload(a.nodes[0], "only-a.bin", only_a)[0] == 201
        assert b.upload(b.nodes[0], "only-b.bin", only_b)[0] == 201
        # Concurrent changes of one path: the later clock wins (B writes last).
        assert a.upload(a.nodes[0], "shared.cfg", b"version from a")[0] == 201
        assert b.upload(b.nodes[0], "shared.cfg", b"version from b")[0] == 201
        # A delete against a later change: the later change wins, the file survives.
        assert c.delete(c.nodes[0], "doomed.cfg")[0] == 200
        assert a.upload(a.nodes[0], "doomed.cfg", b"revived at a")[0] == 201
        status = json.loads(b.nodes[0].get("/api/v1/sync/status")[1])
        assert wait_for(
            lambda: any(
                p["reachable"] is False
                for p in json.loads(b.nodes[0].get("/api/v1/sync/status")[1])["peers"]
            ),
            10,
        ), status
    finally:
        for proxy in world.proxies.values():
            proxy.unblock()
    assert world.converged()
    assert world.served_everywhere("only-a.bin", only_a)
    assert world.served_everywhere("only-b.bin", only_b)
    assert world.served_everywhere("shared.cfg", b"version from b")
    assert world.served_everywhere("doomed.cfg", b"revived at a")


def test_leader_death_during_sync_resumes_without_gaps(world: World) -> None:
    a, b = world.sites["a"], world.sites["b"]
    world.proxies["b"].block()  # let changes pile up at B
    files = {f"batch/{i:03d}.bin": os.urandom(3000 + i) for i in range(40)}
    try:
        for path, data in files.items():
            assert b.upload(b.nodes[0], path, data)[0] == 201
    finally:
        world.proxies["b"].unblock()
    leader_id = a.leader(a.nodes[0])
    leader = next(n for n in a.nodes if n.config["node"]["node_id"] == leader_id)
    survivor = next(n for n in a.nodes if n is not leader)
    # Kill A's leader as soon as it has applied part of the batch.
    assert wait_for(lambda: any(a.fetch(survivor, p) is not None for p in files), 30)
    leader.kill()
    try:
        assert wait_for(lambda: a.leader(survivor) == survivor.config["node"]["node_id"], 15)
        assert wait_for(
            lambda: all(a.fetch(survivor, p) == d for p, d in files.items()), 40, interval=1
        )
    finally:
        leader.start()
    _, logs = a.request(survivor, "GET", "/api/v1/sync/logs?limit=1000")
    applied = [e["detail"].split(" ")[0] for e in logs["events"] if e["kind"] == "sitesync_stored"]
    batch = [p for p in applied if p.startswith("batch/")]
    assert sorted(set(batch)) == sorted(files)
    assert len(batch) == len(set(batch)), "an entry was applied twice"
    assert world.converged()


def test_a_blob_no_member_has_is_pulled_from_a_peer_site(world: World) -> None:
    """The leader that pulled a blob from a peer site can die before any other member copied
    it: the manifest then names a blob that no member serves. Here every node of site A loses
    its blobs while stopped; started again, they pull them from site B."""
    a, b = world.sites["a"], world.sites["b"]
    data = os.urandom(7001)
    assert b.upload(b.nodes[0], "peer/only-at-b.bin", data)[0] == 201
    assert world.served_everywhere("peer/only-at-b.bin", data)
    for node in a.nodes:
        node.stop()
    for node in a.nodes:
        state = Path(node.config["clustering"]["state_dir"])
        for blob in (state / "blobs").iterdir():
            blob.unlink()
        (state / "applied.json").unlink(missing_ok=True)
        (node.root / "peer" / "only-at-b.bin").unlink()
    for node in a.nodes:
        node.start()
    assert wait_for(lambda: all(a.fetch(n, "peer/only-at-b.bin") == data for n in a.nodes), 30)
    assert world.converged()


class FakePeer(BaseHTTPRequestHandler):
    """A peer site that lies: its blob does not match the digest it announced."""

    token = SYNC_TOKEN
    announced = hashlib.sha256(b"the real bytes").hexdigest()

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, b'{"error": "bad token"}')
        elif self.path.startswith("/api/v1/sync/changes"):
            entry = {"path": "evil.bin", "digest": self.announced, "size": 14,
                     "site": "site-evil", "hlc": 1 << 62}  # fmt: skip
            page = {"revision": 5, "changes": [{"revision": 5, "entry": entry}],
                    "remaining": 0, "remaining_bytes": 0}  # fmt: skip
            self._send(200, json.dumps(page).encode())
        else:
            self._send(200, b"tampered bytes")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("token", [SYNC_TOKEN, "wrong-token-wrong-token"])
def test_lying_or_unauthorised_peers_are_refused(world: World, token: str) -> None:
    c = world.sites["c"]
    handler = type("Peer", (FakePeer,), {"token": token})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        peers = [f"site-b:127.0.0.1:{world.proxies['b'].port}",
                 f"site-evil:127.0.0.1:{server.server_address[1]}"]  # fmt: skip
        body = json.dumps({"site_id": "site-c", "peer_sites": peers}).encode()
        node = c.nodes[0]
        assert c.request(node, "POST", "/api/v1/sync/peers", body)[0] == 200

        def evil_error() -> str | None:
            _, status = c.request(node, "GET", "/api/v1/sync/status")
            evil = [p for p in status["peers"] if p["site_id"] == "site-evil"]
            return evil[0]["last_error"] if evil else None

        assert wait_for(lambda: evil_error() is not None, 20)
        expected = "corrupt blob" if token == SYNC_TOKEN else "refused our site-sync token"
        assert expected in (evil_error() or "")
        assert c.fetch(node, "evil.bin") is None
        assert "evil.bin" not in world.manifest(c)
    finally:
        server.shutdown()
        server.server_close()
        # Forget the fake peer again.
        peers_body = json.dumps({"site_id": "site-c", "peer_sites": []}).encode()
        c.request(c.nodes[0], "POST", "/api/v1/sync/peers", peers_body)


def test_changes_feed_needs_the_sync_token(world: World) -> None:
    a = world.sites["a"]
    # The admin token is an identity, but not one that may follow the change feed.
    status, body = a.request(a.nodes[0], "GET", "/api/v1/sync/changes?since=0", token=TOKEN)
    assert status == 403 and "site-sync token" in body["error"]
    status, body = a.request(a.nodes[0], "GET", "/api/v1/sync/changes?since=0", token=None)
    assert status == 401 and "site-sync token" in body["error"]
    status, body = a.request(a.nodes[0], "GET", "/api/v1/sync/changes?since=0", token=SYNC_TOKEN)
    assert status == 200 and body["site_id"] == "site-a"
    assert all(sha(b"") != c["entry"]["digest"] for c in body["changes"])


def test_site_sync_commands(world: World) -> None:
    import subprocess
    import sys

    b = world.sites["b"]
    leader_id = b.leader(b.nodes[0])
    node = next(n for n in b.nodes if n.config["node"]["node_id"] == leader_id)
    env = {**os.environ, "SIMPLE_TFTPD_TOKEN": TOKEN}
    api = f"127.0.0.1:{node.api_port}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "simple_tftpd", *args, "--api", api],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )  # fmt: skip

    status = cli("site-sync-status")
    assert status.returncode == 0, status.stderr
    peers = {p["site_id"]: p for p in json.loads(status.stdout)["peers"]}
    assert set(peers) == {"site-a", "site-c"}
    assert peers["site-a"]["reachable"] is True and peers["site-a"]["position"] > 0
    now = cli("site-sync-now", "--site-id", "site-c")
    assert now.returncode == 0, now.stdout + now.stderr
    assert cli("site-sync-now", "--site-id", "nowhere").returncode == 1
    logs = cli("site-sync-logs")
    assert logs.returncode == 0 and "sitesync_stored" in logs.stdout
    wrong_site = cli("site-sync-init", "--site-id", "site-z", "--peer-sites", "site-a:127.0.0.1:1")
    assert wrong_site.returncode == 1 and "not 'site-z'" in wrong_site.stdout
