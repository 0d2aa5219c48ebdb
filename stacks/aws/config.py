"""Every config read and default of the AWS stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stacks.config import SettingsProblems, read_site
from stacks.site import Site

__all__ = ["AwsSettings", "load"]

# Ubuntu 24.04 LTS (cloud-init, python3-venv in the archive), resolved by EC2 at launch.
DEFAULT_IMAGE = (
    "resolve:ssm:/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
)
DEFAULT_INSTANCE_TYPE = "t3.small"
# Root device of Ubuntu AMIs; the launch template sizes and encrypts it.
ROOT_DEVICE = "/dev/sda1"
# EC2 refuses larger user data.
USER_DATA_LIMIT = 16 * 1024


@dataclass(frozen=True)
class AwsSettings:
    region: str
    instance_type: str
    image_id: str
    zones: tuple[str, ...]


def load(project_dir: Path) -> tuple[Site, AwsSettings]:
    site = read_site(project_dir)
    settings = SettingsProblems()
    region = settings.require("aws", "region", "us-east-1")
    network = site.stack.network
    if network.is_new and not network.zones:
        settings.add(
            "site.network.zones: a new VPC needs its availability zones, e.g. "
            f'["{region or "us-east-1"}a", "{region or "us-east-1"}b", "{region or "us-east-1"}c"]'
        )
    if not network.is_new and not site.internal_load_balancer:
        settings.add(
            "site.load_balancer.internal: an internet-facing NLB needs public subnets; the AWS "
            "stack creates them only in a new VPC (site.network.cidr)"
        )
    for index, zone in enumerate(network.zones):
        if region and not zone.startswith(region):
            settings.add(f'site.network.zones[{index}]: "{zone}" is not in region {region}')
    settings.raise_any()
    machine = site.stack.machine
    return site, AwsSettings(
        region=region,
        instance_type=machine.type or DEFAULT_INSTANCE_TYPE,
        image_id=machine.image or DEFAULT_IMAGE,
        zones=tuple(network.zones),
    )
