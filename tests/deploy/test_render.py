"""Rendering: every file from the config model, hardened units, StrictUndefined, and the
daemon's model as the judge of the rendered config."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
import yaml

from deploy.inventory import InventoryError, Site
from deploy.render import (
    RenderError,
    environment,
    local_api_url,
    monitoring,
    render_config,
    render_host,
    render_kubernetes,
    render_prometheus,
    render_site,
)
from simple_tftpd.config import parse_config
from tests.deploy.fakes import SITE_YAML, TLS_SITE_YAML, lab_site, tls_site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return lab_site(tmp_path)


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_config_renders_to_what_the_model_holds(site: Site) -> None:
    node = site.node("tftp-1")
    rendered = render_host(site, node)["config"]
    assert (rendered.path, rendered.mode, rendered.owner, rendered.group) == (
        "/etc/simple-tftpd/config.json",
        0o640,
        "root",
        "simple-tftpd",
    )
    assert parse_config(json.loads(rendered.content)) == node.config


def test_unit_is_hardened(site: Site) -> None:
    unit = unit_settings(render_host(site, site.node("tftp-1"))["unit"].content)
    assert unit["User"] == ["simple-tftpd"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["StateDirectory"] == ["simple-tftpd"]
    assert unit["PrivateTmp"] == unit["PrivateDevices"] == unit["ProtectHome"] == ["yes"]
    assert "ReadWritePaths" not in unit  # read-only content, no uploads
    binary = "/opt/simple-tftpd/current/venv/bin/simple-tftpd"
    assert unit["ExecStart"] == [f"{binary} serve --config /etc/simple-tftpd/config.json"]
    # SIGTERM drains for tftp.drain_timeout (5 s here), plus a margin.
    assert unit["TimeoutStopSec"] == ["20"]


def test_unit_hands_requests_to_the_other_nodes_while_down(site: Site) -> None:
    unit = unit_settings(render_host(site, site.node("tftp-2"))["unit"].content)
    (stop,) = unit["ExecStopPost"]
    assert stop.startswith("-+python3 /opt/simple-tftpd/handoff.py on --port 69")
    assert "--peers 10.0.0.11,10.0.0.13 --address 10.0.0.12" in stop
    (start,) = unit["ExecStartPost"]
    assert "off-when-ready --port 69" in start


def test_uploads_make_the_content_root_writable(tmp_path: Path) -> None:
    text = SITE_YAML.replace(
        "drain_timeout: 5}", "drain_timeout: 5, write: {enabled: true, prefixes: [up/]}}"
    )
    site = lab_site(tmp_path, text)
    unit = unit_settings(render_host(site, site.node("tftp-1"))["unit"].content)
    assert unit["ReadWritePaths"] == ["/srv/tftp"]


def test_nginx_balances_udp_over_every_node(site: Site) -> None:
    nginx = render_host(site, site.node("lb-1"))["nginx"].content
    assert "listen 69 udp reuseport;" in nginx
    for address in ("10.0.0.11", "10.0.0.12", "10.0.0.13"):
        assert f"server {address}:69 max_fails=1 fail_timeout=5s;" in nginx
    assert "proxy_responses" not in nginx.replace("no proxy_responses", "")
    assert "include /etc/nginx/modules-enabled/*.conf;" in nginx


def test_prometheus_scrapes_every_node(site: Site) -> None:
    scrape = yaml.safe_load(render_prometheus(site))["scrape_configs"][0]
    assert scrape["metrics_path"] == "/api/v1/metrics/prometheus"
    targets = [(c["targets"][0], c["labels"]["node"]) for c in scrape["static_configs"]]
    assert targets == [
        ("10.0.0.11:8080", "tftp-1"),
        ("10.0.0.12:8080", "tftp-2"),
        ("10.0.0.13:8080", "tftp-3"),
    ]


def test_kubernetes_deployment_and_autoscaler(site: Site) -> None:
    config_map, deployment, hpa = yaml.safe_load_all(render_kubernetes(site))
    config = parse_config(json.loads(config_map["data"]["config.json"]))
    assert config.tftp.single_port
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert container["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_BIND_SERVICE"],
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/v1/ready"
    assert {p["protocol"] for p in container["ports"]} == {"UDP", "TCP"}
    assert pod["terminationGracePeriodSeconds"] == 10  # drain_timeout 5 + 5
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
    }
    assert targets == {"cpu": 70, "memory": 80}


def test_etcd_members_know_each_other(tmp_path: Path) -> None:
    text = (
        SITE_YAML.replace(
            "  tftp: {",
            "  clustering: {enabled: true}\n  api: {token: a-long-shared-admin-token}\n  tftp: {",
        )
        .replace("address: 10.0.0.11}", "address: 10.0.0.11, roles: [tftp, etcd]}")
        .replace("address: 10.0.0.12}", "address: 10.0.0.12, roles: [tftp, etcd]}")
    )
    site = lab_site(tmp_path, text)
    files = render_host(site, site.node("tftp-1"))
    env = dict(line.split("=", 1) for line in files["etcd_env"].content.splitlines() if "=" in line)
    assert (
        env["ETCD_INITIAL_CLUSTER"] == "tftp-1=http://10.0.0.11:2380,tftp-2=http://10.0.0.12:2380"
    )
    assert env["ETCD_NAME"] == "tftp-1"
    assert "etcd_env" not in render_host(site, site.node("tftp-3"))
    unit = unit_settings(files["unit"].content)
    assert unit["After"] == ["network-online.target simple-tftpd-etcd.service"]
    assert unit["ReadWritePaths"] == ["/srv/tftp"]  # replication writes the content root


def test_an_undefined_template_variable_fails_the_render(site: Site, tmp_path: Path) -> None:
    (tmp_path / "simple-tftpd").mkdir()
    (tmp_path / "simple-tftpd/config.json.j2").write_text("{{ config | json }}{{ typo }}\n")
    with pytest.raises(RenderError, match="'typo' is undefined"):
        render_config(site.node("tftp-1"), environment(tmp_path))


def test_a_rendered_config_the_daemon_would_refuse_fails_the_render(
    site: Site, tmp_path: Path
) -> None:
    (tmp_path / "simple-tftpd").mkdir()
    (tmp_path / "simple-tftpd/config.json.j2").write_text('{"tftp": {"port": 0}}\n')
    with pytest.raises(RenderError) as failure:
        render_config(site.node("tftp-1"), environment(tmp_path))
    assert "rejected by the daemon's config model" in str(failure.value)
    assert "tftp.port: Input should be greater than or equal to 1" in str(failure.value)


def test_environment_is_strict() -> None:
    assert environment().undefined is jinja2.StrictUndefined


def test_render_site_writes_every_file(site: Site, tmp_path: Path) -> None:
    written = {str(p.relative_to(tmp_path / "out")) for p in render_site(site, tmp_path / "out")}
    assert "lab/tftp-1/etc/simple-tftpd/config.json" in written
    assert "lab/tftp-3/etc/systemd/system/simple-tftpd.service" in written
    assert "lab/lb-1/etc/nginx/nginx.conf" in written
    assert {"lab/prometheus/simple-tftpd.yml", "lab/kubernetes/simple-tftpd.yaml"} <= written


def test_render_site_of_a_clustered_site_leaves_kubernetes_out(tmp_path: Path) -> None:
    """`fab render` works for clustered sites: every host's files, etcd's included, and no
    Kubernetes manifest (pods share one config, a cluster member needs its own identity)."""
    site = tls_site(tmp_path)
    written = {str(p.relative_to(tmp_path / "out")) for p in render_site(site, tmp_path / "out")}
    assert "lab/tftp-1/etc/simple-tftpd/etcd.env" in written
    assert "lab/prometheus/simple-tftpd.yml" in written
    assert not any(path.startswith("lab/kubernetes/") for path in written)


# --- TLS ------------------------------------------------------------------------------------------


def env_file(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")


def test_etcd_runs_tls_for_peers_and_clients(tmp_path: Path) -> None:
    site = tls_site(tmp_path)
    files = render_host(site, site.node("tftp-1"))
    env = env_file(files["etcd_env"].content)
    assert env["ETCD_LISTEN_PEER_URLS"] == "https://10.0.0.11:2380"
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "https://10.0.0.11:2379,https://127.0.0.1:2379"
    assert env["ETCD_ADVERTISE_CLIENT_URLS"] == "https://10.0.0.11:2379"
    assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == "https://10.0.0.11:2380"
    assert (
        env["ETCD_INITIAL_CLUSTER"] == "tftp-1=https://10.0.0.11:2380,tftp-2=https://10.0.0.12:2380"
    )
    tls_env = files["etcd_tls_env"]
    assert (tls_env.path, tls_env.mode, tls_env.group) == (
        "/etc/simple-tftpd/etcd-tls.env",
        0o640,
        "etcd",
    )
    tls = env_file(tls_env.content)
    base = "/etc/simple-tftpd-etcd/tls"
    assert tls["ETCD_CERT_FILE"] == tls["ETCD_PEER_CERT_FILE"] == f"{base}/member.pem"
    assert tls["ETCD_KEY_FILE"] == tls["ETCD_PEER_KEY_FILE"] == f"{base}/member.key"
    assert tls["ETCD_TRUSTED_CA_FILE"] == tls["ETCD_PEER_TRUSTED_CA_FILE"] == f"{base}/ca.pem"
    assert tls["ETCD_CLIENT_CRL_FILE"] == tls["ETCD_PEER_CRL_FILE"] == f"{base}/crl.pem"
    assert tls["ETCD_CLIENT_CERT_AUTH"] == tls["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    # The TLS file after etcd.env, so both apply.
    unit = unit_settings(files["etcd_unit"].content)
    assert unit["EnvironmentFile"] == [
        "/etc/simple-tftpd/etcd.env",
        "/etc/simple-tftpd/etcd-tls.env",
    ]


def test_without_tls_etcd_stays_plain(tmp_path: Path) -> None:
    site = lab_site(tmp_path, TLS_SITE_YAML.replace("enabled: true\n      ca_file", "ca_file"))
    files = render_host(site, site.node("tftp-1"))
    assert "https" not in files["etcd_env"].content
    assert "etcd_tls_env" not in files
    assert unit_settings(files["etcd_unit"].content)["EnvironmentFile"] == [
        "/etc/simple-tftpd/etcd.env"
    ]
    assert site.node("tftp-3").config.clustering.etcd_endpoints == [
        "http://10.0.0.11:2379",
        "http://10.0.0.12:2379",
    ]


def test_nodes_reach_etcd_over_https(tmp_path: Path) -> None:
    site = tls_site(tmp_path)
    for node in site.tftp_nodes:
        assert node.config.clustering.etcd_endpoints == [
            "https://10.0.0.11:2379",
            "https://10.0.0.12:2379",
        ]
        rendered = json.loads(render_host(site, node)["config"].content)
        assert rendered["clustering"]["etcd_endpoints"][0] == "https://10.0.0.11:2379"


def test_clustered_nodes_must_agree_on_tls(tmp_path: Path) -> None:
    text = TLS_SITE_YAML.replace(
        "  - {name: tftp-3, address: 10.0.0.13}",
        "  - {name: tftp-3, address: 10.0.0.13, config: {security: {tls: {enabled: false}}}}",
    )
    with pytest.raises(InventoryError, match="the clustered nodes disagree"):
        lab_site(tmp_path, text)


def test_health_and_metrics_come_from_the_plain_listener(tmp_path: Path) -> None:
    site = tls_site(tmp_path)
    node = site.node("tftp-1")
    spot = monitoring(node.config)
    assert spot is not None
    assert (spot.local_url, spot.separate, spot.client_cert, spot.open_metrics) == (
        "http://127.0.0.1:9180",
        True,
        False,
        True,
    )
    # The API itself is https, and needs a client certificate.
    assert local_api_url(node.config) == "https://127.0.0.1:8080"
    # The handoff's readiness check: the plain listener, no certificate.
    (start,) = unit_settings(render_host(site, node)["unit"].content)["ExecStartPost"]
    assert '--api "http://127.0.0.1:9180" --timeout' in start
    # Prometheus scrapes the metrics port, plain HTTP.
    scrape = yaml.safe_load(render_prometheus(site))["scrape_configs"][0]
    assert scrape.get("scheme", "http") == "http"
    assert [c["targets"][0] for c in scrape["static_configs"]] == [
        "10.0.0.11:9180",
        "10.0.0.12:9180",
        "10.0.0.13:9180",
    ]


def test_kubernetes_probes_use_the_plain_listener_and_mount_the_tls_secret(
    tmp_path: Path,
) -> None:
    # Pods run standalone (no etcd in the cluster's config).
    site = lab_site(tmp_path, TLS_SITE_YAML.replace("  clustering: {enabled: true}\n", ""))
    config_map, deployment, _ = yaml.safe_load_all(render_kubernetes(site))
    config = parse_config(json.loads(config_map["data"]["config.json"]))
    assert config.api.metrics_bind is None and config.api.bind == "0.0.0.0"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == 9180 and ports["api"] == 8080
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert (get["port"], get["scheme"]) == ("health", "HTTP")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] == "tls"}
    assert mounts["/etc/simple-tftpd/tls/node.key"]["subPath"] == "node.key"
    assert set(mounts) == {
        "/etc/simple-tftpd/tls/ca.pem",
        "/etc/simple-tftpd/tls/node.pem",
        "/etc/simple-tftpd/tls/node.key",
        "/etc/simple-tftpd/tls/crl.pem",
    }
    (secret,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert secret["secret"] == {"secretName": "simple-tftpd-tls", "defaultMode": 0o440}


def test_without_a_metrics_listener_the_tls_api_is_probed_with_the_nodes_certificate(
    tmp_path: Path,
) -> None:
    site = tls_site(tmp_path, metrics_port=False)
    node = site.node("tftp-2")
    spot = monitoring(node.config)
    assert spot is not None
    assert (spot.local_url, spot.client_cert, spot.open_metrics) == (
        "https://127.0.0.1:8080",
        True,
        False,
    )
    (start,) = unit_settings(render_host(site, node)["unit"].content)["ExecStartPost"]
    assert (
        '--api "https://127.0.0.1:8080" --ca /etc/simple-tftpd/tls/ca.pem'
        " --cert /etc/simple-tftpd/tls/node.pem --key /etc/simple-tftpd/tls/node.key" in start
    )
    # Prometheus and the kubelet have no certificate: say what to configure.
    with pytest.raises(RenderError, match=r"set api\.metrics_port"):
        render_prometheus(site)
    standalone = TLS_SITE_YAML.replace("  clustering: {enabled: true}\n", "")
    (tmp_path / "k8s").mkdir()
    k8s = lab_site(tmp_path / "k8s", standalone.replace(", metrics_port: 9180", ""))
    with pytest.raises(RenderError, match=r"set api\.metrics_port"):
        render_kubernetes(k8s)


def test_without_tls_health_stays_on_the_api(site: Site) -> None:
    spot = monitoring(site.node("tftp-1").config)
    assert spot is not None
    assert (spot.local_url, spot.separate, spot.open_metrics) == (
        "http://127.0.0.1:8080",
        False,
        True,
    )
    _, deployment, _ = yaml.safe_load_all(render_kubernetes(site))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/api/v1/health",
        "port": "api",
        "scheme": "HTTP",
    }
    assert not any(v["name"] == "tls" for v in deployment["spec"]["template"]["spec"]["volumes"])
