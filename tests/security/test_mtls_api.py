"""TLS 1.3 and identities on live daemons: who gets through the handshake, who may do what,
and that nodes, sites and etcd talk mutual TLS (see conftest.py for the world)."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from simple_tftpd.config import TlsConfig
from simple_tftpd.tls import client_context
from tests.cluster.conftest import TOKEN, sha
from tests.security.conftest import CI_TOKEN, READER_TOKEN, SYNC_TOKEN, Identities, World
from tests.support.daemon import Daemon, wait_for
from tests.support.pki import Pki

PAYLOAD = os.urandom(3000)


def call(
    node: Daemon,
    method: str,
    path: str,
    context: ssl.SSLContext | None,
    body: bytes | None = None,
    token: str | None = None,
    scheme: str | None = None,
) -> tuple[int, Any]:
    """One request; an HTTP status means the TLS handshake let the client in."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = node.url(path) if scheme is None else f"{scheme}://127.0.0.1:{node.api_port}{path}"
    request = urllib.request.Request(url, body, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            data = response.read()
            if response.headers.get_content_type() != "application/json":
                return int(response.status), data  # a blob
            return int(response.status), json.loads(data or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")


def assert_refused(attempt: Callable[[], object]) -> None:
    """The connection fails before any HTTP answer (HTTPError would be an answer)."""
    try:
        answer = attempt()
    except urllib.error.HTTPError as exc:
        pytest.fail(f"the server answered HTTP {exc.code}")
    except (OSError, http.client.HTTPException):
        return
    pytest.fail(f"the server answered {answer!r}")


@pytest.fixture(scope="module")
def stored(world: World) -> Iterator[str]:
    """A file uploaded at site A by the admin certificate, then served everywhere."""
    a0 = world.a.nodes[0]
    status, body = call(a0, "PUT", "/api/v1/files/secure/boot.bin", a0.client_ssl, PAYLOAD)
    assert status == 201, body
    yield str(body["digest"])


def test_upload_reaches_every_node_and_site_over_mutual_tls(world: World, stored: str) -> None:
    # a1 pulls the blob from a0 (which requires client certificates); site B's leader pulls
    # the change feed and the blob from site A; everyone met etcd over mutual TLS.
    everyone = [*world.a.nodes, *world.b.nodes]
    assert wait_for(
        lambda: all(world.a.fetch(n, "secure/boot.bin") == PAYLOAD for n in everyone), 30, 0.2
    ), world.a.describe("secure/boot.bin") + "\n" + world.b.describe("secure/boot.bin")
    assert stored == sha(PAYLOAD)
    status = world.a.status(world.a.nodes[1])
    assert status["etcd_endpoint"].startswith("https://")
    assert {m["scheme"] for m in status["members"]} == {"https"}
    b0 = world.b.nodes[0]
    _, sync = b0.get_json("/api/v1/sync/status")
    [peer] = sync["peers"]
    assert peer["reachable"] and peer["last_error"] is None, sync


def test_etcd_takes_only_clients_with_a_certificate(world: World, pki: Pki) -> None:
    # So the nodes' quorum above means each one showed its certificate to etcd.
    health = f"{world.etcd.endpoints[0]}/health"
    assert health.startswith("https://")
    assert_refused(lambda: urllib.request.urlopen(health, timeout=5, context=pki.client_context()))
    assert all(world.a.status(n)["quorum"] for n in world.a.nodes)


BAD_CLIENTS = ["plaintext", "no certificate", "wrong CA", "expired", "revoked", "TLS 1.2"]


def bad_client(
    kind: str, pki: Pki, rogue: Pki, ids: Identities
) -> tuple[ssl.SSLContext | None, str]:
    if kind == "plaintext":
        return None, "http"
    context = {
        "no certificate": lambda: pki.client_context(),
        "wrong CA": lambda: pki.client_context(ids.rogue_admin),
        "expired": lambda: pki.client_context(ids.expired),
        "revoked": lambda: pki.client_context(ids.revoked),
        "TLS 1.2": lambda: pki.client_context(ids.admin, maximum=ssl.TLSVersion.TLSv1_2),
    }[kind]()
    return context, "https"


@pytest.mark.parametrize("kind", BAD_CLIENTS)
@pytest.mark.parametrize("what", ["api", "blob"])
def test_bad_clients_are_refused_at_the_handshake(
    world: World,
    stored: str,
    pki: Pki,
    rogue_pki: Pki,
    identities: Identities,
    kind: str,
    what: str,
) -> None:
    # "blob" is the node-to-node transfer endpoint, asked with the admin token as a node would.
    a0 = world.a.nodes[0]
    context, scheme = bad_client(kind, pki, rogue_pki, identities)
    path = "/api/v1/status" if what == "api" else f"/api/v1/blobs/{stored}"
    assert_refused(lambda: call(a0, "GET", path, context, token=TOKEN, scheme=scheme))
    # The same request with a good certificate gets through: the refusal was the handshake's.
    assert call(a0, "GET", path, pki.client_context(identities.admin), token=TOKEN)[0] == 200


@pytest.mark.parametrize("kind", ["wrong CA", "expired", "revoked", "TLS 1.2", "plaintext"])
def test_optional_client_certificates_are_still_verified(
    world: World, pki: Pki, rogue_pki: Pki, identities: Identities, kind: str
) -> None:
    # a1 lets clients in without a certificate (tokens), but one that is sent must be good.
    context, scheme = bad_client(kind, pki, rogue_pki, identities)
    a1 = world.a.nodes[1]
    assert_refused(lambda: call(a1, "GET", "/api/v1/status", context, token=TOKEN, scheme=scheme))
    assert call(a1, "GET", "/api/v1/status", pki.client_context(), token=TOKEN)[0] == 200


def test_a_certificate_without_a_role_is_no_identity(
    world: World, stored: str, pki: Pki, identities: Identities
) -> None:
    a0 = world.a.nodes[0]
    stranger = pki.client_context(identities.unknown)
    assert call(a0, "GET", "/api/v1/health", stranger)[0] == 200
    assert call(a0, "GET", "/api/v1/ready", stranger)[0] == 200
    for method, path, body in [
        ("GET", "/api/v1/status", None),
        ("GET", "/api/v1/metrics/prometheus", None),
        ("GET", "/api/v1/files", None),
        ("GET", f"/api/v1/blobs/{stored}", None),
        ("PUT", "/api/v1/files/stranger.bin", b"x"),
    ]:
        status, answer = call(a0, method, path, stranger, body)
        assert status == 401, (path, answer)
        assert "authentication required" in answer["error"]


def test_a_read_only_certificate_reads_but_changes_nothing(
    world: World, stored: str, pki: Pki, identities: Identities
) -> None:
    a0 = world.a.nodes[0]
    reader = pki.client_context(identities.reader)
    readable = ["/api/v1/status", "/api/v1/files", "/api/v1/cluster/status", "/api/v1/sync/status"]
    for path in readable:
        assert call(a0, "GET", path, reader)[0] == 200, path
    refused = [
        ("PUT", "/api/v1/files/reader.bin", b"x"),
        ("DELETE", "/api/v1/files/secure/boot.bin", None),
        ("POST", "/api/v1/sync/now", None),
        ("POST", "/api/v1/cluster/join", b"{}"),
        ("GET", f"/api/v1/blobs/{stored}", None),
        ("GET", "/api/v1/sync/changes?since=0", None),
    ]
    for method, path, body in refused:
        status, answer = call(a0, method, path, reader, body)
        assert status == 403, (method, path, answer)
        assert "cert:ops-reader (role read_only)" in answer["error"]
    assert world.a.fetch(a0, "reader.bin") is None
    assert world.a.fetch(a0, "secure/boot.bin") == PAYLOAD


def test_tokens_carry_roles_without_a_certificate(world: World, pki: Pki) -> None:
    a1 = world.a.nodes[1]
    anonymous = pki.client_context()  # verifies the server, shows no certificate
    assert call(a1, "GET", "/api/v1/health", anonymous)[0] == 200
    assert call(a1, "GET", "/api/v1/status", anonymous)[0] == 401
    assert call(a1, "GET", "/api/v1/status", anonymous, token="not-a-token-0123456789")[0] == 401
    assert call(a1, "GET", "/api/v1/status", anonymous, token=READER_TOKEN)[0] == 200
    status, answer = call(a1, "PUT", "/api/v1/files/t.bin", anonymous, b"t", READER_TOKEN)
    assert status == 403 and "token:grafana (role read_only)" in answer["error"]
    # The site-sync token follows the change feed and nothing else.
    assert call(a1, "GET", "/api/v1/sync/changes?since=0", anonymous, token=SYNC_TOKEN)[0] == 200
    assert call(a1, "GET", "/api/v1/status", anonymous, token=SYNC_TOKEN)[0] == 403
    for token in (CI_TOKEN, TOKEN):
        status, answer = call(a1, "PUT", "/api/v1/files/t.bin", anonymous, b"t", token)
        assert status == 201, answer
        assert call(a1, "DELETE", "/api/v1/files/t.bin", anonymous, token=token)[0] == 200


def test_health_and_metrics_stay_open_on_the_plain_listener(world: World) -> None:
    a0 = world.a.nodes[0]
    base = f"http://127.0.0.1:{a0.config['api']['metrics_port']}"
    for path in ("/api/v1/health", "/api/v1/ready"):
        with urllib.request.urlopen(base + path, timeout=5) as response:
            assert response.status == 200
    with urllib.request.urlopen(base + "/api/v1/metrics/prometheus", timeout=5) as response:
        text = response.read().decode()
    assert "simple_tftpd_tls_certificate_expiry_timestamp_seconds " in text
    assert 'simple_tftpd_api_refused_requests_total{status="401"}' in text
    for path in ("/api/v1/status", "/api/v1/files", "/api/v1/cluster/status"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + path, timeout=5)
        assert info.value.code == 404, path


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"not a real node")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_node_refuses_a_peer_with_a_certificate_of_another_ca(
    world: World, rogue_pki: Pki
) -> None:
    # The client side of blob pulls and site sync: the context a node dials peers with.
    a0 = world.a.nodes[0]
    tls = TlsConfig.model_validate(a0.config["security"]["tls"], strict=False)
    rogue = rogue_pki.issue("rogue-node")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(rogue.cert_file, rogue.key_file)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/api/v1/blobs/x"
        with pytest.raises(urllib.error.URLError) as info:
            urllib.request.urlopen(url, timeout=5, context=client_context(tls))
        assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    finally:
        server.shutdown()
        server.server_close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simple_tftpd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_speaks_tls_with_certificates_or_the_node_config(
    world: World, pki: Pki, identities: Identities, tmp_path: Path
) -> None:
    a0 = world.a.nodes[0]
    api = f"127.0.0.1:{a0.api_port}"

    def cert(who: Any) -> list[str]:
        return ["--cacert", str(pki.ca_file), "--cert", str(who.cert_file),
                "--cert-key", str(who.key_file)]  # fmt: skip

    done = cli("cluster-status", "--api", api, *cert(identities.admin))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["leader"]
    local = tmp_path / "cli.bin"
    local.write_bytes(b"from the cli")
    done = cli("files", "put", str(local), "cli.bin", "--api", api, *cert(identities.reader))
    assert done.returncode == 1 and "this needs the admin role" in done.stdout
    # --config: the node's own certificate (TLS) and api.token (admin role).
    done = cli("files", "put", str(local), "cli.bin", "--config", str(a0.config_path))
    assert done.returncode == 0, done.stdout + done.stderr
    done = cli("files", "rm", "cli.bin", "--config", str(a0.config_path))
    assert done.returncode == 0, done.stdout + done.stderr
    done = cli("cluster-status", "--api", api)  # no CA: plain HTTP to a TLS port
    assert done.returncode != 0
