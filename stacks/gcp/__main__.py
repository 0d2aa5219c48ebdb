"""simple-tftpd site on GCP: wiring only (see stacks/gcp/components.py, docs/stacks.md)."""

import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
# The shared `stacks` package lives at the repository root, two levels up.
sys.path.insert(0, str(PROJECT_DIR.parents[1]))

from stacks import cloud_init  # noqa: E402
from stacks.gcp import components, config  # noqa: E402
from stacks.inventory import export_inventory  # noqa: E402

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
user_data = cloud_init.user_data(
    site,
    "gcp",
    bucket.location,
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
    site, "gcp", settings.region, nodes, balancer.address, bucket, tftp_bind=frontend.address
)
