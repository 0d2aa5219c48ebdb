"""The testinfra suite that proves a deployed site works. Run it against any site:

    pytest tests/infra --inventory site.yaml              # hosts and expectations from it
    pytest tests/infra --hosts=ssh://root@10.0.0.5,...    # expectations from the defaults
    fab verify --inventory site.yaml                      # the same, as a Fabric task

Per node (tests parametrized by testinfra's `host`): package, unit, user, sockets, config file,
health, a TFTP fetch on the node. Per site (test_site.py, needs the inventory): cluster leader
and membership, the load balancer. Without --inventory or --hosts every test skips, so the
suite stays quiet in a plain `pytest` run of the repository.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from pathlib import Path

import pytest
import testinfra.host

from deploy.inventory import InventoryDocument, Node, Site, load_inventory
from deploy.render import HostPaths
from simple_tftpd.config import Config

SITE_KEY = pytest.StashKey[Site | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("simple-tftpd infra")
    group.addoption(
        "--inventory",
        default=os.environ.get("SIMPLE_TFTPD_INVENTORY"),
        help="site inventory (YAML or pulumi outputs JSON); default $SIMPLE_TFTPD_INVENTORY",
    )
    group.addoption(
        "--expected-version",
        default=None,
        help="daemon version every node must run (default: the version of this tree)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # getoption with a default: in a whole-repository run this conftest loads too late for
    # its options to exist.
    inventory = config.getoption("inventory", None)
    site = load_inventory(Path(inventory)) if inventory else None
    config.stash[SITE_KEY] = site
    if site is None or config.option.hosts:
        return
    nodes = site.tftp_nodes
    config.option.hosts = ",".join(f"{n.ssh.user}@{n.address}:{n.ssh.port}" for n in nodes)
    config.option.connection = config.option.connection or "paramiko"
    identities = {n.ssh.identity_file for n in nodes if n.ssh.identity_file}
    if len(identities) == 1 and not config.option.ssh_identity_file:
        config.option.ssh_identity_file = str(Path(identities.pop()).expanduser())
    known_hosts = {n.ssh.known_hosts for n in nodes if n.ssh.known_hosts}
    if len(known_hosts) == 1 and not config.option.ssh_config:
        # The ssh backend then checks host keys against the inventory's known_hosts.
        with tempfile.NamedTemporaryFile(
            "w", prefix="infra-ssh-", suffix=".conf", delete=False
        ) as handle:
            handle.write(
                "Host *\n"
                f"  UserKnownHostsFile {Path(known_hosts.pop()).expanduser()}\n"
                "  StrictHostKeyChecking yes\n"
                "  IdentitiesOnly yes\n"
            )
        config.option.ssh_config = handle.name
        config.add_cleanup(lambda: Path(handle.name).unlink(missing_ok=True))


@pytest.fixture(autouse=True)
def _needs_a_target(pytestconfig: pytest.Config) -> None:
    if not pytestconfig.option.hosts:
        pytest.skip("infra suite: pass --inventory FILE or --hosts (see tests/infra/conftest.py)")


@pytest.fixture(scope="session")
def site(pytestconfig: pytest.Config) -> Site | None:
    return pytestconfig.stash.get(SITE_KEY, None)


@pytest.fixture(scope="session")
def settings(site: Site | None) -> InventoryDocument:
    return site.settings if site else InventoryDocument(site="default")


@pytest.fixture(scope="session")
def paths(settings: InventoryDocument) -> HostPaths:
    return HostPaths(settings.install)


@pytest.fixture(scope="session")
def expected_version(pytestconfig: pytest.Config) -> str:
    version = pytestconfig.getoption("expected_version", None)
    return str(version or importlib.metadata.version("simple-tftpd"))


@pytest.fixture(scope="module")
def node(host: testinfra.host.Host, site: Site | None) -> Node | None:
    """The inventory's node for this host, if an inventory was given."""
    if site is None:
        return None
    address = host.backend.get_hostname()
    for candidate in site.tftp_nodes:
        if candidate.address == address or candidate.name == address:
            return candidate
    pytest.fail(f"{address} is not a tftp node of {site.source}")


@pytest.fixture(scope="module")
def node_config(node: Node | None) -> Config:
    return node.config if node else Config()


def site_host(pytestconfig: pytest.Config, node: Node) -> testinfra.host.Host:
    """A testinfra host for `node`, connected the way the per-node tests connect."""
    option = pytestconfig.option
    return testinfra.get_host(
        f"{node.ssh.user}@{node.address}:{node.ssh.port}",
        connection=option.connection,
        ssh_config=option.ssh_config,
        ssh_identity_file=option.ssh_identity_file,
        sudo=option.sudo,
    )
