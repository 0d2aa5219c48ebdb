"""simple-tftpd site on GCP: wiring only (see stacks/gcp/components.py, docs/stacks.md)."""

import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
# The shared `stacks` package lives at the repository root, two levels up.
sys.path.insert(0, str(PROJECT_DIR.parents[1]))

import pulumi  # noqa: E402

from stacks import cloud_init  # noqa: E402
from stacks.gcp import components, config  # noqa: E402
from stacks.inventory import Inventory, export_inventory  # noqa: E402

site, settings = config.load(PROJECT_DIR)

network = site.stack.network
placement = (
    components.Network(site, settings).placement
    if network.is_new
    else components.Placement(network=str(network.id), subnetwork=network.subnet_ids[0])
)
account = components.NodeServiceAccount(site)
bucket = components.BackupBucket(site, settings, account)
components.Firewall(site, settings, placement, account)
frontend = components.Frontend(site, settings, placement)
backup_location = pulumi.Output.concat("gs://", bucket.name, "/", site.backup_prefix)
user_data = cloud_init.user_data(
    site,
    "gcp",
    backup_location,
    # Passthrough load balancing is direct server return: packets arrive addressed to the
    # load balancer's IP, so single-port replies must leave from a socket bound to it.
    tftp_bind=frontend.address,
    environment={"GOOGLE_CLOUD_PROJECT": settings.project},
)
nodes = components.NodeGroup(
    site, settings, placement, user_data=user_data, account=account, frontend=frontend
)
balancer = components.LoadBalancer(site, settings, placement, frontend=frontend, nodes=nodes)

export_inventory(
    site,
    Inventory(
        cloud="gcp",
        region=settings.region,
        node_group=nodes.name,
        node_list_command=pulumi.Output.concat(
            "gcloud compute instances list --project ",
            settings.project,
            ' --filter="labels.simple-tftpd-site=',
            site.slug,
            '" --format="value(networkInterfaces[0].networkIP)"',
        ),
        lb_address=balancer.address,
        backup_bucket=bucket.name,
        backup_location=backup_location,
    ),
)
