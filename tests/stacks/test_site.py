"""The cloud-neutral site model: what it derives from the daemon config, and what it refuses."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from stacks.site import IngressRule, StackConfigError, load_site
from tests.stacks import sites
from tests.stacks.expect import cidr_rules
from tests.stacks.harness import STACKS_DIR, run_stack

REPO = STACKS_DIR.parent
AWS_DIR = STACKS_DIR / "aws"


def _site(**changes: Any) -> dict[str, Any]:
    site = sites.clustered("aws")
    site.update(changes)
    return site


def _problems(raw: object, base: Path = AWS_DIR) -> list[str]:
    with pytest.raises(StackConfigError) as caught:
        load_site(raw, base)
    return caught.value.problems


def _cidr_rules(rules: tuple[IngressRule, ...]) -> set[tuple[str, int, int, str]]:
    return {
        (rule.protocol, low, high, source)
        for rule in rules
        for low, high in rule.ports
        for source in rule.sources
    }


def test_ingress_is_the_config_rules_plus_admin_and_node_only_etcd() -> None:
    site = load_site(_site(), AWS_DIR)
    expected = cidr_rules(sites.CLUSTERED_DAEMON, ["192.0.2.0/24", "2001:db8:ff::/48"])
    assert _cidr_rules(site.ingress) == expected
    (etcd,) = [rule for rule in site.ingress if rule.from_nodes]
    assert (etcd.purpose, etcd.protocol, etcd.ports, etcd.sources) == (
        "etcd",
        "tcp",
        ((2379, 2380),),
        (),
    )
    # The config's etcd rule (10.20.0.16/28) opens nothing by itself.
    assert "10.20.0.16/28" not in {s for rule in site.ingress for s in rule.sources}
    assert site.sources("tftp") == ["10.0.0.0/8", "2001:db8::/32"]
    assert site.sources("api") == ["192.0.2.0/24", "2001:db8:ff::/48"]
    purposes = {rule.name: rule.purpose for rule in site.ingress}
    assert purposes["node-exporter"] == "other"
    assert purposes["tftp.clients-v6"] == "tftp"  # one address family per cloud rule
    assert all(len({":" in s for s in rule.sources}) <= 1 for rule in site.ingress)


def test_guide_example_config_translates_rule_by_rule() -> None:
    daemon = json.loads((REPO / "examples" / "datacenter.json").read_text())
    site = load_site(_site(daemon=daemon, node_count=3), AWS_DIR)
    assert _cidr_rules(site.ingress) == cidr_rules(daemon, ["192.0.2.0/24", "2001:db8:ff::/48"])
    assert site.site_id == "eu-fra1"


def test_ports_managed_by_the_stacks_are_cut_out_of_config_ranges() -> None:
    daemon = copy.deepcopy(sites.CLUSTERED_DAEMON)
    daemon["security"]["network"]["firewall"]["rules"].append(
        {"name": "wide", "protocol": "tcp", "ports": ["20-3000"], "sources": ["203.0.113.0/24"]}
    )
    site = load_site(_site(daemon=daemon), AWS_DIR)
    (wide,) = [rule for rule in site.ingress if rule.name == "wide"]
    assert wide.ports == ((20, 21), (23, 2378), (2381, 3000))


def test_site_derivations() -> None:
    site = load_site(_site(), AWS_DIR)
    assert (site.site_id, site.slug, site.node_count) == ("lab.west_1", "lab-west-1", 5)
    assert (site.tftp_port, site.api_port, site.retention_days) == (69, 9080, 14)
    assert site.subnet_cidrs(3) == ["10.60.0.0/22", "10.60.4.0/22", "10.60.8.0/22"]
    assert site.name("backup", 20) == "lab-west-1-backup"
    assert len(site.name("x" * 10, 16)) <= 16
    assert site.peer_sites == [{"site_id": "us-east", "endpoint": "tftp.us-east.example.net:9080"}]
    assert site.stack.install.pip_arguments() == [
        "simple-tftpd @ https://artifacts.example.net/simple_tftpd-0.1.0-py3-none-any.whl"
        f"#sha256={'ab' * 32}"
    ]


def test_node_config_is_the_site_config_set_up_for_the_load_balancer() -> None:
    site = load_site(_site(), AWS_DIR)
    config = site.node_config(tftp_bind="0.0.0.0", backup_location="s3://bucket/tftp/lab")
    assert config.tftp.single_port is True
    assert (config.tftp.bind, config.api.bind, config.api.port) == ("0.0.0.0", "0.0.0.0", 9080)
    assert config.backup.locations == ["s3://bucket/tftp/lab", "file:///var/backups/tftp"]
    assert config.api.token == sites.API_TOKEN  # from site.secrets
    assert config.clustering.advertise == "node-address.invalid:9080"  # set on the node
    # Everything else is the site's config, unchanged.
    assert config.security == site.daemon.security
    assert config.multi_site == site.daemon.multi_site


def test_node_count_defaults_to_the_daemon_clustering_minimum() -> None:
    raw = _site()
    del raw["node_count"]
    assert load_site(raw, AWS_DIR).node_count == 3


def test_install_from_an_index() -> None:
    install = {"version": "0.1.0", "index_url": "https://pypi.example.net/simple"}
    site = load_site(_site(install=install), AWS_DIR)
    assert site.stack.install.pip_arguments() == [
        "--index-url",
        "https://pypi.example.net/simple",
        "simple-tftpd==0.1.0",
    ]


def test_python_version_comes_from_the_image() -> None:
    assert load_site(_site(), AWS_DIR).python_version == "3.12"  # Ubuntu 24.04, the default
    machine = {"image": "ami-0123456789abcdef0", "python_version": "3.11"}
    assert load_site(_site(machine=machine), AWS_DIR).python_version == "3.11"


BAD_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    (
        "custom image without its Python",
        {"machine": {"image": "ami-0123456789abcdef0"}},
        "site.machine: a custom image needs python_version",
    ),
    (
        "malformed Python version",
        {"machine": {"python_version": "3"}},
        "site.machine.python_version: String should match pattern",
    ),
    ("even node count", {"node_count": 4}, "site.node_count: 4 is even"),
    ("too few nodes", {"node_count": 1}, "site.node_count: 1 nodes is below 3"),
    ("too many nodes", {"node_count": 9}, "site.node_count: 9 nodes is above 7"),
    (
        "invalid admin CIDR",
        {"admin_cidrs": ["10.0.0.1/8"]},
        "site.admin_cidrs[0]: not a network in CIDR notation: 10.0.0.1/8 has host bits set; "
        "did you mean 10.0.0.0/8",
    ),
    (
        "invalid network CIDR",
        {"network": {"cidr": "10.60.0.0/33"}},
        "site.network.cidr: not a network in CIDR notation",
    ),
    (
        "public network CIDR",
        {"network": {"cidr": "8.8.0.0/16"}},
        "site.network: cidr must be a private IPv4 network",
    ),
    ("unknown key", {"nodes": 3}, "site.nodes: unknown key; allowed keys here: daemon_config,"),
    (
        "unknown nested key",
        {"network": {"cidr": "10.60.0.0/20", "vpc": "x"}},
        "site.network.vpc: unknown key; allowed keys here: id, subnet_ids, cidr, zones",
    ),
    ("missing install", {"install": None}, "site.install: required key is missing"),
    (
        "two install sources",
        {"install": {"wheel_url": "https://x.example/a.whl", "version": "1.0"}},
        "site.install: set exactly one of wheel_url",
    ),
    (
        "plain http wheel",
        {"install": {"wheel_url": "http://x.example/a.whl"}},
        "site.install.wheel_url: must be an https:// URL",
    ),
    (
        "world admin CIDR",
        {"admin_cidrs": ["0.0.0.0/0"]},
        "site.admin_cidrs[0]: 0.0.0.0/0 is everyone",
    ),
    (
        "autoscaling below node count",
        {"autoscaling": {"min_nodes": 3, "max_nodes": 4}},
        "site.node_count: 5 is outside site.autoscaling min_nodes..max_nodes (3..4)",
    ),
    ("no daemon config", {"daemon": None}, "site: set exactly one of daemon_config"),
]


@pytest.mark.parametrize(
    ("changes", "message"),
    [pytest.param(changes, message, id=name) for name, changes, message in BAD_CONFIGS],
)
def test_bad_stack_config_is_refused_with_a_clear_message(
    changes: dict[str, Any], message: str
) -> None:
    raw = _site(**changes)
    raw = {key: value for key, value in raw.items() if value is not None}
    problems = _problems(raw)
    assert any(problem.startswith(message) for problem in problems), problems


def _daemon(**sections: Any) -> dict[str, Any]:
    daemon = copy.deepcopy(sites.CLUSTERED_DAEMON)
    daemon.update(sections)
    return daemon


BAD_DAEMON_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    (
        "daemon config invalid",
        _daemon(tftp={"port": 70000}),
        "site.daemon: tftp.port: Input should be less than or equal to 65535",
    ),
    (
        "API open to the world",
        _daemon(
            security={
                "network": {
                    "firewall": {
                        "rules": [
                            {
                                "name": "t",
                                "protocol": "udp",
                                "ports": [69],
                                "sources": ["10.0.0.0/8"],
                            },
                            {
                                "name": "a",
                                "protocol": "tcp",
                                "ports": [9080],
                                "sources": ["0.0.0.0/0"],
                            },
                        ]
                    }
                }
            }
        ),
        "daemon config security.network.firewall.rules[1] (a): opens the API port 9080 to everyone",
    ),
    (
        "no TFTP rule",
        _daemon(security={}),
        "daemon config security.network.firewall.rules: no allow rule covers udp port 69",
    ),
    (
        "default site id",
        _daemon(multi_site={}),
        'daemon config multi_site.site_id: is "default"',
    ),
    (
        "API off",
        _daemon(api={"enabled": False}, clustering={}, multi_site={"site_id": "lab.west_1"}),
        "daemon config api.enabled: is false",
    ),
]


@pytest.mark.parametrize(
    ("daemon", "message"),
    [pytest.param(daemon, message, id=name) for name, daemon, message in BAD_DAEMON_CONFIGS],
)
def test_bad_daemon_config_is_refused_through_the_daemon_model(
    daemon: dict[str, Any], message: str
) -> None:
    problems = _problems(_site(daemon=daemon))
    assert any(problem.startswith(message) for problem in problems), problems


def test_daemon_config_file_problems_name_the_file_setting(tmp_path: Path) -> None:
    (tmp_path / "site.json").write_text('{"tftp": {"prot": 69}}')
    raw = _site(daemon_config="site.json")
    del raw["daemon"]
    problems = _problems(raw, tmp_path)
    assert problems[0].startswith("site.daemon_config: tftp.prot: unknown key; allowed keys")
    raw["daemon_config"] = "missing.json"
    assert _problems(raw, tmp_path) == [
        f"site.daemon_config: {tmp_path / 'missing.json'}: configuration file not found"
    ]


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(_site(node_count=4, admin_cidrs=["10.0.0.1/8"], extra=1))
    assert len(problems) == 2  # pydantic-level problems first; node count needs a valid model
    assert {p.split(":")[0] for p in problems} == {"site.admin_cidrs[0]", "site.extra"}


@pytest.mark.parametrize("cloud", sites.CLOUDS)
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"node_count": 4}, "site.node_count: 4 is even", id="even"),
        pytest.param({"node_count": 1}, "site.node_count: 1 nodes is below 3", id="below-3"),
        pytest.param({"admin_cidrs": ["10.0.0.300/24"]}, "site.admin_cidrs[0]", id="bad-cidr"),
        pytest.param({"colour": "blue"}, "site.colour: unknown key", id="unknown-key"),
    ],
)
def test_stack_refuses_bad_config_before_declaring_anything(
    cloud: str, changes: dict[str, Any], message: str
) -> None:
    site = {**sites.clustered(cloud), **changes}
    with pytest.raises(StackConfigError) as caught:
        run_stack(cloud, site, sites.PROVIDER[cloud])
    assert any(p.startswith(message) for p in caught.value.problems), caught.value.problems
    assert caught.value.stack_run.resources == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("cloud", sites.CLOUDS)
def test_missing_provider_settings_are_reported_before_declaring_anything(cloud: str) -> None:
    with pytest.raises(StackConfigError) as caught:
        run_stack(cloud, sites.clustered(cloud), {})
    assert caught.value.problems[0].split(":")[0] in ("aws", "azure-native", "gcp")
    assert "pulumi config set" in caught.value.problems[0]
    assert caught.value.stack_run.resources == []  # type: ignore[attr-defined]


def test_missing_site_config_says_where_to_look() -> None:
    with pytest.raises(StackConfigError, match="simple-tftpd-gcp:site: not set"):
        run_stack("gcp", None, sites.PROVIDER["gcp"])
