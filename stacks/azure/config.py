"""Every config read and default of the Azure stack."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pulumi

from stacks.config import SettingsProblems, read_site
from stacks.site import Site

__all__ = ["AzureSettings", "ImageReference", "load"]

# Ubuntu 24.04 LTS (cloud-init, python3-venv in the archive).
DEFAULT_IMAGE = "Canonical:ubuntu-24_04-lts:server:latest"
DEFAULT_VM_SIZE = "Standard_B2s"
AVAILABILITY_ZONES = ("1", "2", "3")


@dataclass(frozen=True)
class ImageReference:
    """A marketplace image (`publisher:offer:sku:version`) or an image resource id."""

    publisher: str | None = None
    offer: str | None = None
    sku: str | None = None
    version: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class AzureSettings:
    location: str
    # An existing resource group to deploy into; None: the stack creates one.
    resource_group: str | None
    vm_size: str
    image: ImageReference
    zones: tuple[str, ...]
    # Globally unique names and GUIDs, stable for one project/stack/site.
    storage_account: str
    role_definition_guid: str
    role_assignment_guid: str


def _image(text: str, settings: SettingsProblems) -> ImageReference:
    if text.startswith("/subscriptions/"):
        return ImageReference(id=text)
    parts = text.split(":")
    if len(parts) != 4 or not all(parts):
        settings.add(
            f'site.machine.image: "{text}" is neither "publisher:offer:sku:version" nor an '
            "image resource id"
        )
        return ImageReference()
    publisher, offer, sku, version = parts
    return ImageReference(publisher=publisher, offer=offer, sku=sku, version=version)


def load(project_dir: Path) -> tuple[Site, AzureSettings]:
    site = read_site(project_dir)
    settings = SettingsProblems()
    location = settings.require("azure-native", "location", "eastus")
    stack = site.stack
    for index, zone in enumerate(stack.network.zones):
        if zone not in AVAILABILITY_ZONES:
            settings.add(f'site.network.zones[{index}]: "{zone}" is not an Azure zone (1, 2, 3)')
    if stack.network.id is not None and len(stack.network.subnet_ids) != 1:
        settings.add("site.network.subnet_ids: an Azure scale set uses exactly one subnet id")
    if not stack.ssh_public_keys:
        settings.add(
            "site.ssh_public_keys: Azure Linux scale sets need at least one key "
            "(password logins stay disabled)"
        )
    image = _image(stack.machine.image or DEFAULT_IMAGE, settings)
    settings.raise_any()
    identity = f"{pulumi.get_project()}/{pulumi.get_stack()}/{site.site_id}"
    digest = hashlib.sha256(identity.encode()).hexdigest()
    return site, AzureSettings(
        location=location,
        resource_group=pulumi.Config().get("resource_group"),
        vm_size=stack.machine.type or DEFAULT_VM_SIZE,
        image=image,
        zones=tuple(stack.network.zones),
        # 3-24 lowercase letters and digits.
        storage_account=f"tftp{re.sub('[^a-z0-9]', '', site.slug)[:12]}{digest[:8]}",
        role_definition_guid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{identity}/backup-writer")),
        role_assignment_guid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{identity}/backup-writes")),
    )
