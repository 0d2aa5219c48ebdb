"""Fabric tasks for rolling simple-tftpd out to a site. Thin: the work is in `deploy/`.

Every task reads the site's inventory (`--inventory FILE`, or $SIMPLE_TFTPD_INVENTORY, or
./inventory.yaml) and validates all of it before any host is touched. See docs/deploy.md.

    fab render   --inventory site.yaml [--out build/rendered]
    fab deploy   --inventory site.yaml [--wheel FILE] [--only host1,host2]
    fab deploy   --inventory site.json [--hosts 10.0.0.5,...]   (`pulumi stack output --json`)
    fab rollback --inventory site.yaml [--only host1]
    fab verify   --inventory site.yaml [--version X] [--connection ssh]
    fab cluster-init | cluster-join --host NEW | cluster-status | node-health | site-sync-init
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from fabric import Connection
from fabric import task as fabric_task
from invoke.context import Context
from invoke.exceptions import Exit

from deploy import PROJECT_ROOT, DeployError
from deploy import certs as site_certs
from deploy import cluster as cluster_commands
from deploy.inventory import Node, Site, load_inventory
from deploy.release import Release, build_release
from deploy.remote import close_all, connect, sh
from deploy.render import render_host, render_site
from deploy.rollout import deploy_site, rollback_site

WORK_DIR = PROJECT_ROOT / "build" / "deploy"
VERIFY_TIMEOUT = 1800

F = TypeVar("F", bound=Callable[..., Any])


def task(**options: Any) -> Callable[[F], F]:
    """fabric.task, typed (Fabric ships no type hints, which would untype every task), and
    without automatic short flags: `-h` would shadow help and `-i` look like fab's identity."""
    return cast(Callable[[F], F], fabric_task(auto_shortflags=False, **options))


INVENTORY_HELP = "inventory file (YAML, or `pulumi stack output --json` JSON)"


def _operator_errors(func: F) -> F:
    """A DeployError ends the task with its message and exit code 1, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DeployError as exc:
            raise Exit(f"error: {exc}", code=1) from None

    return wrapper  # type: ignore[return-value]


def _site(inventory: str | None, hosts: str | None = None) -> Site:
    path = inventory or os.environ.get("SIMPLE_TFTPD_INVENTORY") or "inventory.yaml"
    return load_inventory(Path(path), hosts=_names(hosts))


def _names(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def _connections(c: Context, nodes: list[Node]) -> dict[str, Connection]:
    return {node.name: connect(node, c.config) for node in nodes}


def _log(message: str) -> None:
    print(message, flush=True)


def _warn_if_pure(release: Release) -> None:
    if not release.compiled:
        _log(
            f"warning: {release.wheel} has no compiled per-block path (simple_tftpd._fastpath:"
            " no C compiler where it was built?); the nodes will serve on the pure-Python path."
            " Install gcc and rebuild, or pass a wheel that has it with --wheel"
        )


@task(help={"inventory": INVENTORY_HELP, "out": "output directory"})
@_operator_errors
def render(c: Context, inventory: str | None = None, out: str = "build/rendered") -> None:
    """Render every host's files and the site's Prometheus and Kubernetes files locally."""
    site = _site(inventory)
    for path in render_site(site, Path(out)):
        print(path)


@task(
    help={
        "inventory": INVENTORY_HELP,
        "wheel": "deploy this simple_tftpd wheel instead of building one from the tree",
        "only": "comma-separated host names (default: every host)",
        "hosts": "with a stack-output inventory: the nodes' addresses, comma-separated, "
        "instead of running its node_list_command",
        "pki": "with TLS: the site's PKI directory (default: $SIMPLE_TFTPD_PKI/<site> or "
        "~/.simple-tftpd/pki/<site>)",
    }
)
@_operator_errors
def deploy(
    c: Context,
    inventory: str | None = None,
    wheel: str | None = None,
    only: str | None = None,
    hosts: str | None = None,
    pki: str | None = None,
) -> None:
    """Build a release and roll it out host by host, health-gated, rolling back on failure."""
    site = _site(inventory, hosts)
    nodes = site.select(_names(only))
    files = {node.name: render_host(site, node) for node in site.nodes}
    # With TLS: each host's certificate, key, CA and CRL from `fab certs` (checked now, before
    # any host is touched); nothing for a site without TLS.
    tls = site_certs.site_files(site, Path(pki) if pki else None)
    release = build_release(WORK_DIR, site.settings.release, wheel=Path(wheel) if wheel else None)
    _log(f"release {release.release_id} ({release.archive.stat().st_size >> 20} MiB)")
    _warn_if_pure(release)
    connections = _connections(c, site.select(None))
    try:
        outcome = deploy_site(site, connections, release, files, _log, only=_names(only), tls=tls)
    finally:
        close_all(connections.values())
    _log(f"deployed {release.release_id} to {len(nodes)} hosts: {outcome}")


@task(help={"inventory": INVENTORY_HELP, "only": "comma-separated host names"})
@_operator_errors
def rollback(c: Context, inventory: str | None = None, only: str | None = None) -> None:
    """Return every node to the release it ran before the current one, host by host."""
    site = _site(inventory)
    connections = _connections(c, site.select(_names(only)))
    try:
        rollback_site(site, connections, _log, only=_names(only))
    finally:
        close_all(connections.values())


@task(
    help={
        "inventory": INVENTORY_HELP,
        "version": "expected daemon version (default: the version of this tree)",
        "connection": "testinfra backend: paramiko (default) or ssh",
    }
)
@_operator_errors
def verify(
    c: Context,
    inventory: str | None = None,
    version: str | None = None,
    connection: str = "paramiko",
) -> None:
    """Run the testinfra suite (tests/infra) against every host of the inventory."""
    site = _site(inventory)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        str(PROJECT_ROOT / "tests" / "infra"),
        "--inventory",
        str(site.source),
        f"--connection={connection}",
        "-p",
        "no:cacheprovider",
        "-q",
    ]
    if version:
        argv += ["--expected-version", version]
    try:
        done = subprocess.run(argv, cwd=PROJECT_ROOT, timeout=VERIFY_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise DeployError(f"verify: no result after {VERIFY_TIMEOUT}s") from None
    if done.returncode != 0:
        raise Exit(f"verify: the testinfra suite failed (exit {done.returncode})", code=1)


def _run_cluster(c: Context, site: Site, commands: list[cluster_commands.ClusterCommand]) -> None:
    connections = _connections(c, [command.node for command in commands])
    failed = []
    try:
        for command in commands:
            result = sh(
                connections[command.node.name], command.command, command.command, check=False
            )
            prefix = f"[{command.node.name}] " if len(commands) > 1 else ""
            for line in (result.stdout + result.stderr).splitlines():
                print(prefix + line)
            if result.failed:
                failed.append(f"{command.node.name} (exit {result.exited})")
    finally:
        close_all(connections.values())
    if failed:
        raise Exit(f"failed on: {', '.join(failed)}", code=1)


@task(help={"inventory": INVENTORY_HELP, "host": "node to run it on (default: the first)"})
@_operator_errors
def cluster_init(c: Context, inventory: str | None = None, host: str | None = None) -> None:
    """`simple-tftpd cluster-init` with the site's cluster id and members."""
    site = _site(inventory)
    _run_cluster(c, site, [cluster_commands.cluster_init(site, host)])


@task(
    help={
        "inventory": INVENTORY_HELP,
        "host": "the new node (an inventory host; the rest of the site already runs)",
        "leader": "API host:port of the member to ask (default: the first member that answers)",
        "wheel": "install this simple_tftpd wheel instead of building one from the tree",
        "pki": "the site's PKI directory, with TLS (as for deploy)",
    }
)
@_operator_errors
def cluster_join(
    c: Context,
    host: str,
    inventory: str | None = None,
    leader: str | None = None,
    wheel: str | None = None,
    pki: str | None = None,
) -> None:
    """Join a new host: etcd member add and start (role etcd), then install, start and gate
    its daemon, and wait until the cluster lists it."""
    site = _site(inventory)
    new, others = cluster_commands.check_join(site, host)
    files = render_host(site, new)
    tls = site_certs.site_files(site, Path(pki) if pki else None).get(new.name, [])
    release = build_release(WORK_DIR, site.settings.release, wheel=Path(wheel) if wheel else None)
    _log(f"release {release.release_id}")
    _warn_if_pure(release)
    # Fabric connects on first use: only the hosts the join talks to are reached.
    involved = {node.name for node in [new, *others, *site.etcd_nodes]}
    connections = _connections(c, [node for node in site.nodes if node.name in involved])
    try:
        cluster_commands.join_node(
            connections, site, host, release, files, _log, leader=leader, tls=tls
        )
    finally:
        close_all(connections.values())


@task(help={"inventory": INVENTORY_HELP, "host": "node to ask (default: the first)"})
@_operator_errors
def cluster_status(c: Context, inventory: str | None = None, host: str | None = None) -> None:
    """`simple-tftpd cluster-status` on one node."""
    site = _site(inventory)
    _run_cluster(c, site, [cluster_commands.cluster_status(site, host)])


@task(help={"inventory": INVENTORY_HELP, "host": "one node (default: every node)"})
@_operator_errors
def node_health(c: Context, inventory: str | None = None, host: str | None = None) -> None:
    """`simple-tftpd node-health` on every node."""
    site = _site(inventory)
    _run_cluster(c, site, cluster_commands.node_health(site, host))


@task(help={"inventory": INVENTORY_HELP, "host": "node to run it on (default: the first)"})
@_operator_errors
def site_sync_init(c: Context, inventory: str | None = None, host: str | None = None) -> None:
    """`simple-tftpd site-sync-init` with the site id and its peer sites."""
    site = _site(inventory)
    _run_cluster(c, site, [cluster_commands.site_sync_init(site, host)])


@task(
    help={
        "inventory": INVENTORY_HELP,
        "pki": "the site's PKI directory (default: $SIMPLE_TFTPD_PKI/<site> or "
        "~/.simple-tftpd/pki/<site>)",
        "force": "re-issue every host certificate, due or not",
        "renew_within": "renew host certificates that expire within this many days (default 30)",
        "client": "also issue a client certificate with this name (map it in security.access)",
        "revoke": "revoke this certificate file instead (add it to the CRL)",
    }
)
@_operator_errors
def certs(
    c: Context,
    inventory: str | None = None,
    pki: str | None = None,
    force: bool = False,
    renew_within: int = site_certs.RENEW_WITHIN_DAYS,
    client: str | None = None,
    revoke: str | None = None,
) -> None:
    """Create the site CA if needed, issue or renew host certificates, re-sign the CRL."""
    site = _site(inventory)
    for line in site_certs.certs_task(
        site,
        Path(pki) if pki else None,
        force=force,
        renew_within_days=int(renew_within),
        client=client,
        revoke_path=revoke,
    ):
        _log(line)
