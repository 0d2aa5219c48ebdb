"""The outputs every stack exports for the fabfile (stacks/inventory.py), on every cloud."""

from __future__ import annotations

import copy
import json

import pytest

from simple_tftpd.config import parse_config
from tests.stacks import sites

INVENTORY_KEYS = {
    "cloud",
    "site_id",
    "region",
    "node_group",
    "node_list_command",
    "lb_address",
    "tftp_port",
    "api_port",
    "backup_bucket",
    "backup_location",
    "peer_sites",
    "ssh_user",
    "python_version",
    "daemon_config",
}


@pytest.mark.parametrize("cloud", sites.CLOUDS)
def test_every_cloud_exports_the_same_inventory(cloud: str) -> None:
    run = sites.example_run(cloud, "us-east")
    assert set(run.outputs) == INVENTORY_KEYS
    assert run.outputs["python_version"] == "3.12"  # Ubuntu 24.04, every cloud's default image
    assert (
        run.outputs["node_list_command"].split()[0]
        == {
            "aws": "aws",
            "azure": "az",
            "gcp": "gcloud",
        }[cloud]
    )
    # No tokens in this site's config: `pulumi stack output --json` prints it as it is.
    assert run.secret_outputs == set()
    assert json.loads(run.stack_output_json())["daemon_config"] == run.outputs["daemon_config"]


@pytest.mark.parametrize("cloud", sites.CLOUDS)
def test_the_exported_daemon_config_is_the_nodes_config_without_per_node_keys(
    cloud: str,
) -> None:
    run = sites.variant_run(cloud, "clustered")
    exported = run.outputs["daemon_config"]
    assert "node_id" not in exported["node"]
    assert "advertise" not in exported["clustering"]
    # It holds the tokens: printed as "[secret]" unless --show-secrets.
    assert run.secret_outputs == {"daemon_config"}
    assert json.loads(run.stack_output_json())["daemon_config"] == "[secret]"
    # What the inventory adds per node makes it the config a node runs.
    node = copy.deepcopy(exported)
    node["node"]["node_id"] = "node-a"
    node["clustering"]["advertise"] = "10.60.0.11:9080"
    config = parse_config(node, source="exported daemon_config")
    assert config.tftp.single_port
    assert config.api.token == sites.API_TOKEN
    assert config.backup.locations[0] == run.outputs["backup_location"]
    assert config.clustering.enabled and config.clustering.min_nodes == 3


def test_a_custom_image_exports_its_python() -> None:
    site = sites.clustered("aws")
    site["machine"] = {"image": "ami-0123456789abcdef0", "python_version": "3.11"}
    run = sites.run("aws", site)
    assert run.outputs["python_version"] == "3.11"
    template = run.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert template.inputs["imageId"] == "ami-0123456789abcdef0"
