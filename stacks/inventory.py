"""The stack outputs the fabfile reads as its inventory: the same keys on every cloud.

`pulumi stack output --json > site.json` in a stack directory gives a file that
`fab deploy --inventory site.json` reads (deploy/stack_outputs.py):

| key                 | what |
|---------------------|------|
| `cloud`             | `aws`, `azure` or `gcp` |
| `site_id`           | the daemon config's `multi_site.site_id` |
| `region`            | the cloud region (Azure: location) |
| `node_group`        | the autoscaling group / scale set / managed instance group |
| `node_list_command` | a cloud CLI command printing the running nodes' private addresses |
| `lb_address`        | the load balancer address (DNS name on AWS, IP elsewhere) |
| `tftp_port`, `api_port` | ports behind the load balancer |
| `backup_bucket`     | the site's backup bucket (Azure: the storage container) |
| `backup_location`   | the URL the nodes back up to |
| `peer_sites`        | `[{"site_id", "endpoint"}]` from `multi_site.sync.peer_sites` |
| `ssh_user`          | the admin user cloud-init creates |
| `python_version`    | the nodes' Python (`major.minor`): the deploy builds wheels for it |
| `daemon_config`     | the daemon config as the nodes run it, without the per-node keys |

Node addresses are not outputs: an autoscaled group changes without a `pulumi up`, so a
stored list would go stale; `node_list_command` asks the cloud when the fabfile runs. The
commands print addresses separated by white space and run without a shell.
"""

from __future__ import annotations

from typing import Any, Protocol

import pulumi

from stacks.site import Site

__all__ = [
    "BackupOutputs",
    "NodeGroupOutputs",
    "aws_node_list_command",
    "azure_node_list_command",
    "export_inventory",
    "exported_daemon_config",
    "gcp_node_list_command",
]


def aws_node_list_command(region: str, group: pulumi.Input[str]) -> pulumi.Output[str]:
    """Running instances of the autoscaling group (EC2 tags them with the group's name)."""
    return pulumi.Output.concat(
        "aws ec2 describe-instances --region ",
        region,
        " --filters Name=tag:aws:autoscaling:groupName,Values=",
        group,
        " Name=instance-state-name,Values=running",
        " --query 'Reservations[].Instances[].PrivateIpAddress' --output text",
    )


def azure_node_list_command(
    resource_group: pulumi.Input[str], scale_set: pulumi.Input[str]
) -> pulumi.Output[str]:
    """Running VMs of the flexible scale set: they are plain VMs that name their scale set
    (`az vmss list-instances` lists only uniform scale sets' instances with addresses)."""
    return pulumi.Output.concat(
        "az vm list --show-details --resource-group ",
        resource_group,
        ' --query "[?virtualMachineScaleSet && ends_with(virtualMachineScaleSet.id, ',
        "'/",
        scale_set,
        "') && powerState=='VM running'].privateIps\" --output tsv",
    )


def gcp_node_list_command(project: str, site: Site) -> pulumi.Output[str]:
    """Running instances labelled with the site (the instance template sets the label)."""
    return pulumi.Output.concat(
        "gcloud compute instances list --project ",
        project,
        ' --filter="labels.simple-tftpd-site=',
        site.slug,
        ' AND status=RUNNING" --format="value(networkInterfaces[0].networkIP)"',
    )


class BackupOutputs(Protocol):
    """What every cloud's backup component offers the inventory."""

    @property
    def name(self) -> pulumi.Output[str]: ...

    @property
    def location(self) -> pulumi.Output[str]: ...


class NodeGroupOutputs(Protocol):
    """What every cloud's node group component offers the inventory."""

    @property
    def name(self) -> pulumi.Output[str]: ...

    @property
    def list_command(self) -> pulumi.Output[str]: ...


_SECRET_KEYS = frozenset({"token", "tokens"})


def _has_secret(value: object) -> bool:
    if isinstance(value, dict):
        return any(
            (key in _SECRET_KEYS and item) or _has_secret(item) for key, item in value.items()
        )
    return isinstance(value, list) and any(_has_secret(item) for item in value)


def exported_daemon_config(site: Site, tftp_bind: str, backup_location: str) -> dict[str, Any]:
    """The nodes' daemon config without defaults and without what the inventory fills in per
    node (`node.node_id`, `clustering.advertise`, and `clustering.nodes` when unset)."""
    config = site.node_config(tftp_bind=tftp_bind, backup_location=backup_location)
    data: dict[str, Any] = config.model_dump(mode="json", exclude_defaults=True)
    data.get("node", {}).pop("node_id", None)
    data.get("clustering", {}).pop("advertise", None)
    return data


def export_inventory(
    site: Site,
    cloud: str,
    region: str,
    nodes: NodeGroupOutputs,
    lb_address: pulumi.Input[str],
    backup: BackupOutputs,
    tftp_bind: pulumi.Input[str] = "0.0.0.0",
) -> None:
    config = pulumi.Output.all(tftp_bind, backup.location).apply(
        lambda values: exported_daemon_config(site, *values)
    )
    if _has_secret(site.daemon.model_dump(mode="json")):
        # `pulumi stack output --json` then prints "[secret]" unless --show-secrets.
        config = pulumi.Output.secret(config)
    pulumi.export("cloud", cloud)
    pulumi.export("site_id", site.site_id)
    pulumi.export("region", region)
    pulumi.export("node_group", nodes.name)
    pulumi.export("node_list_command", nodes.list_command)
    pulumi.export("lb_address", lb_address)
    pulumi.export("tftp_port", site.tftp_port)
    pulumi.export("api_port", site.api_port)
    pulumi.export("backup_bucket", backup.name)
    pulumi.export("backup_location", backup.location)
    pulumi.export("peer_sites", site.peer_sites)
    pulumi.export("ssh_user", site.stack.ssh_user)
    pulumi.export("python_version", site.python_version)
    pulumi.export("daemon_config", config)
