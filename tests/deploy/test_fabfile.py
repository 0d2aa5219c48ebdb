"""The Fabric tasks: inventory errors stop them before any host is touched, and the cluster
tasks run the daemon's commands of the same names on the right hosts."""

from __future__ import annotations

from pathlib import Path

import pytest
from fabric import Config, Connection
from fabric.testing.base import MockRemote
from invoke.context import Context
from invoke.exceptions import Exit

import fabfile
from deploy.inventory import Node
from tests.deploy.fakes import SITE_YAML, FakeHost, fail

# Cluster commands run from the state dir, as the unit runs the daemon.
BINARY = "cd /var/lib/simple-tftpd && /opt/simple-tftpd/current/venv/bin/simple-tftpd"
# Every cluster command reads the node's token, etcd endpoints and TLS files from its config.
CONFIG = " --config /etc/simple-tftpd/config.json"
CLUSTERED = SITE_YAML.replace(
    "  tftp: {",
    "  clustering: {enabled: true, etcd_endpoints: ['10.0.0.11:2379']}\n"
    "  api: {token: a-long-shared-admin-token}\n"
    "  multi_site:\n"
    "    sync: {peer_sites: [eu-fra1:10.20.0.11:8080, 'us-iad1:[2001:db8::10]:8080']}\n"
    "  tftp: {",
)


@pytest.fixture
def ctx() -> Context:
    return Context(config=Config())


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(CLUSTERED)
    return path


@pytest.fixture
def hosts(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeHost]:
    """Every connection the tasks open goes to a fake host, kept here by name."""
    made: dict[str, FakeHost] = {}

    def connect(node: Node, config: object) -> FakeHost:
        name = node.name
        answers = [("node-health", fail(stderr="etcd unreachable"))] if name == "tftp-2" else []
        made[name] = FakeHost(name, answers)
        return made[name]

    monkeypatch.setattr(fabfile, "connect", connect)
    return made


def test_a_bad_inventory_stops_the_deploy_before_any_host(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SITE_YAML.replace("drain_timeout: 5", "drain_timeout: -1"))

    def touched(*args: object, **kwargs: object) -> None:
        raise AssertionError("a host or a build was touched")

    monkeypatch.setattr(fabfile, "connect", touched)
    monkeypatch.setattr(fabfile, "build_release", touched)
    with pytest.raises(Exit) as stopped:
        fabfile.deploy(ctx, inventory=str(bad))
    assert stopped.value.code == 1
    assert (
        "hosts[tftp-1].config.tftp.drain_timeout: Input should be greater than or equal to 0"
        in str(stopped.value.message)
    )


def test_a_render_failure_stops_the_deploy_before_any_host(
    ctx: Context, inventory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy.render import RenderError

    def broken(site: object, node: object) -> None:
        raise RenderError("template systemd/simple-tftpd.service.j2: 'typo' is undefined")

    monkeypatch.setattr(fabfile, "render_host", broken)
    monkeypatch.setattr(fabfile, "connect", lambda *a: pytest.fail("connected"))
    with pytest.raises(Exit, match="'typo' is undefined"):
        fabfile.deploy(ctx, inventory=str(inventory))


def test_cluster_init_runs_on_the_first_node_with_every_member(
    ctx: Context, inventory: Path, hosts: dict[str, FakeHost]
) -> None:
    fabfile.cluster_init(ctx, inventory=str(inventory))
    assert list(hosts) == ["tftp-1"]
    assert hosts["tftp-1"].commands == [
        f"{BINARY} cluster-init --cluster-id lab --node-id tftp-1"
        " --nodes 10.0.0.11:8080,10.0.0.12:8080,10.0.0.13:8080" + CONFIG
    ]


def test_cluster_join_of_an_unknown_host(
    ctx: Context, inventory: Path, hosts: dict[str, FakeHost]
) -> None:
    with pytest.raises(Exit, match=r"no host named 'tftp-9' \(hosts: lb-1, tftp-1"):
        fabfile.cluster_join(ctx, host="tftp-9", inventory=str(inventory))
    assert hosts == {}


def test_cluster_status_and_site_sync_init(
    ctx: Context, inventory: Path, hosts: dict[str, FakeHost]
) -> None:
    fabfile.cluster_status(ctx, inventory=str(inventory), host="tftp-2")
    assert hosts["tftp-2"].commands == [f"{BINARY} cluster-status{CONFIG}"]
    fabfile.site_sync_init(ctx, inventory=str(inventory))
    assert hosts["tftp-1"].commands == [
        f"{BINARY} site-sync-init --site-id lab"
        " --peer-sites 'eu-fra1:10.20.0.11:8080,us-iad1:[2001:db8::10]:8080'" + CONFIG
    ]


def test_node_health_asks_every_node_and_reports_the_failures(
    ctx: Context, inventory: Path, hosts: dict[str, FakeHost], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Exit, match=r"failed on: tftp-2 \(exit 1\)"):
        fabfile.node_health(ctx, inventory=str(inventory))
    assert sorted(hosts) == ["tftp-1", "tftp-2", "tftp-3"]
    assert all(host.commands == [f"{BINARY} node-health{CONFIG}"] for host in hosts.values())
    assert "[tftp-2] etcd unreachable" in capsys.readouterr().out


def test_cluster_tasks_need_clustering(
    ctx: Context, tmp_path: Path, hosts: dict[str, FakeHost]
) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(SITE_YAML)
    for task in (fabfile.cluster_init, fabfile.cluster_status):
        with pytest.raises(Exit, match="clustering is not enabled"):
            task(ctx, inventory=str(plain))
    with pytest.raises(Exit, match="no peer sites"):
        fabfile.site_sync_init(ctx, inventory=str(plain))
    assert hosts == {}


def test_cluster_status_over_a_real_fabric_connection(
    ctx: Context,
    inventory: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through fabric.Connection and paramiko, mocked by fabric.testing's MockRemote (which
    expects a bare connect(), so the connection is made without connect()'s timeouts)."""
    monkeypatch.setattr(
        fabfile, "connect", lambda node, config: Connection(node.address, user=node.ssh.user)
    )
    with MockRemote() as remote:
        remote.expect(
            host="10.0.0.11",
            user="root",
            cmd=f"{BINARY} cluster-status{CONFIG}",
            out=b"leader: tftp-1\nmembers: 3\n",
        )
        fabfile.cluster_status(ctx, inventory=str(inventory))
    assert capsys.readouterr().out == "leader: tftp-1\nmembers: 3\n"


def test_connections_check_host_keys(inventory: Path, tmp_path: Path) -> None:
    import paramiko

    from deploy.inventory import load_inventory
    from deploy.remote import connect

    site = load_inventory(inventory)
    strict = connect(site.node("tftp-1"))
    assert isinstance(strict.client._policy, paramiko.RejectPolicy)
    assert strict.connect_timeout == 10
    known = tmp_path / "known_hosts"
    key = paramiko.RSAKey.generate(1024)
    known.write_text(f"10.0.0.11 ssh-rsa {key.get_base64()}\n")
    inventory.write_text(
        CLUSTERED.replace(
            "ssh: {user: root}",
            f"ssh: {{user: root, known_hosts: {known}, host_key_policy: accept-new}}",
        )
    )
    trusting = connect(load_inventory(inventory).node("tftp-1"))
    assert isinstance(trusting.client._policy, paramiko.AutoAddPolicy)
    assert trusting.client.get_host_keys().lookup("10.0.0.11") is not None
