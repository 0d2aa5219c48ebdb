"""The base of every cloud's components: one site's part, typed and named the same way."""

from __future__ import annotations

from typing import ClassVar

import pulumi

from stacks.site import Site

__all__ = ["SiteComponent", "backup_location"]


class SiteComponent(pulumi.ComponentResource):
    """A component of one site: type token `simple-tftpd:<cloud>:<class name>`, named from the
    site; its resources are created with `self.child` (parented to it)."""

    cloud: ClassVar[str]

    def __init__(self, site: Site, name: str, opts: pulumi.ResourceOptions | None) -> None:
        token = f"simple-tftpd:{self.cloud}:{type(self).__name__}"
        super().__init__(token, site.name(name), None, opts)
        self.child = pulumi.ResourceOptions(parent=self)


def backup_location(site: Site, scheme: str, bucket: pulumi.Input[str]) -> pulumi.Output[str]:
    """The URL the nodes back up to: the site's prefix in its bucket (container on Azure)."""
    return pulumi.Output.concat(f"{scheme}://", bucket, "/", site.backup_prefix)
