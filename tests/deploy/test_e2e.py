"""End to end on real hosts: 3 daemon nodes that are also the site's etcd members, an nginx
UDP load balancer, and a fourth node to join later, booted with systemd-nspawn (one testbed
for the module, torn down even when a test fails).

The tests run in order, each on the site the previous one left: deploy from scratch (etcd and
the site cluster included), verify (per node and per site), the cluster tasks, a rolling
upgrade under continuous load, a broken build rolled back, `fab rollback`, a stopped node, and
`fab cluster-join` of the fourth host. Every fetch through the load balancer is checked by
sha256 and none may fail.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
from typing import Any, TypeVar

import pytest

from deploy.rollout import CANARY_SHA256
from tests.deploy.builds import build_variant
from tests.deploy.conftest import (
    BIG_FILE,
    NEW_NODE,
    NODES,
    E2ESite,
    cluster_views,
    needs_testbed,
    output,
    wait_until,
)
from tests.deploy.load import FetchLoad, fetch_sha256

pytestmark = [pytest.mark.e2e, needs_testbed, pytest.mark.timeout(600)]

TREE_VERSION = importlib.metadata.version("simple-tftpd")
UPGRADE = f"{TREE_VERSION}+e2e1"
# Good fetches to see before and after a change, so the load spans all of it.
WARMUP = 10
# Bound on waiting for the cluster to settle (members refresh every lease_ttl / 3 seconds).
SETTLE_TIMEOUT = 30.0
T = TypeVar("T")


def _files(site: E2ESite) -> dict[str, str]:
    return {"simple-tftpd-canary.bin": CANARY_SHA256, BIG_FILE: site.big_sha256}


def _cluster_views(site: E2ESite, hosts: tuple[str, ...]) -> dict[str, Any]:
    return cluster_views(lambda host: site.api(host, "GET", "/api/v1/cluster/status"), hosts)


def _settled(views: dict[str, Any]) -> bool:
    """Every node has quorum, names the same leader and sees exactly these nodes."""
    leaders = {view.get("leader") for view in views.values()}
    return (
        len(leaders) == 1
        and None not in leaders
        and all(view.get("quorum") for view in views.values())
        and all(_member_ids(view) == set(views) for view in views.values())
    )


def _member_ids(view: dict[str, Any]) -> set[str]:
    return {member["node_id"] for member in view.get("members", [])}


def _json_out(text: str) -> Any:
    """The JSON object a daemon command printed (fab passes its stderr lines on too)."""
    start = text.find("{")
    assert start >= 0, f"no JSON in: {text}"
    return json.JSONDecoder().raw_decode(text[start:])[0]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _upload(site: E2ESite, host: str, name: str, data: bytes) -> None:
    """Put a file into the cluster through `host`'s API (replicated to every member)."""
    status, body = site.api(
        host,
        "PUT",
        f"/api/v1/files/{name}",
        data,
        {"X-Content-SHA256": _sha256(data), "Content-Type": "application/octet-stream"},
    )
    assert status == 201, f"upload of {name} through {host}: {status} {body}"


def _deploy_under_load(
    site: E2ESite, *args: str
) -> tuple[subprocess.CompletedProcess[str], FetchLoad]:
    with FetchLoad(site.lb_address, 69, _files(site)) as load:
        load.wait_for(WARMUP, 60)
        result = site.fab(*args)
        load.wait_for(load.report.ok + WARMUP, 60)
    return result, load


def test_deploy_from_scratch(e2e_site: E2ESite) -> None:
    result = e2e_site.fab("deploy")
    assert result.returncode == 0, output(result)
    assert "etcd: 3 members healthy" in result.stdout
    for node in NODES:
        assert f"{node}: now serving {TREE_VERSION}-" in result.stdout
        assert e2e_site.current_version(node) == TREE_VERSION
    assert "load balancer: serving the health file" in result.stdout
    # The daemons found each other through etcd.
    views = wait_until(lambda: _cluster_views(e2e_site, NODES), _settled, SETTLE_TIMEOUT)
    assert _settled(views), json.dumps(views, indent=2)


def test_verify_passes(e2e_site: E2ESite) -> None:
    result = e2e_site.fab("verify")
    assert result.returncode == 0, output(result)
    # The per-site checks ran (pytest's -ra lists every skip with its file).
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert not [line for line in skipped if "test_site.py" in line], skipped
    assert re.search(r"\b\d+ passed\b", result.stdout), result.stdout


def test_cluster_tasks_run_the_daemon_commands(e2e_site: E2ESite) -> None:
    init = e2e_site.fab("cluster-init")
    assert init.returncode == 0, output(init)
    assert _json_out(init.stdout)["cluster"]["nodes"] == [
        f"{e2e_site.address(node)}:8080" for node in NODES
    ]
    status = e2e_site.fab("cluster-status", "--host", "tftp-2")
    assert status.returncode == 0, output(status)
    view = _json_out(status.stdout)
    assert (view["node_id"], view["quorum"]) == ("tftp-2", True)
    assert _member_ids(view) == set(NODES)
    health = e2e_site.fab("node-health")
    assert health.returncode == 0, output(health)
    # etcd itself: the three members the deploy bootstrapped, all started.
    members = e2e_site.etcd_members("tftp-3")
    assert sorted(str(member.get("name")) for member in members) == list(NODES)


def test_rolling_upgrade_under_load_loses_no_transfer(e2e_site: E2ESite) -> None:
    wheel = build_variant(e2e_site.work, "e2e1")
    result, load = _deploy_under_load(e2e_site, "deploy", "--wheel", str(wheel))
    assert result.returncode == 0, output(result)
    assert not load.report.failed and not load.report.corrupt, str(load.report)
    assert load.report.ok >= 2 * WARMUP
    for node in NODES:
        assert e2e_site.current_version(node) == UPGRADE
    verified = e2e_site.fab("verify", "--version", UPGRADE)
    assert verified.returncode == 0, output(verified)


def test_broken_build_is_rolled_back_while_the_site_serves(e2e_site: E2ESite) -> None:
    wheel = build_variant(e2e_site.work, "broken", broken=True)
    result, load = _deploy_under_load(e2e_site, "deploy", "--wheel", str(wheel))
    text = output(result)
    assert result.returncode != 0, text
    assert "tftp-1: health gate failed" in text
    assert re.search(rf"tftp-1: rolled back to {re.escape(UPGRADE)}-\w+ and serving", text)
    assert not load.report.failed and not load.report.corrupt, str(load.report)
    # The first node went back; the deploy stopped before touching the others.
    for node in NODES:
        assert e2e_site.current_version(node) == UPGRADE
        assert e2e_site.sh(node, "systemctl is-active simple-tftpd").strip() == "active"


def test_rollback_task_returns_every_node_to_the_previous_release(e2e_site: E2ESite) -> None:
    result, load = _deploy_under_load(e2e_site, "rollback")
    assert result.returncode == 0, output(result)
    assert not load.report.failed and not load.report.corrupt, str(load.report)
    for node in NODES:
        assert e2e_site.current_version(node) == TREE_VERSION


def test_a_stopped_node_keeps_the_load_balancer_serving(e2e_site: E2ESite) -> None:
    stopped = "tftp-3"
    e2e_site.sh(stopped, "systemctl stop simple-tftpd")
    try:
        with FetchLoad(e2e_site.lb_address, 69, _files(e2e_site)) as load:
            load.wait_for(60, 120)
        assert not load.report.failed and not load.report.corrupt, str(load.report)
        assert load.report.ok >= 60
        # nginx did send requests to the stopped node; its kernel handed them to the peers.
        rules = e2e_site.sh(stopped, "nft list chain ip simple_tftpd_handoff prerouting")
        handed = re.search(r"counter packets (\d+)", rules)
        assert handed and int(handed.group(1)) > 0, rules
    finally:
        e2e_site.sh(stopped, "systemctl start simple-tftpd")
    assert e2e_site.sh(stopped, "systemctl is-active simple-tftpd").strip() == "active"


def test_cluster_join_adds_a_fourth_host(e2e_site: E2ESite) -> None:
    """The operator adds tftp-4 to the inventory and runs `fab cluster-join --host tftp-4`:
    etcd gains a member, the site cluster a node, and the new node serves what the cluster
    holds, both what was stored before it joined and what is stored after."""
    site = e2e_site
    before, after = os.urandom(300_000), os.urandom(200_001)
    _upload(site, "tftp-2", "cluster/before-join.bin", before)

    result = site.fab("cluster-join", "--host", NEW_NODE, inventory=site.joined_inventory)
    assert result.returncode == 0, output(result)
    assert f"{NEW_NODE}: added to etcd as a member" in result.stdout
    assert f"{NEW_NODE}: member of cluster e2e (4 members" in result.stdout
    assert site.current_version(NEW_NODE) == TREE_VERSION

    # etcd's own member list, read from an old member and from the new one.
    for host in ("tftp-1", NEW_NODE):
        members = site.etcd_members(host)
        assert sorted(str(member.get("name")) for member in members) == [*NODES, NEW_NODE]
        (new,) = [member for member in members if member.get("name") == NEW_NODE]
        assert new["peerURLs"] == [f"http://{site.address(NEW_NODE)}:2380"]

    everyone = (*NODES, NEW_NODE)
    views = wait_until(lambda: _cluster_views(site, everyone), _settled, SETTLE_TIMEOUT)
    assert _settled(views), json.dumps(views, indent=2)
    leaders = {view["leader"] for view in views.values()}
    assert len(leaders) == 1 and leaders <= set(everyone), leaders

    _upload(site, "tftp-1", "cluster/after-join.bin", after)
    address = site.address(NEW_NODE)
    for name, data in (("cluster/before-join.bin", before), ("cluster/after-join.bin", after)):
        expected = _sha256(data)

        def fetch(name: str = name) -> str | None:
            return fetch_sha256(address, 69, name)

        def arrived(got: str | None, want: str = expected) -> bool:
            return got == want

        # Replication is asynchronous: the new node serves the file once it pulled the blob.
        fetched = wait_until(fetch, arrived, 30)
        assert fetched == expected, f"{name} from {NEW_NODE}: {fetched}"

    # As the join tells the operator: a deploy of the grown inventory puts the new node behind
    # the load balancer and into the others' configs. etcd restarts every member with the new
    # member list (each keeps its data: the new one's "new" state is not read again).
    deployed = site.fab("deploy", inventory=site.joined_inventory)
    assert deployed.returncode == 0, output(deployed)
    assert "etcd: 4 members healthy" in deployed.stdout
    # Unchanged, unless the tree changed since the join's build.
    assert re.search(rf"^{NEW_NODE}: (unchanged and healthy|now serving)", deployed.stdout, re.M)
    nginx = site.sh("lb-1", "cat /etc/nginx/nginx.conf")
    assert f"{site.address(NEW_NODE)}:69" in nginx, nginx
    # The testinfra suite on the grown site: every check of every node, one leader, four
    # members, the load balancer.
    verified = site.fab("verify", inventory=site.joined_inventory)
    assert verified.returncode == 0, output(verified)
