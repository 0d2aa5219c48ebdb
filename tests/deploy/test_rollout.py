"""The rolling deploy against fake hosts: the order of steps, and every error path (failed
health gate -> rollback, failed rollback, upload failure, corrupt upload, no earlier release)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from unittest.mock import Mock

import pytest

from deploy import DeployError, certs
from deploy.certs import TlsFile
from deploy.inventory import Site
from deploy.release import Release
from deploy.remote import RemoteError
from deploy.render import RenderedFile, render_host
from deploy.rollout import (
    CANARY_SHA256,
    HANDOFF,
    GateFailed,
    deploy_etcd,
    deploy_lb,
    deploy_site,
    prepare_all,
    roll_node,
    rollback_site,
)
from tests.deploy.fakes import TLS_SITE_YAML, Answer, FakeHost, fail, lab_site, ok, tls_site

OLD, NEW = "0.1.0-old", "0.2.0-new"
HANDOFF_SHA = hashlib.sha256(HANDOFF.read_bytes()).hexdigest()
GATE_OK = ok('{"ok": true, "sha256": "..."}')
GATE_FAILED = fail('{"ok": false, "check": "unit", "state": {"ActiveState": "failed"}}')


def state(current: str = OLD, active: str = "active", history: str = OLD) -> str:
    releases = " ".join(sorted({current, NEW, *history.split()} - {""}))
    return (
        f"current={current}\nconfig=aaa\nunit=bbb\nactive={active}\nenabled=enabled\n"
        f"history={history}\nreleases={releases}\n"
    )


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return lab_site(tmp_path)


@pytest.fixture
def release(tmp_path: Path) -> Release:
    archive = tmp_path / "release.tar"
    archive.write_bytes(b"release archive")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    return Release(NEW, "0.2.0", "simple_tftpd-0.2.0-py3-none-any.whl", archive, digest)


def node_host(name: str, *answers: tuple[str, Answer], user: str = "root") -> FakeHost:
    """A node that has the release installed already (prepare has nothing to do)."""
    prepared = f"installed=yes\nhealth={CANARY_SHA256}\nhandoff={HANDOFF_SHA}\n"
    return FakeHost(name, [*answers, ("getent group", ok(prepared))], user=user)


class Log:
    """The rollout's log callback, keeping the lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


def test_upgrade_drains_switches_gates_then_ends_the_handoff(site: Site, release: Release) -> None:
    node = site.node("tftp-1")
    host = node_host(
        "tftp-1",
        ("echo current=", ok(state())),
        ("probe.py sessions", ok('{"ok": true, "active_sessions": 0}')),
        (f"{NEW}/probe.py gate", GATE_OK),
    )
    log = Log()
    assert roll_node(host, site, node, release, render_host(site, node), log) == "upgraded"
    order = [
        host.index("handoff.py hold on"),
        host.index(r"handoff.py on --port 69 --peers 10.0.0.12,10.0.0.13 --address 10.0.0.11"),
        host.index("probe.py sessions"),
        host.index("systemctl stop simple-tftpd"),
        host.index(r"config.json.new && mv -f"),
        host.index(f"ln -sfn releases/{NEW}"),
        host.index("systemctl start simple-tftpd"),
        host.index(f"{NEW}/probe.py gate"),
        host.index("handoff.py off"),
        host.index("handoff.py hold off"),
    ]
    assert -1 not in order and order == sorted(order), host.commands
    config = next(data for _, data in host.uploads if b'"node_id": "tftp-1"' in data)
    assert json.loads(config)["tftp"]["single_port"] is True
    history = host.uploads[-1][1].decode()
    assert history == f"{OLD}\n{NEW}\n"
    assert log.lines[-1] == f"tftp-1: now serving {NEW}"


def test_failed_gate_rolls_back_to_the_previous_release(site: Site, release: Release) -> None:
    node = site.node("tftp-1")
    host = node_host(
        "tftp-1",
        ("echo current=", ok(state())),
        (f"{NEW}/probe.py gate", GATE_FAILED),
        (f"{OLD}/probe.py gate", GATE_OK),
        ("journalctl", ok("ModuleNotFoundError: No module named 'simple_tftpd.missing'")),
    )
    log = Log()
    with pytest.raises(GateFailed) as failure:
        roll_node(host, site, node, release, render_host(site, node), log)
    assert failure.value.rolled_back_to == OLD
    assert "ModuleNotFoundError" in str(failure.value)
    assert f"rolled back to {OLD} and serving" in str(failure.value)
    assert host.index(f"ln -sfn releases/{OLD}") > host.index(f"ln -sfn releases/{NEW}")
    assert host.ran(r"mv -f /etc/simple-tftpd/config.json.prev /etc/simple-tftpd/config.json")
    assert host.ran(r"simple-tftpd.service.prev")
    # Serving again: the handoff ends; the failed release never enters the history.
    assert host.ran("handoff.py off")
    assert not any(remote and b"0.2.0-new" in data for remote, data in host.uploads)
    assert "tftp-1: gate failed, rolling back to 0.1.0-old" in log.lines


def test_failed_rollback_leaves_the_node_handed_off(site: Site, release: Release) -> None:
    node = site.node("tftp-1")
    host = node_host(
        "tftp-1",
        ("echo current=", ok(state())),
        ("probe.py gate", GATE_FAILED),
    )
    log = Log()
    with pytest.raises(DeployError) as failure:
        roll_node(host, site, node, release, render_host(site, node), log)
    assert not isinstance(failure.value, GateFailed)
    assert "the rollback to 0.1.0-old failed too" in str(failure.value)
    # Not serving: its requests keep going to the peers.
    assert not host.ran("handoff.py off")
    assert host.ran("handoff.py hold off")


def test_first_install_that_fails_its_gate_stops_the_daemon(site: Site, release: Release) -> None:
    node = site.node("tftp-1")
    host = node_host(
        "tftp-1",
        ("echo current=", ok(state(current="", active="inactive", history=""))),
        ("probe.py gate", GATE_FAILED),
    )
    log = Log()
    with pytest.raises(GateFailed) as failure:
        roll_node(host, site, node, release, render_host(site, node), log)
    assert failure.value.rolled_back_to is None
    assert "the daemon is stopped on this host" in str(failure.value)
    assert host.index("systemctl stop simple-tftpd; true") > host.index(f"{NEW}/probe.py gate")
    assert not host.ran("handoff.py off")


def test_a_failed_node_stops_the_rollout_before_the_next(site: Site, release: Release) -> None:
    hosts = {
        "tftp-1": node_host(
            "tftp-1",
            ("echo current=", ok(state())),
            (f"{NEW}/probe.py gate", GATE_FAILED),
            (f"{OLD}/probe.py gate", GATE_OK),
        ),
        "tftp-2": node_host("tftp-2", ("echo current=", ok(state()))),
        "tftp-3": node_host("tftp-3", ("echo current=", ok(state()))),
        "lb-1": FakeHost("lb-1"),
    }
    files = {node.name: render_host(site, node) for node in site.nodes}
    log = Log()
    with pytest.raises(GateFailed):
        deploy_site(site, hosts, release, files, log)
    for name in ("tftp-2", "tftp-3"):
        assert not hosts[name].ran("systemctl stop"), name
    assert hosts["lb-1"].commands == []


def test_an_upload_failure_stops_the_deploy_before_any_restart(
    site: Site, release: Release
) -> None:
    fresh = "installed=no\n"
    hosts = {
        "tftp-1": FakeHost("tftp-1", [("getent group", ok(fresh))]),
        "tftp-2": FakeHost("tftp-2", [("getent group", ok(fresh))], fail_uploads=True),
        "tftp-3": FakeHost("tftp-3", [("getent group", ok(fresh))]),
        "lb-1": FakeHost("lb-1"),
    }
    files = {node.name: render_host(site, node) for node in site.nodes}
    log = Log()
    with pytest.raises(DeployError) as failure:
        deploy_site(site, hosts, release, files, log)
    message = str(failure.value)
    assert "no node was restarted" in message
    assert (
        "tftp-2: upload of release 0.2.0-new failed: OSError: Connection reset by peer" in message
    )
    for host in hosts.values():
        assert not host.ran("systemctl (stop|start)"), host.host
        assert not host.ran("ln -sfn")


def test_a_corrupt_upload_is_refused(site: Site, release: Release) -> None:
    host = FakeHost(
        "tftp-1",
        [("getent group", ok("installed=no\n")), ("sha256sum --check", fail())],
    )
    log = Log()
    with pytest.raises(DeployError) as failure:
        prepare_all({"tftp-1": host}, site, [site.node("tftp-1")], release, log)
    assert "checksum mismatch on the host" in str(failure.value)
    assert not host.ran("tar -xf")


def test_install_runs_offline_from_the_uploaded_wheels(site: Site, release: Release) -> None:
    host = FakeHost("tftp-1", [("getent group", ok("installed=no\n"))])
    log = Log()
    prepare_all({"tftp-1": host}, site, [site.node("tftp-1")], release, log)
    install = next(command for command in host.commands if "-m venv" in command)
    assert "python3 -m venv /opt/simple-tftpd/releases/0.2.0-new/venv" in install
    assert "--no-index --no-deps --require-hashes --find-links" in install
    assert install.endswith("touch /opt/simple-tftpd/releases/0.2.0-new/.complete")
    uploaded = {remote: data for remote, data in host.uploads}
    assert release.archive.read_bytes() in uploaded.values()
    assert hashlib.sha256(host.uploads[1][1]).hexdigest() == CANARY_SHA256


def test_unchanged_healthy_node_is_not_restarted(site: Site, release: Release) -> None:
    node = site.node("tftp-1")
    files = render_host(site, node)
    config_sha = hashlib.sha256(files["config"].content.encode()).hexdigest()
    unit_sha = hashlib.sha256(files["unit"].content.encode()).hexdigest()
    answer = (
        f"current={NEW}\nconfig={config_sha}\nunit={unit_sha}\nactive=active\n"
        f"enabled=enabled\nhistory={NEW}\nreleases={NEW}\n"
    )
    host = node_host("tftp-1", ("echo current=", ok(answer)), ("probe.py gate", GATE_OK))
    log = Log()
    assert roll_node(host, site, node, release, files, log) == "unchanged"
    assert not host.ran("systemctl stop")


def test_a_non_root_login_runs_every_step_through_sudo(site: Site, release: Release) -> None:
    node = site.node("tftp-1")
    host = node_host(
        "tftp-1",
        ("echo current=", ok(state())),
        ("probe.py gate", GATE_OK),
        user="deploy",
    )
    log = Log()
    roll_node(host, site, node, release, render_host(site, node), log)
    # As the login user: only the private staging dir of a file others may not read (the
    # config holds tokens), which sftp then uploads into.
    as_login = [str(call.args[0]) for call in cast(Mock, host.run).call_args_list]
    assert as_login and all(
        re.fullmatch(r"mkdir -m 0700 /tmp/simple-tftpd-\w+", c) for c in as_login
    )
    assert all(command.startswith("sh -c ") for command in host.commands if command not in as_login)
    (config_upload,) = [remote for remote, data in host.uploads if b'"node_id"' in data]
    assert config_upload.endswith("/data") and config_upload.removesuffix("/data") in as_login[0]


def test_drain_waits_for_running_transfers(site: Site, release: Release) -> None:
    node = site.node("tftp-1")
    sessions = [ok(f'{{"ok": true, "active_sessions": {n}}}') for n in (2, 1, 0)]
    host = node_host(
        "tftp-1",
        ("echo current=", ok(state())),
        ("probe.py sessions", sessions),
        ("probe.py gate", GATE_OK),
    )
    log = Log()
    roll_node(host, site, node, release, render_host(site, node), log)
    assert sum("probe.py sessions" in command for command in host.commands) == 3


def test_rollback_task_walks_back_the_history(site: Site) -> None:
    answer = state(current=NEW, history=f"{OLD} {NEW}")
    hosts = {
        name: FakeHost(name, [("echo current=", ok(answer)), ("probe.py gate", GATE_OK)])
        for name in ("tftp-1", "tftp-2", "tftp-3")
    }
    log = Log()
    assert rollback_site(site, hosts, log) == {name: OLD for name in hosts}
    for host in hosts.values():
        assert host.ran(f"ln -sfn releases/{OLD}")
        assert host.uploads[-1][1] == f"{OLD}\n".encode()


def test_rollback_without_an_earlier_release_says_so(site: Site) -> None:
    host = FakeHost("tftp-1", [("echo current=", ok(state(current=NEW, history=NEW)))])
    log = Log()
    with pytest.raises(DeployError, match="no earlier release installed to roll back to"):
        rollback_site(site, {"tftp-1": host}, log, only=["tftp-1"])
    assert not host.ran("systemctl stop")


def test_nginx_config_is_checked_before_it_replaces_the_old_one(site: Site) -> None:
    node = site.node("lb-1")
    nginx = render_host(site, node)["nginx"]
    host = FakeHost("lb-1", [("nginx -t", fail(stderr="unknown directive"))])
    log = Log()
    with pytest.raises(RemoteError, match="unknown directive"):
        deploy_lb(host, node, nginx, log)
    assert not host.ran("reload-or-restart nginx")


def test_unchanged_nginx_is_not_reloaded(site: Site) -> None:
    node = site.node("lb-1")
    nginx = render_host(site, node)["nginx"]
    digest = hashlib.sha256(nginx.content.encode()).hexdigest()
    host = FakeHost("lb-1", [("sha256sum", ok(f"config={digest}\nactive=active\n"))])
    log = Log()
    deploy_lb(host, node, nginx, log)
    assert host.uploads == []
    assert not host.ran("reload")


# --- TLS ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secure:
    site: Site
    pki: Path
    files: dict[str, list[TlsFile]]


@pytest.fixture
def secure(tmp_path: Path) -> Secure:
    site = tls_site(tmp_path)
    pki = tmp_path / "pki"
    certs.issue_site(site, pki)
    return Secure(site, pki, certs.site_files(site, pki))


def unchanged_state(files: dict[str, RenderedFile]) -> str:
    config_sha = hashlib.sha256(files["config"].content.encode()).hexdigest()
    unit_sha = hashlib.sha256(files["unit"].content.encode()).hexdigest()
    return (
        f"current={NEW}\nconfig={config_sha}\nunit={unit_sha}\nactive=active\n"
        f"enabled=enabled\nhistory={NEW}\nreleases={NEW}\n"
    )


def test_tls_files_are_in_place_before_the_daemon_starts(secure: Secure, release: Release) -> None:
    site = secure.site
    node = site.node("tftp-1")
    host = node_host("tftp-1", ("echo current=", ok(state())), ("probe.py gate", GATE_OK))
    files = render_host(site, node)
    assert roll_node(host, site, node, release, files, Log(), secure.files["tftp-1"]) == "upgraded"
    tls = "/etc/simple-tftpd/tls"
    key = host.index(
        rf"install -D -m 0600 -o simple-tftpd -g simple-tftpd \S+ {tls}/\.node\.key\.new"
    )
    cert = host.index(rf"install -D -m 0644 -o root -g root \S+ {tls}/\.node\.pem\.new")
    ca = host.index(rf"install -D -m 0644 -o root -g root \S+ {tls}/\.ca\.pem\.new")
    crl = host.index(rf"install -D -m 0644 -o root -g root \S+ {tls}/\.crl\.pem\.new")
    start = host.index("systemctl start simple-tftpd")
    # Keys first (a reader that sees the new certificate finds its key), all before the start.
    assert -1 < key < cert < start and -1 < ca < start and -1 < crl < start, host.commands
    assert host.ran(rf"mv -f {tls}/\.node\.key\.new {tls}/node\.key")
    # The key went through a private (0700) staging dir, never a world-readable file.
    key_bytes = (secure.pki / "nodes" / "tftp-1.key").read_bytes()
    (staged,) = [remote for remote, data in host.uploads if data == key_bytes]
    assert staged.endswith("/data") and host.ran(f"mkdir -m 0700 {staged.removesuffix('/data')}")
    # etcd's copies are deploy_etcd's business, not the daemon's.
    assert not host.ran("simple-tftpd-etcd/tls/")
    # Gate and drain probe the plain listener: no client certificate needed.
    assert host.ran(r"probe.py gate --unit simple-tftpd --api http://127\.0\.0\.1:9180 --tftp")
    assert host.ran(r"probe.py sessions --metrics --api http://127\.0\.0\.1:9180$")


def test_renewed_certificates_are_reloaded_without_a_restart(
    secure: Secure, release: Release
) -> None:
    site = secure.site
    node = site.node("tftp-2")
    files = render_host(site, node)
    host = node_host(
        "tftp-2", ("echo current=", ok(unchanged_state(files))), ("probe.py gate", GATE_OK)
    )
    log = Log()
    assert roll_node(host, site, node, release, files, log, secure.files["tftp-2"]) == "reloaded"
    assert host.index("systemctl reload simple-tftpd") > host.index(r"\.node\.pem\.new")
    assert host.index("probe.py gate") > host.index("systemctl reload simple-tftpd")
    assert not host.ran("systemctl stop") and not host.ran("handoff.py on")
    assert "tftp-2: installed 4 daemon TLS files" in log.lines


def test_tls_files_already_in_place_are_left_alone(secure: Secure, release: Release) -> None:
    site = secure.site
    node = site.node("tftp-2")
    files = render_host(site, node)
    present = "".join(
        f"f{index}={hashlib.sha256(f.content).hexdigest()}:{f.mode:o}:{f.owner}:{f.group}\n"
        for index, f in enumerate(secure.files["tftp-2"])
    )
    host = node_host(
        "tftp-2",
        ("echo current=", ok(unchanged_state(files))),
        ("stat -c %a:%U:%G", ok(present)),
        ("probe.py gate", GATE_OK),
    )
    assert roll_node(host, site, node, release, files, Log(), secure.files["tftp-2"]) == "unchanged"
    assert host.uploads == []
    assert not host.ran("systemctl reload")


def test_a_key_with_the_wrong_owner_is_rewritten(secure: Secure, release: Release) -> None:
    site = secure.site
    node = site.node("tftp-2")
    files = render_host(site, node)
    wrong = "".join(
        f"f{index}={hashlib.sha256(f.content).hexdigest()}:{f.mode:o}:"
        f"{'root' if f.is_key else f.owner}:{f.group}\n"
        for index, f in enumerate(secure.files["tftp-2"])
    )
    host = node_host(
        "tftp-2",
        ("echo current=", ok(unchanged_state(files))),
        ("stat -c %a:%U:%G", ok(wrong)),
        ("probe.py gate", GATE_OK),
    )
    assert roll_node(host, site, node, release, files, Log(), secure.files["tftp-2"]) == "reloaded"
    assert [data for _, data in host.uploads] == [
        (secure.pki / "nodes" / "tftp-2.key").read_bytes()
    ]


def test_the_state_dir_is_the_daemons_before_tls_files_go_into_it(
    tmp_path: Path, release: Release
) -> None:
    """Relative TLS paths live in the state dir. systemd's StateDirectory= chowns the whole
    tree to the daemon's user at start when the top directory is not the daemon's (as a dir
    that `install -D` made for the TLS files is not), which gave the root-owned certificate,
    CA and CRL to the daemon on real hosts. The deploy makes the dir the daemon's first."""
    relative = "\n".join(
        [
            "      ca_file: tls/ca.pem",
            "      cert_file: tls/node.pem",
            "      key_file: tls/node.key",
            "      crl_file: tls/crl.pem",
        ]
    )
    site = lab_site(
        tmp_path,
        re.sub(r"(      ca_file.*\n)(.*\n){3}", relative + "\n", TLS_SITE_YAML, count=1),
    )
    pki = tmp_path / "pki"
    certs.issue_site(site, pki)
    tls = certs.site_files(site, pki)
    assert {f.path for f in tls["tftp-3"]} == {
        f"/var/lib/simple-tftpd/tls/{name}"
        for name in ("ca.pem", "node.pem", "node.key", "crl.pem")
    }
    host = FakeHost(
        "tftp-3",
        [
            ("getent group", ok("installed=no\n")),
            ("echo current=", ok(state(current="", active="inactive", history=""))),
            ("probe.py gate", GATE_OK),
        ],
    )
    files = {n.name: render_host(site, n) for n in site.nodes}
    deploy_site(site, {"tftp-3": host}, release, files, Log(), only=["tftp-3"], tls=tls)
    state_dir = host.index(
        r"install -d -m 0750 -o simple-tftpd -g simple-tftpd /var/lib/simple-tftpd( |&|$)"
    )
    first_file = host.index(r"install -D .* /var/lib/simple-tftpd/tls/")
    start = host.index("systemctl start simple-tftpd")
    assert -1 < state_dir < first_file < start, host.commands
    # The public files stay root's; the key is the daemon's.
    assert host.ran(r"install -D -m 0644 -o root -g root \S+ /var/lib/simple-tftpd/tls/\.ca\.pem")
    assert host.ran(
        r"install -D -m 0600 -o simple-tftpd -g simple-tftpd \S+ /var/lib/simple-tftpd/tls/\."
        r"node\.key"
    )


def test_etcd_members_get_their_own_key_and_tls_env(secure: Secure) -> None:
    site = secure.site
    files = {node.name: render_host(site, node) for node in site.nodes}
    hosts = {name: FakeHost(name) for name in ("tftp-1", "tftp-2")}
    log = Log()
    deploy_etcd(hosts, site, files, log, secure.files)
    host = hosts["tftp-1"]
    base = "/etc/simple-tftpd-etcd/tls"
    key = host.index(rf"install -D -m 0600 -o etcd -g etcd \S+ {base}/\.member\.key\.new")
    cert = host.index(rf"install -D -m 0644 -o root -g root \S+ {base}/\.member\.pem\.new")
    env = host.index(
        r"install -D -m 0640 -o root -g etcd \S+ /etc/simple-tftpd/\.etcd-tls\.env\.new"
    )
    start = host.index("systemctl restart --no-block simple-tftpd-etcd")
    assert -1 < key < cert < start and -1 < env < start, host.commands
    # The daemon's own copies are roll_node's business.
    assert not host.ran(r"\.node\.key\.new")
    # Health over https, with the member's certificate (etcd requires client certificates).
    assert host.ran(
        rf"https://10\.0\.0\.11:2379/health {base}/ca\.pem {base}/member\.pem {base}/member\.key"
    )
    assert log.lines[-1] == "etcd: 2 members healthy"


def test_etcd_on_tls_without_its_files_stops_before_any_change(secure: Secure) -> None:
    site = secure.site
    files = {node.name: render_host(site, node) for node in site.nodes}
    hosts = {name: FakeHost(name) for name in ("tftp-1", "tftp-2")}
    with pytest.raises(DeployError, match="tftp-1: etcd runs TLS but its files are missing"):
        deploy_etcd(hosts, site, files, Log(), {})
    assert hosts["tftp-1"].uploads == []


CLUSTERED_SITE_YAML = """
site: lab
ssh: {user: root}
config:
  tftp: {root: /srv/tftp, single_port: true}
  api: {token: a-long-shared-admin-token}
  clustering: {enabled: true}
hosts:
  - {name: tftp-1, address: 10.0.0.11, roles: [tftp, etcd]}
  - {name: tftp-2, address: 10.0.0.12, roles: [tftp, etcd]}
  - {name: tftp-3, address: 10.0.0.13, roles: [tftp, etcd]}
"""


def _etcd_facts(rendered: list[RenderedFile]) -> str:
    """What `_etcd_state` reads from a host that runs etcd with exactly these files."""
    return "active=active\n" + "".join(
        f"f{index}={hashlib.sha256(f.content.encode()).hexdigest()}:{f.mode:o}:{f.owner}:{f.group}\n"
        for index, f in enumerate(rendered)
    )


def test_running_etcd_members_with_unchanged_files_are_left_alone(tmp_path: Path) -> None:
    site = lab_site(tmp_path, CLUSTERED_SITE_YAML)
    files = {node.name: render_host(site, node) for node in site.nodes}
    hosts = {
        name: FakeHost(
            name,
            [
                (
                    "echo active=",
                    ok(_etcd_facts([files[name]["etcd_env"], files[name]["etcd_unit"]])),
                )
            ],
        )
        for name in ("tftp-1", "tftp-2", "tftp-3")
    }
    log = Log()
    deploy_etcd(hosts, site, files, log)
    for host in hosts.values():
        assert not host.ran("systemctl restart") and host.uploads == [], host.commands
        assert host.ran("/health")  # still checked
    assert log.lines == ["etcd: 3 members healthy"]


def test_a_running_site_restarts_changed_members_one_at_a_time(tmp_path: Path) -> None:
    """Each member is healthy again before the next restarts: the site never loses quorum."""
    site = lab_site(tmp_path, CLUSTERED_SITE_YAML)
    files = {node.name: render_host(site, node) for node in site.nodes}
    hosts = {name: FakeHost(name, [("echo active=", ok("active=active\n"))]) for name in files}
    log = Log()
    deploy_etcd(hosts, site, files, log)
    for host in hosts.values():
        restart = host.index("systemctl restart --no-block simple-tftpd-etcd")
        assert -1 < restart < host.index("/health"), host.commands
        assert len(host.uploads) == 2  # the env file and the unit
    assert log.lines == [
        "tftp-1: etcd member restarted, healthy",
        "tftp-2: etcd member restarted, healthy",
        "tftp-3: etcd member restarted, healthy",
        "etcd: 3 members healthy",
    ]


def test_a_new_site_starts_every_member_before_waiting(tmp_path: Path) -> None:
    """No member runs yet: waiting for the first one's health would wait for a quorum that
    only the others can complete."""
    site = lab_site(tmp_path, CLUSTERED_SITE_YAML)
    files = {node.name: render_host(site, node) for node in site.nodes}
    hosts = {name: FakeHost(name) for name in files}
    log = Log()
    deploy_etcd(hosts, site, files, log)
    for host in hosts.values():
        assert host.ran("systemctl restart --no-block simple-tftpd-etcd")
    assert log.lines == ["etcd: 3 members healthy"]
