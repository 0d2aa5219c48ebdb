"""simple-tftpd site on Azure: wiring only (see stacks/azure/components.py, docs/stacks.md)."""

import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
# The shared `stacks` package lives at the repository root, two levels up.
sys.path.insert(0, str(PROJECT_DIR.parents[1]))

from stacks import cloud_init  # noqa: E402
from stacks.azure import components, config  # noqa: E402
from stacks.inventory import export_inventory  # noqa: E402

site, settings = config.load(PROJECT_DIR)

group = components.ResourceGroup(site, settings)
placement = (
    components.Network(site, settings, group).placement
    if site.stack.network.is_new
    else components.Placement(subnet_id=site.stack.network.subnet_ids[0])
)
backup = components.BackupStorage(site, settings, group)
identity = components.NodeIdentity(site, settings, group, backup)
firewall = components.Firewall(site, group)
balancer = components.LoadBalancer(site, settings, group, placement)
user_data = cloud_init.user_data(
    site,
    "azure",
    backup.location,
    # The backup client finds the account and the managed identity through these.
    environment={
        "AZURE_STORAGE_ACCOUNT_NAME": backup.account_name,
        "AZURE_CLIENT_ID": identity.client_id,
    },
)
nodes = components.ScaleSet(
    site,
    settings,
    group,
    placement,
    user_data=user_data,
    firewall=firewall,
    identity=identity,
    balancer=balancer,
)

export_inventory(site, "azure", settings.location, nodes, balancer.address, backup)
