"""Every config read and default of the GCP stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stacks.config import SettingsProblems, read_site
from stacks.site import Site

__all__ = ["GcpSettings", "load"]

# Ubuntu 24.04 LTS: its GCE image runs cloud-init on the `user-data` metadata key (Debian's
# GCE images have no cloud-init).
DEFAULT_IMAGE = "ubuntu-os-cloud/ubuntu-2404-lts-amd64"
DEFAULT_MACHINE_TYPE = "e2-small"
# Where Google's health check probes for passthrough load balancers come from.
HEALTH_CHECK_RANGES = {
    "INTERNAL": ("35.191.0.0/16", "130.211.0.0/22"),
    "EXTERNAL": ("35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22"),
}


@dataclass(frozen=True)
class GcpSettings:
    project: str
    region: str
    machine_type: str
    image: str
    zones: tuple[str, ...]
    internal: bool = True

    @property
    def scheme(self) -> str:
        """The load balancing scheme of the passthrough load balancer."""
        return "INTERNAL" if self.internal else "EXTERNAL"


def load(project_dir: Path) -> tuple[Site, GcpSettings]:
    site = read_site(project_dir)
    settings = SettingsProblems()
    project = settings.require("gcp", "project", "my-project")
    region = settings.require("gcp", "region", "us-east1")
    network = site.stack.network
    for index, zone in enumerate(network.zones):
        if region and not zone.startswith(f"{region}-"):
            settings.add(f'site.network.zones[{index}]: "{zone}" is not in region {region}')
    if network.id is not None and len(network.subnet_ids) != 1:
        settings.add("site.network.subnet_ids: a regional instance group uses one subnetwork")
    settings.raise_any()
    machine = site.stack.machine
    return site, GcpSettings(
        project=project,
        region=region,
        machine_type=machine.type or DEFAULT_MACHINE_TYPE,
        image=machine.image or DEFAULT_IMAGE,
        zones=tuple(network.zones),
        internal=site.internal_load_balancer,
    )
