"""Backup operations on a TLS site: the admin role decides, whatever carries it (an admin
client certificate or an admin token); read-only identities are refused with 403, and the CLI
follows a non-leader's redirect to the leader over TLS."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import CI_TOKEN, READER_TOKEN, Identities, TlsSite
from tests.support.daemon import Daemon, wait_for
from tests.support.etcd import EtcdCluster, EtcdTls, etcd_available
from tests.support.pki import Pki

pytestmark = pytest.mark.skipif(
    not etcd_available(), reason="etcd-server is installed by make test"
)

KEY = bytes(range(32))
OPERATION_TIMEOUT = 60.0


@dataclass
class BackupSite:
    site: TlsSite
    strict: Daemon  # requires a client certificate
    relaxed: Daemon  # takes tokens without a certificate
    location: str

    @property
    def nodes(self) -> list[Daemon]:
        return [self.strict, self.relaxed]

    def leader(self) -> Daemon:
        leader_id = self.site.status(self.strict)["leader"]
        return next(n for n in self.nodes if n.config["node"]["node_id"] == leader_id)

    def follower(self) -> Daemon:
        leader = self.leader()
        return next(n for n in self.nodes if n is not leader)


@pytest.fixture(scope="module")
def backup_site(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, identities: Identities
) -> Iterator[BackupSite]:
    workdir = tmp_path_factory.mktemp("tls-backup")
    member = pki.issue("etcd-backup-member")
    etcd = EtcdCluster(
        workdir, size=1, tls=EtcdTls(pki.ca_file, member.cert_file, member.key_file, pki.crl_file)
    ).start()
    key_file = workdir / "backup.key"
    key_file.write_text(KEY.hex())
    location = f"file://{workdir}/backups/site-a"
    site = TlsSite(workdir, etcd, pki, identities.admin, "site-a")
    try:
        strict = site.create_node()
        relaxed = site.create_node(require_client_cert=False)
        for node in (strict, relaxed):
            node.config["multi_site"] = {"enabled": False}
            node.config["backup"] = {
                "enabled": True,
                "schedule": "0 0 1 1 *",  # on demand only, during the test
                "locations": [location],
                "key_file": str(key_file),
                "journal_seconds": 0.5,
            }
            node.start()
        assert wait_for(lambda: all(site.status(n).get("leader") for n in site.nodes), 20)
        yield BackupSite(site, strict, relaxed, location)
    finally:
        site.stop()
        etcd.stop()


def call(
    node: Daemon,
    method: str,
    path: str,
    context: ssl.SSLContext,
    body: dict[str, Any] | None = None,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(node.url(path), data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")


def finished(node: Daemon, operation: dict[str, Any], context: ssl.SSLContext) -> dict[str, Any]:
    """Poll an operation on `node` until it has finished (bounded)."""
    deadline = time.monotonic() + OPERATION_TIMEOUT
    while operation["finished"] is None:
        assert time.monotonic() < deadline, f"still running: {operation}"
        time.sleep(0.3)
        status, payload = call(node, "GET", f"/api/v1/backup/operations/{operation['id']}", context)
        assert status == 200, payload
        operation = payload["operation"]
    return operation


def test_read_only_identities_cannot_back_up_or_restore(
    backup_site: BackupSite, pki: Pki, identities: Identities
) -> None:
    leader = backup_site.leader()
    reader = pki.client_context(identities.reader)
    restore = {"at": "latest", "location": backup_site.location}
    for method, path, body in [
        ("POST", "/api/v1/backup/now", {}),
        ("POST", "/api/v1/backup/restore", restore),
        ("POST", "/api/v1/backup/verify", {}),
        ("GET", "/api/v1/backup/list", None),
    ]:
        status, payload = call(leader, method, path, reader, body)
        assert status == 403, (path, payload)
        assert "this needs the admin role" in payload["error"]
        assert "cert:ops-reader (role read_only)" in payload["error"]
    # A read-only token, on the node that takes tokens without a certificate.
    no_cert = pki.client_context()
    for path, body in [("/api/v1/backup/now", {}), ("/api/v1/backup/restore", restore)]:
        status, payload = call(backup_site.relaxed, "POST", path, no_cert, body, READER_TOKEN)
        assert status == 403, (path, payload)
        assert "token:grafana (role read_only)" in payload["error"]
    # No identity at all: 401. Reading the status stays a read.
    status, _ = call(backup_site.relaxed, "POST", "/api/v1/backup/now", no_cert, {})
    assert status == 401
    status, payload = call(leader, "GET", "/api/v1/backup/status", reader)
    assert status == 200 and payload["is_leader"] is True


def test_an_admin_certificate_backs_up_and_restores(
    backup_site: BackupSite, pki: Pki, identities: Identities
) -> None:
    leader = backup_site.leader()
    admin = pki.client_context(identities.admin)
    upload = urllib.request.Request(
        leader.url("/api/v1/files/boot/ipxe.efi"), b"payload " * 1000, method="PUT"
    )
    with urllib.request.urlopen(upload, timeout=15, context=admin) as response:
        assert response.status in (200, 201)
    status, payload = call(leader, "POST", "/api/v1/backup/now", admin, {})
    assert status == 202, payload
    done = finished(leader, payload["operation"], admin)
    assert done["outcome"] == "ok", done
    status, payload = call(leader, "GET", "/api/v1/backup/list", admin)
    assert status == 200 and payload["locations"][0]["snapshots"], payload
    restore = {"at": "latest", "location": backup_site.location}
    status, payload = call(leader, "POST", "/api/v1/backup/restore", admin, restore)
    assert status == 202, payload
    done = finished(leader, payload["operation"], admin)
    assert done["outcome"] == "ok", done


def test_an_admin_token_without_a_certificate_verifies(backup_site: BackupSite, pki: Pki) -> None:
    node = backup_site.relaxed
    no_cert = pki.client_context()
    status, payload = call(node, "POST", "/api/v1/backup/verify", no_cert, {}, CI_TOKEN)
    if node is not backup_site.leader():
        assert status == 409, payload  # the token got through; only the leader verifies
        return
    assert status == 202, payload
    assert finished(node, payload["operation"], no_cert)["outcome"] == "ok"


def test_cli_follows_the_leader_over_tls(
    backup_site: BackupSite, pki: Pki, identities: Identities
) -> None:
    # --config of a follower: its TLS files and api.token, which must carry over to the
    # leader the follower redirects to.
    follower = backup_site.follower()
    done = subprocess.run(
        [sys.executable, "-m", "simple_tftpd", "backup", "now",
         "--config", str(follower.config_path), "--timeout", str(OPERATION_TIMEOUT)],
        capture_output=True, text=True, timeout=OPERATION_TIMEOUT + 30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["outcome"] == "ok"
    reader = ["--cacert", str(pki.ca_file), "--cert", str(identities.reader.cert_file),
              "--cert-key", str(identities.reader.key_file)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "simple_tftpd", "backup", "now",
         "--api", f"127.0.0.1:{backup_site.leader().api_port}", "--no-wait", *reader],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "this needs the admin role" in done.stdout


def test_health_stays_open_beside_tls(backup_site: BackupSite) -> None:
    for node in backup_site.nodes:
        url = f"http://127.0.0.1:{node.config['api']['metrics_port']}/api/v1/ready"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    assert Path(backup_site.location.removeprefix("file://")).is_dir()
