"""What the firewalls must allow, derived straight from a daemon config (not via stacks.site)."""

from __future__ import annotations

from typing import Any

ETCD = (2379, 2380)
SSH = 22

# (protocol, first port, last port, source CIDR)
CidrRule = tuple[str, int, int, str]


def _bounds(spec: int | str) -> tuple[int, int]:
    if isinstance(spec, int):
        return spec, spec
    low, high = spec.split("-")
    return int(low), int(high)


def cidr_rules(daemon: dict[str, Any], admin_cidrs: list[str]) -> set[CidrRule]:
    """Each allow rule's (protocol, port range, source) as configured, plus SSH and the API
    from the admin networks. etcd and SSH ports in config rules belong to the stacks."""
    api = daemon.get("api", {}).get("port", 8080)
    expected: set[CidrRule] = set()
    rules = daemon.get("security", {}).get("network", {}).get("firewall", {}).get("rules", [])
    for rule in rules:
        if rule.get("action", "allow") != "allow":
            continue
        for spec in rule["ports"]:
            low, high = _bounds(spec)
            managed = rule["protocol"] == "tcp" and (
                (ETCD[0] <= low and high <= ETCD[1]) or low == high == SSH
            )
            if managed:
                continue
            overlaps = rule["protocol"] == "tcp" and (low <= ETCD[1] and ETCD[0] <= high)
            assert not overlaps, "test configs keep etcd ranges whole"
            expected |= {(rule["protocol"], low, high, source) for source in rule["sources"]}
    for source in admin_cidrs:
        expected |= {("tcp", SSH, SSH, source), ("tcp", api, api, source)}
    return expected


def sources_for(expected: set[CidrRule], protocol: str, port: int) -> set[str]:
    return {
        source for proto, low, high, source in expected if proto == protocol and low <= port <= high
    }
