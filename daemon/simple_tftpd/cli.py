"""Command line: `simple-tftpd` (alias `simple-tftpd-datacenter`)."""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import click

from simple_tftpd import __version__
from simple_tftpd.config import Config, ConfigError, apply_overrides, load_config
from simple_tftpd.logs import setup_logging
from simple_tftpd.tls import TlsError, TlsState


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(2)


# Commands whose modules pull in grpc (etcd), obstore and cryptography: imported only when one
# of them runs, so `serve` does not carry those libraries' pages in every process.
LAZY_COMMANDS = {
    "simple_tftpd.cluster.commands:register": (
        "cluster-init",
        "cluster-join",
        "cluster-status",
        "node-health",
        "cluster-logs",
        "files",
    ),
    "simple_tftpd.cluster.commands:register_site_sync": (
        "site-sync-init",
        "site-sync-status",
        "site-sync-now",
        "site-sync-logs",
    ),
    "simple_tftpd.backup.commands:register": ("backup",),
}


class LazyGroup(click.Group):
    """A group that registers a module's commands the first time one of them is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = {name for names in LAZY_COMMANDS.values() for name in names}
        return sorted(set(super().list_commands(ctx)) | lazy)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            for target, names in LAZY_COMMANDS.items():
                if cmd_name in names:
                    module, _, function = target.partition(":")
                    getattr(importlib.import_module(module), function)(self)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="simple-tftpd")
def main() -> None:
    """simple-tftpd: a hardened TFTP daemon for datacenter network boot."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="JSON config file (default: the embedded single-node default).",
)
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), help="Content root.")
@click.option("--bind", help="TFTP listen address (IPv4 or IPv6; '::' is dual-stack).")
@click.option("--port", type=int, help="TFTP listen port.")
@click.option("--api-bind", help="Management API listen address.")
@click.option("--api-port", type=int, help="Management API port.")
@click.option(
    "--single-port/--no-single-port",
    default=None,
    help="Answer every transfer from the listening port (for L4 load balancers).",
)
def serve(
    config_path: Path | None,
    root: Path | None,
    bind: str | None,
    port: int | None,
    api_bind: str | None,
    api_port: int | None,
    single_port: bool | None,
) -> None:
    """Run the daemon until SIGTERM (drains) or SIGINT; SIGHUP reloads the config file."""
    overrides: dict[str, object] = {
        "root": root,
        "bind": bind,
        "port": port,
        "api_bind": api_bind,
        "api_port": api_port,
        "single_port": single_port,
    }
    try:
        config = apply_overrides(load_config(config_path), **overrides)
    except ConfigError as exc:
        _fail(f"invalid configuration:\n{exc}")
        return
    content_root = config.tftp.root
    if not content_root.is_dir():
        if config_path is None and root is None:
            # The embedded default serves ./tftpboot; make it so a first run just works.
            content_root.mkdir(parents=True, exist_ok=True)
        else:
            _fail(f"tftp.root: {content_root} is not a directory; create it or set --root")
    setup_logging(config)
    if config.api.enabled and config.security.tls.enabled:
        try:
            TlsState(config.security.tls)  # unusable files fail here, before any worker forks
        except TlsError as exc:
            _fail(f"cannot start: {exc}")
    try:
        sys.exit(_serve(config, config_path, overrides))
    except PermissionError as exc:
        _fail(
            f"cannot bind: {exc}. Ports below 1024 need root or CAP_NET_BIND_SERVICE; "
            "try --port 6969"
        )
    except OSError as exc:
        _fail(f"cannot start: {exc}")


def _serve(config: Config, config_path: Path | None, overrides: dict[str, object]) -> int:
    workers = _worker_count(config)
    if workers == 1:
        from simple_tftpd.daemon import Daemon, run_event_loop

        run_event_loop(Daemon(config, config_path, overrides).run())
        return 0
    # Multiprocess metrics must be switched on before prometheus_client is imported.
    with tempfile.TemporaryDirectory(prefix="simple-tftpd-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        from simple_tftpd.daemon import Supervisor, run_event_loop

        # Bind once here so a busy or privileged port fails loudly before workers start.
        _probe_bind(config)
        supervisor = Supervisor(config, config_path, overrides, workers)
        supervisor.start_workers()
        return run_event_loop(supervisor.run())


def _worker_count(config: Config) -> int:
    return config.performance.thread_pool.workers or os.cpu_count() or 1


def _probe_bind(config: Config) -> None:
    family = socket.AF_INET6 if ":" in config.tftp.bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((config.tftp.bind, config.tftp.port))


@main.command("check-config")
@click.argument("config_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when the file is valid.")
def check_config(config_file: Path, quiet: bool) -> None:
    """Validate CONFIG_FILE; each problem is printed with its key path. Exit 0 if valid."""
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        click.echo(f"{config_file}: invalid", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    if not quiet:
        click.echo(f"{config_file}: valid")
        click.echo(json.dumps(config.summary(), indent=2, default=str))


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)
