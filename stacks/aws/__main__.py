"""simple-tftpd site on AWS: wiring only (see stacks/aws/components.py, docs/stacks.md)."""

import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
# The shared `stacks` package lives at the repository root, two levels up.
sys.path.insert(0, str(PROJECT_DIR.parents[1]))

from stacks import cloud_init  # noqa: E402
from stacks.aws import components, config  # noqa: E402
from stacks.inventory import export_inventory  # noqa: E402

site, settings = config.load(PROJECT_DIR)

placement = (
    components.Network(site, settings).placement
    if site.stack.network.is_new
    else components.existing_placement(site)
)
bucket = components.BackupBucket(site)
identity = components.NodeIdentity(site, bucket)
firewall = components.Firewall(site, placement)
balancer = components.LoadBalancer(site, placement, firewall)
user_data = cloud_init.user_data(
    site,
    "aws",
    bucket.location,
    environment={"AWS_REGION": settings.region},
    encode=components.user_data_base64,
)
nodes = components.NodeGroup(
    site,
    settings,
    placement,
    user_data=user_data,
    firewall=firewall,
    identity=identity,
    balancer=balancer,
)

export_inventory(site, "aws", settings.region, nodes, balancer.address, bucket)
