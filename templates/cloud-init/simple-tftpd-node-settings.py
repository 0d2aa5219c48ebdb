#!/opt/simple-tftpd/current/venv/bin/python
"""Write this node's own settings into the site config cloud-init wrote, before the first start.

Every node of a scale group boots the same user data, so two values can only be known on the
node: node.node_id (its short host name) and, with clustering on, clustering.advertise (its
primary address and the API port, where the other nodes fetch content from it).
Usage: simple-tftpd-node-settings CONFIG_JSON (rewritten in place, keeping owner and mode).
"""

import json
import re
import socket
import sys
from typing import Any

# The instance metadata address on AWS, Azure and GCP: the route to it picks the primary NIC.
_METADATA_ADDRESS = "169.254.169.254"


def node_id(hostname: str) -> str:
    # The daemon's id format: [a-z0-9][a-z0-9._-]{0,62}
    name = re.sub(r"[^a-z0-9._-]+", "-", hostname.split(".")[0].lower()).lstrip("-._")
    return name[:63] or "node"


def primary_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((_METADATA_ADDRESS, 80))  # UDP connect sends nothing
        return str(probe.getsockname()[0])


def apply(config: dict[str, Any], hostname: str, address: str) -> dict[str, Any]:
    config.setdefault("node", {})["node_id"] = node_id(hostname)
    clustering = config.get("clustering", {})
    if clustering.get("enabled"):
        clustering["advertise"] = f"{address}:{config.get('api', {}).get('port', 8080)}"
    return config


def main(path: str) -> None:
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    clustered = config.get("clustering", {}).get("enabled", False)
    apply(config, socket.gethostname(), primary_address() if clustered else "")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2)
        file.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
