"""End to end on real hosts: 3 daemon nodes and an nginx UDP load balancer, booted with
systemd-nspawn (one testbed for the session, torn down even when a test fails).

The tests run in order, each on the site the previous one left: deploy from scratch, verify,
a rolling upgrade under continuous load, a broken build rolled back, `fab rollback`, and a
stopped node. Every fetch through the load balancer is checked by sha256 and none may fail.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess

import pytest

from deploy.rollout import CANARY_SHA256
from tests.deploy.builds import build_variant
from tests.deploy.conftest import BIG_FILE, NODES, E2ESite, needs_testbed
from tests.deploy.load import FetchLoad

pytestmark = [pytest.mark.e2e, needs_testbed, pytest.mark.timeout(600)]

TREE_VERSION = importlib.metadata.version("simple-tftpd")
UPGRADE = f"{TREE_VERSION}+e2e1"
# Good fetches to see before and after a change, so the load spans all of it.
WARMUP = 10


def _files(site: E2ESite) -> dict[str, str]:
    return {"simple-tftpd-canary.bin": CANARY_SHA256, BIG_FILE: site.big_sha256}


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"{result.stdout}\n{result.stderr}"


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
    assert result.returncode == 0, _output(result)
    for node in NODES:
        assert f"{node}: now serving {TREE_VERSION}-" in result.stdout
        assert e2e_site.current_version(node) == TREE_VERSION
    assert "load balancer: serving the health file" in result.stdout


def test_verify_passes(e2e_site: E2ESite) -> None:
    result = e2e_site.fab("verify")
    assert result.returncode == 0, _output(result)


def test_rolling_upgrade_under_load_loses_no_transfer(e2e_site: E2ESite) -> None:
    wheel = build_variant(e2e_site.work, "e2e1")
    result, load = _deploy_under_load(e2e_site, "deploy", "--wheel", str(wheel))
    assert result.returncode == 0, _output(result)
    assert not load.report.failed and not load.report.corrupt, str(load.report)
    assert load.report.ok >= 2 * WARMUP
    for node in NODES:
        assert e2e_site.current_version(node) == UPGRADE
    verified = e2e_site.fab("verify", "--version", UPGRADE)
    assert verified.returncode == 0, _output(verified)


def test_broken_build_is_rolled_back_while_the_site_serves(e2e_site: E2ESite) -> None:
    wheel = build_variant(e2e_site.work, "broken", broken=True)
    result, load = _deploy_under_load(e2e_site, "deploy", "--wheel", str(wheel))
    output = _output(result)
    assert result.returncode != 0, output
    assert "tftp-1: health gate failed" in output
    assert re.search(rf"tftp-1: rolled back to {re.escape(UPGRADE)}-\w+ and serving", output)
    assert not load.report.failed and not load.report.corrupt, str(load.report)
    # The first node went back; the deploy stopped before touching the others.
    for node in NODES:
        assert e2e_site.current_version(node) == UPGRADE
        assert e2e_site.sh(node, "systemctl is-active simple-tftpd").strip() == "active"


def test_rollback_task_returns_every_node_to_the_previous_release(e2e_site: E2ESite) -> None:
    result, load = _deploy_under_load(e2e_site, "rollback")
    assert result.returncode == 0, _output(result)
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
