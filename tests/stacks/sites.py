"""Stack configs the tests run: the shipped Pulumi.<site>.yaml examples and a few variants.

Runs are cached per (cloud, config) for the session: each is a full program run under fresh
mocks, and the tests only read what it recorded.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import yaml

from tests.stacks.harness import STACKS_DIR, StackRun, run_stack

CLOUDS = ("aws", "azure", "gcp")
EXAMPLES = ("us-east", "eu-central")

PROVIDER = {
    "aws": {"aws:region": "us-east-1"},
    "azure": {"azure-native:location": "eastus"},
    "gcp": {"gcp:project": "tftp-project", "gcp:region": "us-east1"},
}
ZONES = {
    "aws": ["us-east-1a", "us-east-1b"],
    "azure": ["1", "2"],
    "gcp": ["us-east1-b", "us-east1-c"],
}
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKeyOnly ops@example.net"
API_TOKEN = "lab-api-token-0123456789"
SYNC_TOKEN = "lab-sync-token-0123456789"

# A site unlike the defaults everywhere it matters, so a stack that ignores config fails:
# API on 9080, 5 nodes, autoscaling 3..9 at 60 %, 14 days retention, IPv6 and port ranges,
# an etcd rule with CIDRs (the stacks admit etcd only from the site's nodes), a deny rule,
# an unrelated "other" rule, clustering on (per-node advertise), a site id with "." and "_".
CLUSTERED_DAEMON: dict[str, Any] = {
    "node": {"node_id": "lab-1", "cluster_id": "lab"},
    "tftp": {
        "root": "/srv/tftp",
        "drain_timeout": 20,
        "write": {"enabled": True, "prefixes": ["uploads/"]},
    },
    "api": {"bind": "10.60.0.5", "port": 9080},
    "clustering": {
        "enabled": True,
        "etcd_endpoints": ["http://127.0.0.1:2379"],
        "min_nodes": 3,
        "max_nodes": 7,
    },
    "multi_site": {
        "enabled": True,
        "site_id": "lab.west_1",
        "sync": {"enabled": True, "peer_sites": ["us-east:tftp.us-east.example.net:9080"]},
    },
    "backup": {
        "enabled": True,
        "retention_days": 14,
        "key_file": "/etc/simple-tftpd/backup.key",
        "locations": ["s3://somewhere-else/tftp", "file:///var/backups/tftp"],
    },
    "security": {
        "network": {
            "firewall": {
                "default_action": "deny",
                "rules": [
                    {
                        "name": "deny-quarantine",
                        "action": "deny",
                        "protocol": "udp",
                        "ports": [69],
                        "sources": ["10.66.0.0/16"],
                    },
                    {
                        "name": "tftp.clients",
                        "protocol": "udp",
                        "ports": [69, "40000-40100"],
                        "sources": ["10.0.0.0/8", "2001:db8::/32"],
                    },
                    {
                        "name": "api_ops",
                        "protocol": "tcp",
                        "ports": [9080],
                        "sources": ["192.0.2.0/24"],
                    },
                    {
                        "name": "etcd-peers",
                        "protocol": "tcp",
                        "ports": ["2379-2380"],
                        "sources": ["10.20.0.16/28"],
                    },
                    {
                        "name": "node-exporter",
                        "protocol": "tcp",
                        "ports": [9100],
                        "sources": ["198.51.100.0/24"],
                    },
                ],
            }
        }
    },
}


def example(cloud: str, stack: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The `site` object and the provider settings of stacks/<cloud>/Pulumi.<stack>.yaml."""
    document = yaml.safe_load((STACKS_DIR / cloud / f"Pulumi.{stack}.yaml").read_text())
    config: dict[str, Any] = document["config"]
    site = config.pop(f"simple-tftpd-{cloud}:site")
    return site, {key: str(value) for key, value in config.items()}


def clustered(cloud: str) -> dict[str, Any]:
    return {
        "daemon": copy.deepcopy(CLUSTERED_DAEMON),
        "secrets": {"api_token": API_TOKEN, "sync_token": SYNC_TOKEN},
        "node_count": 5,
        "autoscaling": {"min_nodes": 3, "max_nodes": 9, "cpu_target_percent": 60},
        "network": {"cidr": "10.60.0.0/20", "zones": ZONES[cloud]},
        "admin_cidrs": ["192.0.2.0/24", "2001:db8:ff::/48"],
        "ssh_public_keys": [SSH_KEY],
        "install": {
            "wheel_url": "https://artifacts.example.net/simple_tftpd-0.1.0-py3-none-any.whl",
            "wheel_sha256": "ab" * 32,
        },
    }


def public(cloud: str) -> dict[str, Any]:
    site, _ = example(cloud, "us-east")
    return {**site, "load_balancer": {"internal": False}}


VARIANTS = {"clustered": clustered, "public": public}


@functools.cache
def _run(cloud: str, site_json: str, provider_json: str) -> StackRun:
    return run_stack(cloud, json.loads(site_json), json.loads(provider_json))


def run(cloud: str, site: dict[str, Any], provider: dict[str, str] | None = None) -> StackRun:
    provider = PROVIDER[cloud] if provider is None else provider
    return _run(cloud, json.dumps(site, sort_keys=True), json.dumps(provider, sort_keys=True))


def example_run(cloud: str, stack: str) -> StackRun:
    return run(cloud, *example(cloud, stack))


def variant_run(cloud: str, variant: str) -> StackRun:
    return run(cloud, VARIANTS[variant](cloud))
