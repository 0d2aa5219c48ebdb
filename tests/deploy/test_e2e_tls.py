"""End to end on real hosts, with TLS: a site of 3 clustered nodes (each also an etcd member)
with `security.tls` on (one node with relative paths, under its state dir), the plain
monitoring listener (`api.metrics_port`), an admin token and an admin client certificate,
in single-port mode without a load balancer, booted with systemd-nspawn (one testbed for the
module, torn down at its end even when a test fails; the plaintext module's testbed is gone
by then).

In order, each test on the site the previous one left: `fab certs` and `fab deploy --pki` from
scratch, `fab verify`, a second deploy that changes nothing, the API's handshakes (plaintext,
TLS 1.2, no certificate and another CA's certificate refused, the site's admin certificate
accepted), etcd's client port on every node (plaintext and certificate-less clients refused,
the node's certificate answered), the site cluster (one leader, 3 members) and a file stored
through the API fetched from every node by sha256, and a renewal: `fab certs --force` (and a
client certificate revoked), then `fab deploy --pki` while clients fetch from every node
without pause: no failed or corrupt fetch, the nodes reloaded (same PIDs), the API shows the
new certificates and refuses the revoked one, and `fab verify` passes again. Last, a fourth
host with the roles tftp and etcd joins the running site: `fab certs` issues its certificate
(keeping the others) and `fab cluster-join --pki` makes it an etcd member over TLS and a
member of the site cluster that serves what the cluster stores.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import secrets
import ssl
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from cryptography import x509

from deploy import certs as site_certs
from deploy.rollout import CANARY_SHA256
from testbed import Testbed
from tests.deploy.conftest import (
    BIG_FILE,
    NEW_NODE,
    HostsSite,
    cluster_views,
    needs_testbed,
    output,
    put_file,
    ssh_settings,
    wait_until,
)
from tests.deploy.load import FetchLoad, fetch_sha256

pytestmark = [pytest.mark.e2e, needs_testbed, pytest.mark.timeout(600)]

NODES = ("tftp-1", "tftp-2", "tftp-3")
SITE = "e2etls"
ADMIN = "e2e-admin"
# A client certificate of the site CA that the renewal's CRL revokes.
RETIRED = "e2e-retired"
API_PORT = 8080
METRICS_PORT = 9180
ETCD_CLIENT_PORT = 2379
TLS_DIR = "/etc/simple-tftpd/tls"
# This node's TLS paths are relative: under the daemon's state dir.
RELATIVE_NODE = "tftp-3"
STATE_TLS_DIR = "/var/lib/simple-tftpd/tls"
HTTP_TIMEOUT = 15.0
# Bound on waiting for the cluster to settle (members refresh every lease_ttl / 3 seconds).
SETTLE_TIMEOUT = 30.0
# Good fetches per node to see before and after the renewal, so the load spans all of it.
WARMUP = 5
T = TypeVar("T")


@dataclass(frozen=True)
class TlsSite(HostsSite):
    # The inventory with NEW_NODE (roles tftp and etcd) added, for the join at the end.
    joined_inventory: Path
    pki: Path
    work: Path
    big_sha256: str
    # A client certificate under the admin's own name, from a CA the site does not trust.
    foreign_cert: Path
    foreign_key: Path

    @property
    def ca(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def admin(self) -> tuple[Path, Path]:
        cert = self.pki / "clients" / f"{ADMIN}.pem"
        return cert, cert.with_suffix(".key")

    def node_serial(self, host: str) -> int:
        """The serial of `host`'s certificate in the site's PKI directory."""
        pem = (self.pki / "nodes" / f"{host}.pem").read_bytes()
        return int(x509.load_pem_x509_certificate(pem).serial_number)

    def main_pid(self, host: str) -> int:
        return int(self.sh(host, "systemctl show -p MainPID --value simple-tftpd").strip())


def _site_document(bed: Testbed, token: str, nodes: tuple[str, ...] = NODES) -> dict[str, Any]:
    document: dict[str, Any] = {
        "site": SITE,
        "ssh": ssh_settings(bed),
        "config": {
            "tftp": {"root": "/srv/tftp", "single_port": True, "drain_timeout": 10},
            "performance": {"thread_pool": {"workers": 1}},
            "api": {"token": token, "metrics_port": METRICS_PORT},
            "clustering": {"enabled": True},
            "security": {
                "tls": {
                    "enabled": True,
                    "ca_file": f"{TLS_DIR}/ca.pem",
                    "cert_file": f"{TLS_DIR}/node.pem",
                    "key_file": f"{TLS_DIR}/node.key",
                    "crl_file": f"{TLS_DIR}/crl.pem",
                    "require_client_cert": True,
                },
                "access": {"certificates": [{"name": ADMIN, "role": "admin"}]},
            },
        },
        "hosts": [
            {"name": name, "address": bed.hosts[name].address, "roles": ["tftp", "etcd"]}
            for name in nodes
        ],
    }
    # One node keeps its TLS files under its state dir (relative paths), which systemd's
    # StateDirectory= owns.
    (relative,) = [host for host in document["hosts"] if host["name"] == RELATIVE_NODE]
    relative["config"] = {
        "security": {
            "tls": {
                "ca_file": "tls/ca.pem",
                "cert_file": "tls/node.pem",
                "key_file": "tls/node.key",
                "crl_file": "tls/crl.pem",
            }
        }
    }
    return document


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSite]:
    work = tmp_path_factory.mktemp("e2e-tls")
    # A client certificate named like the site's admin, issued by a CA the site never saw.
    other = site_certs.create_authority("not the e2etls CA")
    cert, key = site_certs.issue(other, ADMIN)
    foreign = work / "foreign" / f"{ADMIN}.pem"
    site_certs.write_pair(foreign, foreign.with_suffix(".key"), cert, key)
    # The joining host boots with the others: hosts cannot be added to a running testbed.
    bed = Testbed([*NODES, NEW_NODE], log=lambda line: print(line, flush=True))
    with bed:
        inventory, joined = work / "site.yaml", work / "joined.yaml"
        token = secrets.token_hex(16)
        document = _site_document(bed, token)
        inventory.write_text(yaml.safe_dump(document, sort_keys=False))
        grown = _site_document(bed, token, (*NODES, NEW_NODE))
        joined.write_text(yaml.safe_dump(grown, sort_keys=False))
        big = os.urandom(1 << 20)
        for host in NODES:
            put_file(bed, host, f"/srv/tftp/{BIG_FILE}", big)
        yield TlsSite(
            bed,
            inventory,
            joined,
            work / "pki",
            work,
            hashlib.sha256(big).hexdigest(),
            foreign,
            foreign.with_suffix(".key"),
        )


# --- helpers -------------------------------------------------------------------------------------


def _context(
    site: TlsSite,
    cert: tuple[Path, Path] | None,
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    """A client context that verifies the node against the site CA; `version` is the newest
    (and oldest) version it offers."""
    context = ssl.create_default_context(cafile=str(site.ca))
    context.minimum_version = version
    context.maximum_version = version
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def _https(
    site: TlsSite,
    host: str,
    method: str,
    path: str,
    context: ssl.SSLContext,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, int]:
    """One request to `host`'s API: (status, body, serial of the certificate it showed)."""
    connection = http.client.HTTPSConnection(
        site.address(host), API_PORT, timeout=HTTP_TIMEOUT, context=context
    )
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        data = response.read()
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        serial = int(x509.load_der_x509_certificate(der).serial_number)
        return response.status, data, serial
    finally:
        connection.close()


def _admin_json(site: TlsSite, host: str, path: str) -> tuple[int, Any]:
    status, data, _ = _https(site, host, "GET", path, _context(site, site.admin))
    return status, json.loads(data or b"null")


def _refusal(attempt: Callable[..., object], *args: Any) -> str:
    """Run a request that must never get an HTTP answer; what stopped it."""
    try:
        answer = attempt(*args)
    except TimeoutError as exc:  # a hang is no refusal
        raise AssertionError(f"timed out instead of being refused: {exc}") from None
    except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"got an answer where the handshake should fail: {answer!r}")


def _plaintext_get(address: str, port: int) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(address, port, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", "/api/v1/health")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _member_ids(view: dict[str, Any]) -> set[str]:
    return {str(m.get("node_id") if isinstance(m, dict) else m) for m in view.get("members", [])}


def _leader(view: dict[str, Any]) -> str | None:
    leader = view.get("leader")
    if isinstance(leader, dict):
        leader = leader.get("node_id")
    return str(leader) if leader else None


def _cluster_views(site: TlsSite, hosts: tuple[str, ...] = NODES) -> dict[str, Any]:
    return cluster_views(lambda host: _admin_json(site, host, "/api/v1/cluster/status"), hosts)


def _settled(views: dict[str, Any]) -> bool:
    """Every node asked has quorum, names the same leader and sees exactly the nodes asked."""
    leaders = {_leader(view) for view in views.values()}
    return (
        len(leaders) == 1
        and None not in leaders
        and all(view.get("quorum") for view in views.values())
        and all(_member_ids(view) == set(views) for view in views.values())
    )


# Runs on a node as root: etcd's client port with a plaintext client, a TLS client without a
# certificate, and the node's own certificate (health and etcd's member list).
ETCD_PROBE = """
import http.client, json, ssl, sys
address, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
out = {}

def get(connection, method="GET", path="/health", body=None):
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return {"status": response.status, "body": response.read(20000).decode(errors="replace")}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        connection.close()

out["plain"] = get(http.client.HTTPConnection(address, port, timeout=10))
context = ssl.create_default_context(cafile=ca)
out["no_cert"] = get(http.client.HTTPSConnection(address, port, timeout=10, context=context))
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
out["node_cert"] = get(http.client.HTTPSConnection(address, port, timeout=10, context=context))
out["members"] = get(
    http.client.HTTPSConnection(address, port, timeout=10, context=context),
    "POST", "/v3/cluster/member/list", b"{}",
)
print(json.dumps(out))
"""


def _etcd_probe(site: TlsSite, host: str) -> dict[str, Any]:
    directory = STATE_TLS_DIR if host == RELATIVE_NODE else TLS_DIR
    files = " ".join(f"{directory}/{name}" for name in ("ca.pem", "node.pem", "node.key"))
    script = ETCD_PROBE.replace("'", "'\\''")
    out = site.sh(host, f"python3 -c '{script}' {site.address(host)} {ETCD_CLIENT_PORT} {files}")
    return dict(json.loads(out))


def _fetch_until(address: str, name: str, expected: str, timeout: float) -> str | None:
    def fetch() -> str | None:
        return fetch_sha256(address, 69, name)

    def arrived(got: str | None) -> bool:
        return got == expected

    # Replication is asynchronous: a node serves the file once it pulled the blob.
    return wait_until(fetch, arrived, timeout)


def _store_and_fetch_everywhere(
    site: TlsSite, via: str, name: str, hosts: tuple[str, ...] = NODES
) -> None:
    """PUT a file into the cluster through `via`'s API (the admin certificate), then fetch it
    over TFTP from every node: the others pulled its blob from a peer over mutual TLS."""
    data = os.urandom(300_001)
    digest = hashlib.sha256(data).hexdigest()
    status, body, _ = _https(
        site,
        via,
        "PUT",
        f"/api/v1/files/{name}",
        _context(site, site.admin),
        data,
        {"X-Content-SHA256": digest, "Content-Type": "application/octet-stream"},
    )
    assert status == 201, body
    for host in hosts:
        fetched = _fetch_until(site.address(host), name, digest, 30)
        assert fetched == digest, f"{name} from {host}: {fetched}"


def _tls_reloads(site: TlsSite, host: str) -> dict[str, float]:
    """simple_tftpd_tls_reloads_total by outcome, from the node's plain metrics listener."""
    connection = http.client.HTTPConnection(site.address(host), METRICS_PORT, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", "/api/v1/metrics/prometheus")
        response = connection.getresponse()
        assert response.status == 200
        text = response.read().decode()
    finally:
        connection.close()
    found = re.findall(r'^simple_tftpd_tls_reloads_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(value) for outcome, value in found}


def _outcome(stdout: str) -> dict[str, str]:
    """The per-host outcome the deploy prints last (`deployed ID to N hosts: {...}`)."""
    match = re.search(r"^deployed \S+ to \d+ hosts: (\{.*\})$", stdout, re.M)
    assert match, stdout
    pairs = re.findall(r"'([^']+)': '([^']+)'", match.group(1))
    return dict(pairs)


# --- the tests -----------------------------------------------------------------------------------


def test_certs_then_deploy_from_scratch(tls_site: TlsSite) -> None:
    site = tls_site
    issued = site.fab("certs", "--pki", str(site.pki), "--client", ADMIN)
    assert issued.returncode == 0, output(issued)
    for node in NODES:
        assert f"{node}: issued" in issued.stdout, issued.stdout
    assert f"{ADMIN}: issued" in issued.stdout
    assert (site.pki / "ca.key").stat().st_mode & 0o777 == 0o600

    result = site.fab("deploy", "--pki", str(site.pki))
    print(result.stdout)
    assert result.returncode == 0, output(result)
    assert "etcd: 3 members healthy" in result.stdout
    for node in NODES:
        assert re.search(rf"^{node}: now serving ", result.stdout, re.M), result.stdout
    assert _outcome(result.stdout) == dict.fromkeys(NODES, "upgraded")
    # The daemons found each other through etcd, over TLS.
    views = wait_until(lambda: _cluster_views(site), _settled, SETTLE_TIMEOUT)
    assert _settled(views), json.dumps(views, indent=2)


def test_verify_passes(tls_site: TlsSite) -> None:
    result = tls_site.fab("verify")
    assert result.returncode == 0, output(result)
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    # The per-site cluster checks and the TLS file checks ran (this site has no load
    # balancer to check).
    assert [line for line in skipped if "test_site.py" in line] == [
        line for line in skipped if "no load balancer" in line
    ], skipped
    assert not [line for line in skipped if "tls" in line.lower()], skipped
    assert re.search(r"\b\d+ passed\b", result.stdout), result.stdout


def test_a_second_deploy_changes_nothing(tls_site: TlsSite) -> None:
    site = tls_site
    pids = {host: site.main_pid(host) for host in NODES}
    result = site.fab("deploy", "--pki", str(site.pki))
    print(result.stdout)
    assert result.returncode == 0, output(result)
    assert _outcome(result.stdout) == dict.fromkeys(NODES, "unchanged")
    # No file copied, no etcd member restarted, no daemon reloaded or restarted.
    assert "TLS files" not in result.stdout, result.stdout
    assert "etcd member restarted" not in result.stdout, result.stdout
    assert {host: site.main_pid(host) for host in NODES} == pids


def test_api_refuses_plaintext_old_tls_and_other_cas(tls_site: TlsSite) -> None:
    site = tls_site
    for host in NODES:
        address = site.address(host)
        # The control: the site's admin certificate gets an answer, and an admin one.
        status, body = _admin_json(site, host, "/api/v1/status")
        assert status == 200, body
        # The release's wheel carries the compiled per-block path, and it loads on the host.
        assert body["per_block_path"] == "compiled", body
        admin_tls12 = _context(site, site.admin, ssl.TLSVersion.TLSv1_2)
        foreign = _context(site, (site.foreign_cert, site.foreign_key))
        refusals = {
            "plaintext": _refusal(_plaintext_get, address, API_PORT),
            "tls1.2": _refusal(_https, site, host, "GET", "/api/v1/status", admin_tls12),
            "other CA": _refusal(_https, site, host, "GET", "/api/v1/status", foreign),
            "no certificate": _refusal(
                _https, site, host, "GET", "/api/v1/status", _context(site, None)
            ),
        }
        # Each ended at the handshake (the server closes without an HTTP answer), where the
        # same request with the site's admin certificate over TLS 1.3 was answered above.
        assert all(refusals.values()), refusals
        # The monitoring listener is plain on purpose, and serves health only.
        assert _plaintext_get(address, METRICS_PORT)[0] == 200


def test_etcd_refuses_plaintext_and_answers_the_node_certificate(tls_site: TlsSite) -> None:
    site = tls_site
    for host in NODES:
        seen = _etcd_probe(site, host)
        plain, no_cert = seen["plain"], seen["no_cert"]
        # Plaintext never reaches etcd's API: no answer, or Go's "HTTP request to an HTTPS
        # server" 400.
        assert "error" in plain or plain["status"] == 400, seen
        assert "health" not in plain.get("body", ""), seen
        # Without a certificate the handshake fails (etcd runs --client-cert-auth).
        assert "SSL" in no_cert.get("error", ""), seen
        node = seen["node_cert"]
        assert node.get("status") == 200 and json.loads(node["body"])["health"] == "true", seen
        members = seen["members"]
        assert members.get("status") == 200, seen
        # etcd's own member list: the 3 members the deploy bootstrapped, on https peer URLs.
        listed = json.loads(members["body"]).get("members", [])
        assert sorted(str(member.get("name")) for member in listed) == list(NODES), listed
        for member in listed:
            assert all(url.startswith("https://") for url in member["peerURLs"]), listed


def test_one_leader_three_members_and_a_stored_file_on_every_node(tls_site: TlsSite) -> None:
    site = tls_site
    views = wait_until(lambda: _cluster_views(site), _settled, SETTLE_TIMEOUT)
    assert _settled(views), json.dumps(views, indent=2)
    leaders = {_leader(view) for view in views.values()}
    assert len(leaders) == 1 and leaders <= set(NODES), leaders
    for view in views.values():
        assert _member_ids(view) == set(NODES), view

    _store_and_fetch_everywhere(site, "tftp-2", "cluster/tls.bin")


def test_renewal_under_load_reloads_without_a_restart(tls_site: TlsSite) -> None:
    site = tls_site
    pids = {host: site.main_pid(host) for host in NODES}
    old = {
        host: _https(site, host, "GET", "/api/v1/health", _context(site, site.admin))[2]
        for host in NODES
    }
    assert old == {host: site.node_serial(host) for host in NODES}

    renewed = site.fab("certs", "--pki", str(site.pki), "--force")
    assert renewed.returncode == 0, output(renewed)
    for node in NODES:
        assert f"{node}: renewed (forced)" in renewed.stdout, renewed.stdout
    new = {host: site.node_serial(host) for host in NODES}
    assert not set(new.values()) & set(old.values())
    # The same deploy carries a CRL that revokes a client certificate: before it, the
    # certificate passes the handshake (it maps to no role: 401); after it, the reloaded
    # nodes refuse it at the handshake.
    retired_cert = site_certs.issue_client(site.pki, RETIRED)
    retired = _context(site, (retired_cert, retired_cert.with_suffix(".key")))
    for host in NODES:
        assert _https(site, host, "GET", "/api/v1/status", retired)[0] == 401
    revoked = site.fab("certs", "--pki", str(site.pki), "--revoke", str(retired_cert))
    assert revoked.returncode == 0, output(revoked)

    files = {"simple-tftpd-canary.bin": CANARY_SHA256, BIG_FILE: site.big_sha256}
    with ExitStack() as stack:
        loads = {
            host: stack.enter_context(FetchLoad(site.address(host), 69, files, clients=1))
            for host in NODES
        }
        for load in loads.values():
            load.wait_for(WARMUP, 60)
        result = site.fab("deploy", "--pki", str(site.pki))
        for load in loads.values():
            load.wait_for(load.report.ok + WARMUP, 60)
    print(result.stdout, {host: str(load.report) for host, load in loads.items()})
    assert result.returncode == 0, output(result)
    for host, load in loads.items():
        assert not load.report.failed and not load.report.corrupt, f"{host}: {load.report}"
        assert load.report.ok >= 2 * WARMUP, f"{host}: {load.report}"
    for node in NODES:
        assert f"{node}: reloaded its TLS files and healthy" in result.stdout, result.stdout
    assert _outcome(result.stdout) == dict.fromkeys(NODES, "reloaded")
    # Reloaded, not restarted: the same main process, now showing the renewed certificate.
    assert {host: site.main_pid(host) for host in NODES} == pids
    shown = {
        host: _https(site, host, "GET", "/api/v1/health", _context(site, site.admin))[2]
        for host in NODES
    }
    assert shown == new
    for host in NODES:
        _refusal(_https, site, host, "GET", "/api/v1/status", retired)
    for host in NODES:
        reloads = _tls_reloads(site, host)
        assert reloads.get("ok", 0) >= 1 and reloads.get("failed", 0) == 0, f"{host}: {reloads}"
    # The cluster carries on over the renewed certificates (etcd's included): one leader, and
    # a file stored now reaches every node (blob pulls, mutual TLS with the new certificates).
    views = wait_until(lambda: _cluster_views(site), _settled, SETTLE_TIMEOUT)
    assert _settled(views), json.dumps(views, indent=2)
    _store_and_fetch_everywhere(site, "tftp-3", "cluster/after-renewal.bin")
    # The testinfra suite on the renewed site (it compares the served certificate with each
    # node's cert_file).
    verified = site.fab("verify")
    assert verified.returncode == 0, output(verified)


def test_an_etcd_member_joins_the_running_site_over_tls(tls_site: TlsSite) -> None:
    """The operator adds tftp-4 (roles tftp and etcd) to the inventory, runs `fab certs` for
    its certificate, then `fab cluster-join --host tftp-4 --pki`: etcd gains a member on an
    https peer URL with the host's own certificate, the site cluster a node, and the new node
    serves what the cluster stores."""
    site = tls_site
    everyone = (*NODES, NEW_NODE)
    issued = site.fab("certs", "--pki", str(site.pki), inventory=site.joined_inventory)
    assert issued.returncode == 0, output(issued)
    assert f"{NEW_NODE}: issued" in issued.stdout, issued.stdout
    for node in NODES:
        assert f"{node}: kept" in issued.stdout, issued.stdout

    result = site.fab(
        "cluster-join", "--host", NEW_NODE, "--pki", str(site.pki), inventory=site.joined_inventory
    )
    print(result.stdout)
    assert result.returncode == 0, output(result)
    assert f"{NEW_NODE}: installed 4 etcd TLS files" in result.stdout, result.stdout
    assert f"{NEW_NODE}: added to etcd as a member" in result.stdout, result.stdout
    assert f"{NEW_NODE}: member of cluster" in result.stdout, result.stdout

    # The new member's etcd refuses plaintext and certificate-less clients like the others,
    # answers its node certificate, and lists 4 members, all on https peer URLs.
    seen = _etcd_probe(site, NEW_NODE)
    assert "error" in seen["plain"] or seen["plain"]["status"] == 400, seen
    assert "SSL" in seen["no_cert"].get("error", ""), seen
    listed = json.loads(seen["members"]["body"]).get("members", [])
    assert sorted(str(member.get("name")) for member in listed) == list(everyone), listed
    (new,) = [member for member in listed if member.get("name") == NEW_NODE]
    assert new["peerURLs"] == [f"https://{site.address(NEW_NODE)}:2380"], listed

    views = wait_until(lambda: _cluster_views(site, everyone), _settled, SETTLE_TIMEOUT)
    assert _settled(views), json.dumps(views, indent=2)
    # A file stored through an old member reaches the new one (and every other).
    _store_and_fetch_everywhere(site, "tftp-1", "cluster/after-join.bin", everyone)
