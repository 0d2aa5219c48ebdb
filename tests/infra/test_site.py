"""The site as a whole: one cluster leader, every node a member, the load balancer serving.

Cluster checks read `GET /api/v1/cluster/status` on every node, expecting `leader` (a node
id, or an object with `node_id`), `members` (node ids, or objects with `node_id`) and
`quorum`; they skip when the inventory does not enable clustering. Nodes refresh their view
every `lease_ttl / 3` seconds, so right after a deploy the views are read again (for at most
SETTLE_TIMEOUT seconds) until they agree, and the checks judge the last reading.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import testinfra.host

from deploy.inventory import Node, Site
from deploy.render import HostPaths, local_api_url
from deploy.rollout import CANARY_SHA256
from tests.infra.conftest import site_host
from tests.infra.helpers import as_root, fetch_sha256, get_json

SETTLE_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def inventory_site(site: Site | None) -> Site:
    if site is None:
        pytest.skip("site checks need --inventory")
    return site


def _node_id(entry: Any) -> str:
    return str(entry.get("node_id") if isinstance(entry, dict) else entry)


def _members(view: dict[str, Any]) -> set[str]:
    return {_node_id(member) for member in view.get("members", [])}


def _agree(views: dict[str, Any]) -> bool:
    leaders = {_node_id(view.get("leader")) for view in views.values()}
    return (
        len(leaders) == 1
        and leaders <= set(views)
        and all(view.get("quorum") for view in views.values())
        and all(_members(view) >= set(views) for view in views.values())
    )


def _cluster_status(host: testinfra.host.Host, node: Node, paths: HostPaths) -> dict[str, Any]:
    """The node's cluster view. With TLS the API wants a certificate and an identity: the
    daemon's own `cluster-status` runs as root with the node's config (its certificate, CA
    and api.token), so no secret goes on a command line; in the state dir, the daemon's
    working directory, where relative TLS paths point."""
    if not node.config.security.tls.enabled:
        status, body = get_json(host, f"{local_api_url(node.config)}/api/v1/cluster/status")
        assert status == 200, f"{node.name}: cluster status answered {status}: {body}"
        return dict(body)
    with as_root(host):
        done = host.run(
            "cd %s && %s cluster-status --config %s", paths.state_dir, paths.binary, paths.config
        )
    assert done.rc == 0, f"{node.name}: cluster-status exit {done.rc}: {done.stdout}{done.stderr}"
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def cluster_views(inventory_site: Site, pytestconfig: pytest.Config) -> dict[str, Any]:
    if not inventory_site.clustering:
        pytest.skip("clustering is not enabled in the inventory")
    nodes = [
        (node, site_host(pytestconfig, node))
        for node in inventory_site.tftp_nodes
        if node.config.clustering.enabled
    ]
    paths = HostPaths(inventory_site.settings.install)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        views: dict[str, Any] = {}
        for node, host in nodes:
            views[node.config.node.node_id] = _cluster_status(host, node, paths)
        if _agree(views) or time.monotonic() > deadline:
            return views
        time.sleep(1)


def test_exactly_one_leader(cluster_views: dict[str, Any]) -> None:
    leaders = {node: _node_id(view.get("leader")) for node, view in cluster_views.items()}
    assert len(set(leaders.values())) == 1, f"nodes disagree on the leader: {leaders}"
    assert next(iter(leaders.values())) in cluster_views


def test_every_node_is_a_member(cluster_views: dict[str, Any]) -> None:
    for node, view in cluster_views.items():
        members = _members(view)
        assert members >= set(cluster_views), f"{node} sees members {sorted(members)}"


def test_every_node_has_etcd_quorum(cluster_views: dict[str, Any]) -> None:
    without = sorted(node for node, view in cluster_views.items() if not view.get("quorum"))
    assert not without, f"no etcd quorum on {without}"


def test_load_balancer_serves_fetches(inventory_site: Site, pytestconfig: pytest.Config) -> None:
    address = inventory_site.load_balancer_address
    if address is None:
        pytest.skip("the inventory has no load balancer")
    via = inventory_site.tftp_nodes[0]
    host = site_host(pytestconfig, via)
    paths = HostPaths(inventory_site.settings.install)
    port = inventory_site.settings.load_balancer.port
    name = inventory_site.settings.rollout.health_file
    # Enough fetches for the balancer to send some to every node.
    for _ in range(2 * len(inventory_site.tftp_nodes)):
        assert fetch_sha256(host, paths, address, port, name) == CANARY_SHA256
