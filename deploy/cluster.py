"""Cluster commands as thin wrappers: each picks the host and the arguments from the
inventory and runs the daemon's command of the same name there (`simple-tftpd cluster-init`,
`cluster-join`, `cluster-status`, `node-health`, `site-sync-init`)."""

from __future__ import annotations

from dataclasses import dataclass

from deploy import DeployError
from deploy.inventory import Node, Site
from deploy.remote import q
from deploy.render import HostPaths


@dataclass(frozen=True)
class ClusterCommand:
    node: Node
    command: str


def _binary(site: Site) -> str:
    return HostPaths(site.settings.install).binary


def _require_clustering(site: Site) -> None:
    if not site.clustering:
        raise DeployError(
            f"{site.source}: clustering is not enabled (set config.clustering.enabled: true)"
        )


def _api_endpoint(node: Node) -> str:
    host = f"[{node.address}]" if ":" in node.address else node.address
    return f"{host}:{node.config.api.port}"


def _target(site: Site, host: str | None) -> Node:
    node = site.node(host) if host else site.tftp_nodes[0]
    if not node.has("tftp"):
        raise DeployError(f"{node.name}: does not run the daemon (no role tftp)")
    return node


def cluster_init(site: Site, host: str | None = None) -> ClusterCommand:
    """Bootstrap the cluster from one node with every member's API endpoint."""
    _require_clustering(site)
    node = _target(site, host)
    config = node.config
    members = ",".join(config.clustering.nodes)
    return ClusterCommand(
        node,
        f"{_binary(site)} cluster-init --cluster-id {q(config.node.cluster_id)}"
        f" --node-id {q(config.node.node_id)} --nodes {q(members)}",
    )


def cluster_join(site: Site, host: str, leader: str | None = None) -> ClusterCommand:
    """Join `host` to the running cluster through `leader` (default: the first other node)."""
    _require_clustering(site)
    node = _target(site, host)
    if leader is None:
        others = [other for other in site.tftp_nodes if other.name != node.name]
        if not others:
            raise DeployError(f"{node.name}: no other node to join through; pass --leader")
        leader = _api_endpoint(others[0])
    config = node.config
    return ClusterCommand(
        node,
        f"{_binary(site)} cluster-join --cluster-id {q(config.node.cluster_id)}"
        f" --node-id {q(config.node.node_id)} --leader {q(leader)}",
    )


def cluster_status(site: Site, host: str | None = None) -> ClusterCommand:
    _require_clustering(site)
    return ClusterCommand(_target(site, host), f"{_binary(site)} cluster-status")


def node_health(site: Site, host: str | None = None) -> list[ClusterCommand]:
    """One command per node (or the named one): every node reports its own health."""
    nodes = [_target(site, host)] if host else site.tftp_nodes
    return [ClusterCommand(node, f"{_binary(site)} node-health") for node in nodes]


def site_sync_init(site: Site, host: str | None = None) -> ClusterCommand:
    node = _target(site, host)
    multi_site = node.config.multi_site
    peers = multi_site.sync.peer_sites
    if not peers:
        raise DeployError(f"{site.source}: no peer sites (set config.multi_site.sync.peer_sites)")
    shorthand = ",".join(f"{peer.site_id}:{peer.endpoint}" for peer in peers)
    return ClusterCommand(
        node,
        f"{_binary(site)} site-sync-init --site-id {q(multi_site.site_id)}"
        f" --peer-sites {q(shorthand)}",
    )
