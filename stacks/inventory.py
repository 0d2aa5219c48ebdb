"""The stack outputs the fabfile reads as its inventory: the same keys on every cloud.

`pulumi stack output --json` in a stack directory gives:

| key                 | what |
|---------------------|------|
| `cloud`             | `aws`, `azure` or `gcp` |
| `site_id`           | the daemon config's `multi_site.site_id` |
| `region`            | the cloud region (Azure: location) |
| `node_group`        | the autoscaling group / scale set / managed instance group |
| `node_list_command` | a shell command printing the nodes' private addresses, one per line |
| `lb_address`        | the load balancer address (DNS name on AWS, IP elsewhere) |
| `tftp_port`, `api_port` | ports behind the load balancer |
| `backup_bucket`     | the site's backup bucket (Azure: the storage container) |
| `backup_location`   | the URL the nodes back up to |
| `peer_sites`        | `[{"site_id", "endpoint"}]` from `multi_site.sync.peer_sites` |
| `ssh_user`          | the admin user cloud-init creates |
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from stacks.site import Site

__all__ = ["Inventory", "export_inventory"]


@dataclass(frozen=True)
class Inventory:
    cloud: str
    region: str
    node_group: pulumi.Input[str]
    node_list_command: pulumi.Input[str]
    lb_address: pulumi.Input[str]
    backup_bucket: pulumi.Input[str]
    backup_location: pulumi.Input[str]


def export_inventory(site: Site, inventory: Inventory) -> None:
    pulumi.export("cloud", inventory.cloud)
    pulumi.export("site_id", site.site_id)
    pulumi.export("region", inventory.region)
    pulumi.export("node_group", inventory.node_group)
    pulumi.export("node_list_command", inventory.node_list_command)
    pulumi.export("lb_address", inventory.lb_address)
    pulumi.export("tftp_port", site.tftp_port)
    pulumi.export("api_port", site.api_port)
    pulumi.export("backup_bucket", inventory.backup_bucket)
    pulumi.export("backup_location", inventory.backup_location)
    pulumi.export("peer_sites", site.peer_sites)
    pulumi.export("ssh_user", site.stack.ssh_user)
