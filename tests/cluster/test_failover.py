"""Failures on a real site: the leader dies, etcd members die, quorum is lost and regained."""

from __future__ import annotations

import os

import pytest

from tests.cluster.conftest import Site
from tests.interop.conftest import needs_clients
from tests.support.daemon import wait_for

pytestmark = [pytest.mark.cluster, needs_clients]


def test_leader_death_elects_a_new_leader(site: Site) -> None:
    observer = site.nodes[0]
    leader_id = site.leader(observer)
    assert leader_id is not None
    leader = next(n for n in site.nodes if n.config["node"]["node_id"] == leader_id)
    survivor = next(n for n in site.nodes if n is not leader)
    leader.kill()
    try:
        assert wait_for(lambda: site.leader(survivor) not in (None, leader_id), 15)
        data = os.urandom(20_000)
        assert site.upload(survivor, "after-leader-death.bin", data)[0] == 201
        assert site.wait_served_everywhere("after-leader-death.bin", data)
    finally:
        leader.start()
    assert site.wait_served_everywhere("after-leader-death.bin", data)


def test_one_etcd_member_down_keeps_the_site_writable(site: Site) -> None:
    member = site.etcd.members[0]
    member.stop()
    try:
        data = os.urandom(10_000)
        # Every node, including the one whose preferred endpoint just died, still writes.
        for index, node in enumerate(site.nodes):
            status, body = site.upload(node, f"one-down-{index}.bin", data)
            assert status == 201, body
        assert site.wait_served_everywhere("one-down-0.bin", data)
    finally:
        site.etcd.restart(member)


def test_lost_quorum_refuses_uploads_and_keeps_serving(site: Site) -> None:
    kept = os.urandom(30_000)
    assert site.upload(site.nodes[0], "kept.bin", kept)[0] == 201
    assert site.wait_served_everywhere("kept.bin", kept)
    down = site.etcd.members[:2]
    for member in down:
        member.stop()
    try:
        status, body = site.upload(site.nodes[1], "refused.bin", os.urandom(100))
        assert status == 503
        assert "quorum" in body["error"] and "nothing was changed" in body["error"]
        # Serving goes on from local content.
        for node in site.nodes:
            assert site.fetch(node, "kept.bin") == kept
        assert wait_for(lambda: site.status(site.nodes[0])["quorum"] is False, 15)
    finally:
        for member in down:
            site.etcd.restart(member)
    # Quorum back: the refused upload never happened, new ones work.
    assert site.wait_served_everywhere("refused.bin", None)
    again = os.urandom(500)
    assert wait_for(lambda: site.upload(site.nodes[1], "again.bin", again)[0] == 201, 20)
    assert site.wait_served_everywhere("again.bin", again), site.describe("again.bin")
