"""Every node: the release, the unit and its sandbox, the sockets, the config file, the API,
and a real TFTP fetch on the node itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
import testinfra.host

from deploy.inventory import InventoryDocument
from deploy.render import HostPaths, local_api_url, local_tftp_address, local_tls_args, monitoring
from deploy.rollout import CANARY_SHA256
from simple_tftpd.config import Config
from tests.infra.helpers import as_root, fetch_sha256, get_json

# The capability sets of the daemon's processes: CAP_NET_BIND_SERVICE (bit 10) and nothing else.
ONLY_NET_BIND_SERVICE = f"{1 << 10:016x}"
# GET with the node's own certificate, for an https API that requires one (run as root: the
# key is readable by the daemon's user only).
GET_JSON_TLS = """
import json, ssl, sys, urllib.request
url, ca, cert, key = sys.argv[1:5]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
with urllib.request.urlopen(url, timeout=5, context=context) as response:
    print(json.dumps({"status": response.status, "body": json.load(response)}))
"""

# The certificate the API shows a TLS 1.3 client (verified against the CA, with the node's own
# certificate as the client's) next to the one in cert_file: (version, served, on disk), each
# a sha256 of the DER. Run as root, for the key.
SERVED_CERT = """
import hashlib, socket, ssl, sys
host, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
context = ssl.create_default_context(cafile=ca)
context.minimum_version = ssl.TLSVersion.TLSv1_3
context.check_hostname = False  # which certificate is served, not which names it has
context.load_cert_chain(cert, key)
with socket.create_connection((host, port), timeout=5) as raw:
    with context.wrap_socket(raw) as tls:
        served = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
        version = tls.version()
with open(cert) as handle:
    on_disk = hashlib.sha256(ssl.PEM_cert_to_DER_cert(handle.read())).hexdigest()
print(version, served, on_disk)
"""


def _health_get(
    host: testinfra.host.Host, node_config: Config, paths: HostPaths, path: str
) -> tuple[int, Any]:
    """GET `path` where the node answers health (deploy.render.monitoring): the plain
    listener without any certificate when there is one, else the API."""
    spot = monitoring(node_config)
    assert spot is not None
    url = f"{spot.local_url}{path}"
    tls = local_tls_args(node_config, paths)
    if not tls:
        return get_json(host, url)
    with as_root(host):
        answer = json.loads(
            host.check_output("python3 -c %s %s %s %s %s", GET_JSON_TLS, url, *tls[1::2])
        )
    return int(answer["status"]), answer["body"]


def _main_pid(host: testinfra.host.Host, service: str) -> str:
    pid = host.check_output("systemctl show -p MainPID --value %s", service)
    assert pid not in ("", "0"), f"{service} has no main process"
    return str(pid)


def test_release_installed_at_expected_version(
    host: testinfra.host.Host, paths: HostPaths, expected_version: str
) -> None:
    package = host.pip("simple-tftpd", pip_path=f"{paths.current}/venv/bin/pip")
    assert package.is_installed
    assert package.version == expected_version
    manifest = json.loads(host.file(f"{paths.current}/release.json").content_string)
    assert manifest["version"] == expected_version


def test_unit_enabled_and_running(host: testinfra.host.Host, settings: InventoryDocument) -> None:
    service = host.service(settings.install.service)
    assert service.is_enabled
    assert service.is_running


def test_daemon_runs_unprivileged_with_one_capability(
    host: testinfra.host.Host, settings: InventoryDocument
) -> None:
    main = _main_pid(host, settings.install.service)
    workers = host.check_output("ps -o pid= --ppid %s || true", main).split()
    for pid in [main, *workers]:
        assert host.check_output("ps -o user= -p %s", pid) == settings.install.user
        status = host.file(f"/proc/{pid}/status").content_string
        caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
        assert caps["CapEff"] == ONLY_NET_BIND_SERVICE, f"pid {pid}: {caps}"
        assert caps["CapBnd"] == ONLY_NET_BIND_SERVICE, f"pid {pid}: {caps}"


def test_unit_sandbox(host: testinfra.host.Host, settings: InventoryDocument) -> None:
    shown = host.check_output(
        "systemctl show %s -p ProtectSystem -p NoNewPrivileges -p PrivateTmp -p ProtectHome",
        settings.install.service,
    )
    properties = dict(line.split("=", 1) for line in shown.splitlines())
    assert properties == {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }


def test_tftp_and_api_listening(host: testinfra.host.Host, node_config: Config) -> None:
    tftp = node_config.tftp
    bind = f"[{tftp.bind}]" if ":" in tftp.bind else tftp.bind
    assert host.socket(f"udp://{bind}:{tftp.port}").is_listening
    api = node_config.api
    if api.enabled:
        api_bind = f"[{api.bind}]" if ":" in api.bind else api.bind
        assert host.socket(f"tcp://{api_bind}:{api.port}").is_listening
    spot = monitoring(node_config)
    if spot is not None and spot.separate:
        bind = f"[{spot.bind}]" if ":" in spot.bind else spot.bind
        assert host.socket(f"tcp://{bind}:{spot.port}").is_listening


def test_config_file_readable_only_by_the_daemon(
    host: testinfra.host.Host, paths: HostPaths, settings: InventoryDocument
) -> None:
    config = host.file(paths.config)
    assert config.is_file
    assert config.mode == 0o640
    assert config.user == "root"
    assert config.group == settings.install.user


def test_tls_files_readable_only_by_their_user(
    host: testinfra.host.Host,
    node_config: Config,
    paths: HostPaths,
    settings: InventoryDocument,
) -> None:
    tls = node_config.security.tls
    if not tls.enabled:
        pytest.skip("security.tls is off on this node")
    assert tls.key_file and tls.cert_file and tls.ca_file
    key = host.file(paths.absolute(tls.key_file))
    assert (key.mode, key.user) == (0o600, settings.install.user)
    for public in (tls.cert_file, tls.ca_file, tls.crl_file):
        if public is not None:
            file = host.file(paths.absolute(public))
            assert (file.mode, file.user) == (0o644, "root")


def test_api_serves_the_installed_certificate_over_tls_13(
    host: testinfra.host.Host, node_config: Config, paths: HostPaths
) -> None:
    """The API shows the certificate in cert_file: after a renewal, proof that the daemon
    reloaded what the deploy copied."""
    tls, api = node_config.security.tls, node_config.api
    if not (tls.enabled and api.enabled):
        pytest.skip("the API does not serve TLS on this node")
    assert tls.ca_file and tls.cert_file and tls.key_file
    address = local_api_url(node_config).removeprefix("https://").rpartition(":")[0].strip("[]")
    files = [paths.absolute(path) for path in (tls.ca_file, tls.cert_file, tls.key_file)]
    with as_root(host):
        answer = host.check_output(
            "python3 -c %s %s %s %s %s %s", SERVED_CERT, address, str(api.port), *files
        )
    version, served, on_disk = answer.split()
    assert version == "TLSv1.3"
    assert served == on_disk, "the API serves another certificate than its cert_file"


def test_health_and_readiness(
    host: testinfra.host.Host, node_config: Config, paths: HostPaths
) -> None:
    if not node_config.api.enabled:
        pytest.skip("the API is off on this node")
    status, body = _health_get(host, node_config, paths, "/api/v1/health")
    assert (status, body) == (200, {"status": "ok"})
    status, body = _health_get(host, node_config, paths, "/api/v1/ready")
    assert (status, body["status"]) == (200, "ready")


def test_tftp_fetch_on_the_node(
    host: testinfra.host.Host,
    paths: HostPaths,
    node_config: Config,
    settings: InventoryDocument,
) -> None:
    digest = fetch_sha256(
        host,
        paths,
        local_tftp_address(node_config),
        node_config.tftp.port,
        settings.rollout.health_file,
    )
    assert digest == CANARY_SHA256
