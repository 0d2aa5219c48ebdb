"""`fab cluster-join` on fake hosts (invoke's MockContext): the order of the steps, and every
way it can fail before or while it changes something."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fabric import Config
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.runners import Result

import fabfile
from deploy import DeployError, certs
from deploy import cluster as cluster_mod
from deploy.cluster import EtcdMember, initial_cluster, join_node
from deploy.inventory import Node, Site
from deploy.release import Release
from deploy.render import HostPaths
from tests.deploy.fakes import SITE_YAML, TLS_SITE_YAML, FakeHost, fail, lab_site, ok

JOINING = (
    SITE_YAML.replace(
        "  tftp: {",
        "  clustering: {enabled: true}\n  api: {token: a-long-shared-admin-token}\n  tftp: {",
    )
    .replace("address: 10.0.0.11}", "address: 10.0.0.11, roles: [tftp, etcd]}")
    .replace("address: 10.0.0.12}", "address: 10.0.0.12, roles: [tftp, etcd]}")
    .replace("address: 10.0.0.13}", "address: 10.0.0.13, roles: [tftp, etcd]}")
    + "  - {name: tftp-4, address: 10.0.0.14, roles: [tftp, etcd]}\n"
)
RELEASE = Release("0.1.0-abc", "0.1.0", "simple_tftpd-0.1.0-py3-none-any.whl", Path("/x"), "0")
OLD_MEMBERS = [
    {"ID": str(index), "name": f"tftp-{index}", "peerURLs": [f"http://10.0.0.1{index}:2380"]}
    for index in (1, 2, 3)
]
ADDED = {"ID": "4", "peerURLs": ["http://10.0.0.14:2380"]}


def view(members: list[str], leader: str = "tftp-1", quorum: bool = True) -> Result:
    body = {
        "cluster_id": "lab",
        "leader": leader,
        "quorum": quorum,
        "members": [{"node_id": name} for name in members],
    }
    return ok(json.dumps(body))


def listing(*members: dict[str, Any]) -> Result:
    return ok(json.dumps(list(members)))


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return lab_site(tmp_path, JOINING)


@pytest.fixture
def deployed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The daemon's install and gated start (tested with the rollout) just record the host."""
    done: list[str] = []

    def prepare(connections: object, site: Site, nodes: list[Node], *rest: object) -> None:
        done.extend(f"prepare {node.name}" for node in nodes)

    def roll(c: FakeHost, site: Site, node: Node, *rest: object) -> str:
        done.append(f"roll {node.name}")
        return "upgraded"

    monkeypatch.setattr(cluster_mod, "prepare_all", prepare)
    monkeypatch.setattr(cluster_mod, "roll_node", roll)
    monkeypatch.setattr(cluster_mod, "POLL_INTERVAL", 0.01)
    return done


def hosts(**answers: list[tuple[str, Any]]) -> dict[str, FakeHost]:
    names = ["tftp-1", "tftp-2", "tftp-3", "tftp-4"]
    return {name: FakeHost(name, answers.get(name.replace("-", ""), [])) for name in names}


def run_join(site: Site, connections: dict[str, FakeHost], **kwargs: Any) -> list[str]:
    lines: list[str] = []
    join_node(connections, site, "tftp-4", RELEASE, {}, lines.append, **kwargs)
    return lines


def test_a_new_etcd_host_is_added_to_etcd_then_started_then_deployed(
    site: Site, deployed: list[str]
) -> None:
    members = ["tftp-1", "tftp-2", "tftp-3", "tftp-4"]
    connections = hosts(
        tftp1=[
            # Before the join the new node is not listed; after it, it is.
            ("cluster-status", [view(members[:3]), view(members)]),
            ("member/list", [listing(*OLD_MEMBERS), listing(*OLD_MEMBERS, ADDED)]),
        ],
        tftp4=[("cluster-status", view(members))],
    )
    lines = run_join(site, connections)
    first = connections["tftp-1"]
    join = first.index("cluster-join")
    assert first.commands[join].endswith(
        "cluster-join --cluster-id lab --node-id tftp-4 --leader 10.0.0.11:8080"
        " --etcd-peer-url http://10.0.0.14:2380 --config /etc/simple-tftpd/config.json"
    )
    new = connections["tftp-4"]
    # Its etcd env joins the running cluster, with the members etcd lists.
    (env,) = [data.decode() for path, data in new.uploads if b"ETCD_NAME" in data]
    assert "ETCD_INITIAL_CLUSTER_STATE=existing" in env
    assert (
        "ETCD_INITIAL_CLUSTER=tftp-1=http://10.0.0.11:2380,tftp-2=http://10.0.0.12:2380,"
        "tftp-3=http://10.0.0.13:2380,tftp-4=http://10.0.0.14:2380\n" in env
    )
    assert new.index("rm -rf /var/lib/simple-tftpd-etcd/member") < new.index("2379/health")
    assert deployed == ["prepare tftp-4", "roll tftp-4"]
    assert "tftp-4: member of cluster lab (4 members, leader tftp-1)" in lines


def test_a_node_without_the_etcd_role_only_joins_the_daemons(
    tmp_path: Path, deployed: list[str]
) -> None:
    site = lab_site(tmp_path, JOINING.replace("10.0.0.14, roles: [tftp, etcd]}", "10.0.0.14}"))
    members = ["tftp-1", "tftp-2", "tftp-3", "tftp-4"]
    connections = hosts(
        tftp1=[("cluster-status", [view(members[:3]), view(members)])],
        tftp4=[("cluster-status", view(members))],
    )
    run_join(site, connections)
    (join,) = [c for c in connections["tftp-1"].commands if "cluster-join" in c]
    assert "--etcd-peer-url" not in join
    assert not any(host.ran("member/list") for host in connections.values())
    assert not connections["tftp-4"].uploads
    assert deployed == ["prepare tftp-4", "roll tftp-4"]


def test_no_member_with_quorum_changes_nothing(site: Site, deployed: list[str]) -> None:
    connections = hosts(
        tftp1=[("cluster-status", fail(stderr="Error: cannot reach 10.0.0.11:8080"))],
        tftp2=[("cluster-status", view(["tftp-2"], quorum=False))],
        tftp3=[("cluster-status", fail())],
    )
    with pytest.raises(DeployError, match="no member of the cluster answered with etcd quorum"):
        run_join(site, connections)
    assert all(not host.ran("cluster-join|member/list") for host in connections.values())
    assert connections["tftp-4"].commands == []
    assert deployed == []


def test_the_next_member_is_asked_when_the_first_is_down(site: Site, deployed: list[str]) -> None:
    members = ["tftp-1", "tftp-2", "tftp-3", "tftp-4"]
    connections = hosts(
        tftp1=[("cluster-status", fail(stderr="cannot reach"))],
        tftp2=[
            ("cluster-status", [view(members[:3], "tftp-2"), view(members, "tftp-2")]),
            ("member/list", [listing(*OLD_MEMBERS), listing(*OLD_MEMBERS, ADDED)]),
        ],
        tftp4=[("cluster-status", view(members, "tftp-2"))],
    )
    run_join(site, connections)
    assert connections["tftp-2"].ran("--leader 10.0.0.12:8080 --etcd-peer-url")


def test_a_refused_join_leaves_etcd_and_the_new_host_alone(site: Site, deployed: list[str]) -> None:
    refusal = fail(stdout="{\"error\": \"this is cluster 'lab', not 'other'\"}", stderr="")
    connections = hosts(
        tftp1=[
            ("cluster-status", view(["tftp-1", "tftp-2", "tftp-3"])),
            ("member/list", listing(*OLD_MEMBERS)),
            ("cluster-join", refusal),
        ]
    )
    with pytest.raises(DeployError, match=r"tftp-1 refused the join \(exit 1\):\n  .*not 'other'"):
        run_join(site, connections)
    assert connections["tftp-4"].commands == []
    assert deployed == []


def test_an_etcd_member_that_does_not_come_up_stops_before_the_daemon(
    site: Site, deployed: list[str]
) -> None:
    connections = hosts(
        tftp1=[
            ("cluster-status", view(["tftp-1", "tftp-2", "tftp-3"])),
            ("member/list", [listing(*OLD_MEMBERS), listing(*OLD_MEMBERS, ADDED)]),
        ],
        tftp4=[
            ("2379/health", fail(stderr="")),
            ("journalctl", ok("rejected connection from peer: cluster ID mismatch\n")),
        ],
    )
    with pytest.raises(DeployError) as failed:
        run_join(site, connections)
    assert "tftp-4: the new etcd member did not become healthy" in str(failed.value)
    assert "cluster ID mismatch" in str(failed.value)
    assert deployed == []


def test_a_member_etcd_lost_track_of_is_not_guessed(site: Site, deployed: list[str]) -> None:
    stranger = {"ID": "9", "peerURLs": ["http://10.0.0.99:2380"]}
    connections = hosts(
        tftp1=[
            ("cluster-status", view(["tftp-1", "tftp-2", "tftp-3"])),
            (
                "member/list",
                [listing(*OLD_MEMBERS, stranger), listing(*OLD_MEMBERS, stranger, ADDED)],
            ),
        ]
    )
    with pytest.raises(DeployError, match=r"etcd member 9 .* was added but never started"):
        run_join(site, connections)
    assert deployed == []


def test_joining_again_is_a_no_op_for_etcd_and_the_join(site: Site, deployed: list[str]) -> None:
    members = ["tftp-1", "tftp-2", "tftp-3", "tftp-4"]
    started = {**ADDED, "name": "tftp-4"}
    connections = hosts(
        tftp1=[
            ("cluster-status", view(members)),
            ("member/list", listing(*OLD_MEMBERS, started)),
        ],
        tftp4=[("cluster-status", view(members))],
    )
    lines = run_join(site, connections)
    assert not connections["tftp-1"].ran("cluster-join")
    assert not connections["tftp-4"].uploads  # its etcd config and data stay as they are
    assert connections["tftp-4"].ran("systemctl is-active --quiet simple-tftpd-etcd")
    assert "tftp-4: already a member of the cluster" in lines
    assert deployed == ["prepare tftp-4", "roll tftp-4"]


def test_a_node_that_never_shows_up_fails_after_the_timeout(
    site: Site, deployed: list[str]
) -> None:
    old = ["tftp-1", "tftp-2", "tftp-3"]
    connections = hosts(
        tftp1=[
            ("cluster-status", view(old)),
            ("member/list", [listing(*OLD_MEMBERS), listing(*OLD_MEMBERS, ADDED)]),
        ],
        tftp4=[("cluster-status", view([*old, "tftp-4"], leader="", quorum=False))],
    )
    with pytest.raises(DeployError, match=r"tftp-4: not a member of the cluster after 0s: .*"
                       r"quorum False"):  # fmt: skip
        run_join(site, connections, member_timeout=0.05)
    assert deployed == ["prepare tftp-4", "roll tftp-4"]


def test_initial_cluster_names_the_added_member_after_the_new_node(site: Site) -> None:
    members = [
        EtcdMember("1", "tftp-1", ("http://10.0.0.11:2380",)),
        EtcdMember("4", "", ("http://10.0.0.14:2380",)),
    ]
    assert (
        initial_cluster(members, site.node("tftp-4"), "http://10.0.0.14:2380")
        == "tftp-1=http://10.0.0.11:2380,tftp-4=http://10.0.0.14:2380"
    )


# --- the task: checks that stop it before anything is built or touched ---------------------------


@pytest.fixture
def untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    def touched(*args: object, **kwargs: object) -> None:
        raise AssertionError("a host or a build was touched")

    monkeypatch.setattr(fabfile, "connect", touched)
    monkeypatch.setattr(fabfile, "build_release", touched)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda text: text.replace("  clustering: {enabled: true}\n", ""), "clustering is not"),
        (lambda text: text, "lb-1: does not run the daemon"),
        (
            lambda text: text.replace(", roles: [tftp, etcd]}", "}").replace(
                "10.0.0.14}", "10.0.0.14, roles: [tftp, etcd]}"
            ),
            "has the etcd role but no other host does",
        ),
    ],
)
def test_the_task_refuses_inventories_that_cannot_join(
    tmp_path: Path, untouched: None, change: Any, message: str
) -> None:
    inventory = tmp_path / "site.yaml"
    inventory.write_text(change(JOINING))
    host = "lb-1" if "lb-1" in message else "tftp-4"
    with pytest.raises(Exit, match=message):
        fabfile.cluster_join(Context(config=Config()), host=host, inventory=str(inventory))


def test_the_task_needs_another_node(tmp_path: Path, untouched: None) -> None:
    inventory = tmp_path / "site.yaml"
    inventory.write_text(
        "site: lab\nconfig:\n  clustering: {enabled: true, etcd_endpoints: ['10.0.0.5:2379']}\n"
        "  api: {token: a-long-shared-admin-token}\n"
        "hosts:\n  - {name: tftp-1, address: 10.0.0.11}\n"
    )
    with pytest.raises(Exit, match="tftp-1: no other node in the inventory to join through"):
        fabfile.cluster_join(Context(config=Config()), host="tftp-1", inventory=str(inventory))


def test_a_tls_etcd_member_joins_only_with_its_own_certificate(tmp_path: Path) -> None:
    """A TLS site: a new etcd member needs its member certificate from the site PKI (`fab
    certs` issues one for a new host), checked before any host is touched; a daemon-only
    host needs none for etcd."""
    site = lab_site(
        tmp_path,
        TLS_SITE_YAML.replace("address: 10.0.0.13}", "address: 10.0.0.13, roles: [tftp, etcd]}"),
    )
    new, _ = cluster_mod.check_join(site, "tftp-3")
    with pytest.raises(DeployError, match="needs its certificate: run `fab certs`"):
        cluster_mod.check_join_tls(site, new, [])
    pki = tmp_path / "pki"
    certs.issue_site(site, pki)
    files = cluster_mod.check_join_tls(site, new, certs.site_files(site, pki)["tftp-3"])
    member = HostPaths(site.settings.install).etcd_tls
    assert sorted(f.path for f in files) == sorted(vars(member).values())
    daemon_only = lab_site(tmp_path, TLS_SITE_YAML)
    new, _ = cluster_mod.check_join(daemon_only, "tftp-3")
    assert cluster_mod.check_join_tls(daemon_only, new, []) == []


def test_the_task_renders_builds_and_joins_with_the_sites_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = tmp_path / "site.yaml"
    inventory.write_text(JOINING)
    made: dict[str, FakeHost] = {}

    def connect(node: Node, config: object) -> FakeHost:
        return made.setdefault(node.name, FakeHost(node.name))

    joined: dict[str, Any] = {}

    def join(
        connections: dict[str, FakeHost], site: Site, host: str, *rest: Any, **kw: Any
    ) -> None:
        joined.update(connections=sorted(connections), host=host, rest=rest, kw=kw)

    monkeypatch.setattr(fabfile, "connect", connect)
    monkeypatch.setattr(fabfile, "build_release", lambda *args, **kwargs: RELEASE)
    monkeypatch.setattr(cluster_mod, "join_node", join)
    fabfile.cluster_join(
        Context(config=Config()), host="tftp-4", inventory=str(inventory), leader="10.0.0.12:8080"
    )
    # The load balancer is not one of the hosts a join talks to.
    assert joined["connections"] == ["tftp-1", "tftp-2", "tftp-3", "tftp-4"]
    release, files, _log = joined["rest"]
    assert release is RELEASE
    assert {"config", "unit", "etcd_env", "etcd_unit"} <= set(files)
    assert joined["kw"] == {"leader": "10.0.0.12:8080", "tls": []}
