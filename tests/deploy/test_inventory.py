"""Inventories: YAML and pulumi outputs, per-host overrides, what the site fills in, and clear
errors for everything wrong, all found before any host is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.inventory import InventoryError, load_inventory
from tests.deploy.fakes import SITE_YAML, lab_site


def problems(tmp_path: Path, text: str, name: str = "site.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InventoryError) as failure:
        load_inventory(path)
    assert str(path) in str(failure.value)
    return failure.value.problems


def test_site_fills_in_node_and_cluster_ids(tmp_path: Path) -> None:
    site = lab_site(tmp_path)
    assert [node.name for node in site.tftp_nodes] == ["tftp-1", "tftp-2", "tftp-3"]
    assert [node.name for node in site.lb_nodes] == ["lb-1"]
    node = site.node("tftp-2")
    assert node.config.node.node_id == "tftp-2"
    assert node.config.node.cluster_id == "lab"
    assert node.config.multi_site.site_id == "lab"
    assert node.config.tftp.drain_timeout == 5
    assert site.load_balancer_address == "10.0.0.10"
    assert not site.clustering


def test_host_overrides_merge_over_the_site_config(tmp_path: Path) -> None:
    text = SITE_YAML.replace(
        "{name: tftp-2, address: 10.0.0.12}",
        "{name: tftp-2, address: 10.0.0.12, ssh: {user: ops},"
        " config: {tftp: {port: 6969}, node: {node_id: special}}}",
    )
    site = lab_site(tmp_path, text)
    node = site.node("tftp-2")
    assert node.config.tftp.port == 6969
    assert node.config.tftp.root == Path("/srv/tftp")  # from the site config
    assert node.config.node.node_id == "special"
    assert node.ssh.user == "ops"
    assert site.node("tftp-1").ssh.user == "root"


def test_clustering_members_and_etcd_endpoints_come_from_the_hosts(tmp_path: Path) -> None:
    text = SITE_YAML.replace(
        "  tftp: {",
        "  clustering: {enabled: true}\n  api: {token: a-long-shared-admin-token}\n  tftp: {",
    ).replace(
        "{name: tftp-1, address: 10.0.0.11}",
        "{name: tftp-1, address: 10.0.0.11, roles: [tftp, etcd]}",
    )
    site = lab_site(tmp_path, text)
    config = site.node("tftp-3").config
    assert config.clustering.nodes == ["10.0.0.11:8080", "10.0.0.12:8080", "10.0.0.13:8080"]
    assert config.clustering.etcd_endpoints == ["http://10.0.0.11:2379"]
    assert site.clustering
    assert [node.name for node in site.etcd_nodes] == ["tftp-1"]


def test_unknown_keys_and_bad_values_are_reported_with_their_paths(tmp_path: Path) -> None:
    text = SITE_YAML.replace("ssh: {user: root}", "ssh: {user: root, prot: 22}").replace(
        "roles: [lb]", "roles: [web]"
    )
    found = problems(tmp_path, text)
    assert "ssh.prot: unknown key" in found
    assert any(
        p.startswith("hosts[0].roles[0]: Input should be 'tftp', 'lb' or 'etcd'") for p in found
    )


def test_daemon_config_is_checked_with_the_daemons_model(tmp_path: Path) -> None:
    text = SITE_YAML.replace(
        "{name: tftp-2, address: 10.0.0.12}",
        "{name: tftp-2, address: 10.0.0.12, config: {tftp: {port: 70000, prot: 1}}}",
    )
    found = problems(tmp_path, text)
    assert (
        "hosts[tftp-2].config.tftp.port: Input should be less than or equal to 65535 (got 70000)"
        in found
    )
    assert any(p.startswith("hosts[tftp-2].config.tftp.prot: unknown key") for p in found)


def test_nodes_behind_a_load_balancer_must_be_single_port(tmp_path: Path) -> None:
    found = problems(tmp_path, SITE_YAML.replace("single_port: true", "single_port: false"))
    assert len(found) == 3
    assert found[0].startswith("hosts[tftp-1].config.tftp.single_port: must be true behind")


def test_duplicate_hosts_and_missing_nodes(tmp_path: Path) -> None:
    text = SITE_YAML.replace(
        "{name: tftp-3, address: 10.0.0.13}", "{name: tftp-2, address: 10.0.0.12}"
    )
    found = problems(tmp_path, text)
    assert "hosts[tftp-2]: duplicate host name" in found
    assert "hosts[tftp-2].address: 10.0.0.12 is already used by tftp-2" in found
    only_lb = "site: lab\nhosts:\n  - {name: lb-1, address: 10.0.0.10, roles: [lb]}\n"
    assert problems(tmp_path, only_lb)[0].startswith('hosts: no host has the role "tftp"')


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "site: lab\nsite: other\nhosts: []\n")
    assert found == ['duplicate key "site" at line 2']


def test_unreadable_inventories(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="file not found"):
        load_inventory(tmp_path / "missing.yaml")
    assert problems(tmp_path, "site: [unclosed\n")[0].startswith("invalid YAML")
    assert problems(tmp_path, "[1, 2]\n")[0].startswith("expected a mapping")


PULUMI_OUTPUTS = {
    "site_id": "us-east",
    "node_addresses": ["10.1.0.5", "10.1.0.6", "10.1.0.7"],
    "load_balancer_address": "10.1.0.100",
    "bucket_name": "tftp-backups-us-east",
    "peer_sites": ["eu-fra1:10.20.0.11:8080"],
}


def test_pulumi_stack_outputs_are_an_inventory(tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(PULUMI_OUTPUTS))
    with pytest.raises(InventoryError, match="single_port: must be true"):
        load_inventory(path)  # a cloud load balancer needs single-port nodes


def test_yaml_overlay_on_pulumi_outputs(tmp_path: Path) -> None:
    (tmp_path / "outputs.json").write_text(json.dumps(PULUMI_OUTPUTS))
    text = (
        "pulumi_outputs: outputs.json\n"
        "ssh: {user: admin, host_key_policy: accept-new}\n"
        "config: {tftp: {single_port: true}}\n"
        "hosts:\n"
        "  - {name: us-east-node-2, config: {logging: {level: debug}}}\n"
    )
    site = lab_site(tmp_path, text)
    assert site.site_id == "us-east"
    assert [node.address for node in site.tftp_nodes] == ["10.1.0.5", "10.1.0.6", "10.1.0.7"]
    assert site.node("us-east-node-2").config.logging.level == "debug"
    assert site.node("us-east-node-1").config.logging.level == "info"
    assert site.load_balancer_address == "10.1.0.100"
    assert site.node("us-east-node-3").ssh.user == "admin"


def test_incomplete_pulumi_outputs(tmp_path: Path) -> None:
    found = problems(tmp_path, json.dumps({"site_id": "x", "node_addresses": []}), "out.json")
    assert found == ["pulumi outputs: node_addresses: required non-empty list output is missing"]
