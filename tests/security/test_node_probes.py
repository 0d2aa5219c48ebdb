"""What probes a TLS node without an operator's identity: the deploy's probe and the handoff's
readiness check, against a live daemon that requires client certificates. Where they look is
decided by deploy.render.monitoring from the daemon's config model: the plain listener when
api.metrics_port is set, else the https API with the node's own certificate."""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy import handoff, probe
from deploy.inventory import InstallSettings
from deploy.render import HostPaths, local_tls_args, monitoring
from simple_tftpd.config import Config, parse_config
from tests.support.daemon import Daemon, free_port
from tests.support.pki import Issued, Pki

# The api_only node's admin token, as a site's config carries one.
NODE_TOKEN = "probe-node-admin-token-0123456789"


@dataclass
class Nodes:
    plain_listener: Daemon  # api.metrics_port set
    api_only: Daemon  # health only on the TLS API
    node_cert: Issued


def config_of(daemon: Daemon) -> Config:
    return parse_config(json.loads(daemon.config_path.read_text()))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Nodes]:
    node_cert = pki.issue("probe-node")
    started: list[Daemon] = []
    try:
        for metrics in (True, False):
            workdir = tmp_path_factory.mktemp("probe-node")
            root = workdir / "root"
            root.mkdir()
            api: dict[str, object] = {}
            if metrics:
                api["metrics_port"] = free_port(socket.SOCK_STREAM)
            else:
                api["token"] = NODE_TOKEN
            config = {"api": api, "security": {"tls": pki.tls_config(node_cert)}}
            daemon = Daemon(workdir, root, config, client_ssl=pki.client_context(node_cert))
            started.append(daemon.start())
        yield Nodes(started[0], started[1], node_cert)
    finally:
        for daemon in started:
            daemon.stop()


def probe_args(api: str, tls: list[str]) -> argparse.Namespace:
    """What probe.py parses from `--api API --ca CA [--cert CERT --key KEY]`."""
    values = {"ca": "", "cert": "", "key": ""}
    values.update(zip((flag.lstrip("-") for flag in tls[::2]), tls[1::2], strict=True))
    return argparse.Namespace(api=api, **values)


def run_probe(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = probe.main(list(argv))
    return code, json.loads(capsys.readouterr().out)


PATHS = HostPaths(InstallSettings())


def test_the_plain_listener_needs_no_certificate(
    nodes: Nodes, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_of(nodes.plain_listener)
    spot = monitoring(config)
    assert spot is not None and spot.separate and not spot.https
    assert local_tls_args(config, PATHS) == []
    with urllib.request.urlopen(f"{spot.local_url}/api/v1/ready", timeout=5) as response:
        assert response.status == 200
    # The drain's count: from the metrics, which need no identity there.
    code, answer = run_probe(capsys, "sessions", "--metrics", "--api", spot.local_url)
    assert (code, answer) == (0, {"ok": True, "active_sessions": 0})
    assert handoff._ready(spot.local_url, nodes.plain_listener.port)


def test_the_tls_api_lets_the_probes_in_with_the_nodes_certificate(
    nodes: Nodes, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    node = nodes.api_only
    config = config_of(node)
    spot = monitoring(config)
    assert spot is not None and spot.https and spot.client_cert and not spot.open_metrics
    tls = local_tls_args(config, PATHS)
    assert tls == [
        "--ca", str(pki.ca_file), "--cert", str(nodes.node_cert.cert_file),
        "--key", str(nodes.node_cert.key_file),
    ]  # fmt: skip
    context = probe.tls_context(probe_args(spot.local_url, tls))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_3
    # Health and readiness need no role: the node's certificate passes the handshake.
    assert probe._get(f"{spot.local_url}/api/v1/ready", context) == (200, {"status": "ready"})
    ca, cert, key = tls[1::2]
    assert handoff._ready(
        spot.local_url, node.port, handoff.tls_context(spot.local_url, ca, cert, key)
    )
    # Without a certificate the handshake fails: no HTTP answer at all.
    bare = probe.tls_context(probe_args(spot.local_url, ["--ca", ca]))
    status, detail = probe._get(f"{spot.local_url}/api/v1/ready", bare)
    assert status == 0 and "error" in detail
    assert not handoff._ready(spot.local_url, node.port, bare)
    # Status needs a role, which a node certificate does not carry: alone, the count fails
    # (it does not hang) ...
    code, answer = run_probe(capsys, "sessions", "--api", spot.local_url, *tls)
    assert code == 1 and answer["status"] == 401
    # ... so the deploy's drain passes the config, whose api.token (admin) the probe presents.
    config_file = str(node.config_path)
    code, answer = run_probe(
        capsys, "sessions", "--api", spot.local_url, "--config", config_file, *tls
    )
    assert code == 0 and answer["active_sessions"] == 0, answer


def test_a_probe_with_missing_tls_files_says_so(
    nodes: Nodes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    api = monitoring(config_of(nodes.api_only))
    assert api is not None
    missing = str(tmp_path / "nope.pem")
    code, answer = run_probe(
        capsys, "sessions", "--metrics", "--api", api.local_url, "--ca", missing
    )
    assert code == 1 and "FileNotFoundError" in str(answer["error"])
