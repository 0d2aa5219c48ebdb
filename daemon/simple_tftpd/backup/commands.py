"""`simple-tftpd backup ...`: status, now, list, verify, restore.

With `--location URL`, list, verify and `restore --to DIR` read the location directly (no
daemon, no etcd: what disaster recovery needs), with the key from `--key-file`, `--key-env`,
the backup section of `--config`, or $SIMPLE_TFTPD_BACKUP_KEY. Without it they ask a node's
API, like `now`, `status` and `restore --into-cluster`, which act on a running cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from simple_tftpd.backup.crypto import DEFAULT_KEY_ENV, BackupError, load_key
from simple_tftpd.backup.recovery import describe, parse_time, restore_to_dir, verify
from simple_tftpd.backup.repository import Repository
from simple_tftpd.cluster.commands import ApiTarget, with_target
from simple_tftpd.config import ConfigError, load_config

POLL_INTERVAL = 0.5


def _print(payload: Any, ok: bool = True) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True))
    if not ok:
        sys.exit(1)


def _direct(work: Awaitable[dict[str, Any]], ok: Callable[[dict[str, Any]], bool]) -> NoReturn:
    """Run work that reads a location, print its result and leave with os._exit: obstore's
    runtime threads may still be handing back the last call while the interpreter tears down,
    which aborts the process (exit 134 after correct output) in a few percent of short runs."""

    async def main() -> dict[str, Any]:
        return await work

    try:
        result = asyncio.run(main())
    except (BackupError, OSError) as exc:
        click.echo(f"Error: {exc}", err=True)
        code = 1
    else:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        code = 0 if ok(result) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _key(key_file: Path | None, key_env: str | None, config_path: Path | None) -> bytes | None:
    """The key for direct access, or None (fine for a location without encryption)."""
    try:
        if key_file is not None or key_env is not None:
            return load_key(key_file, key_env)
        if config_path is not None:
            backup = load_config(config_path).backup
            if backup.key_file is not None or backup.key_env is not None:
                return load_key(backup.key_file, backup.key_env)
        if os.environ.get(DEFAULT_KEY_ENV):
            return load_key(None, DEFAULT_KEY_ENV)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from None
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    return None


location_options = [
    click.option("--location", help="Read this location directly (no daemon), e.g. s3://b/p."),
    click.option(
        "--key-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Backup key file, for --location.",
    ),
    click.option(
        "--key-env", help=f"Environment variable holding the key (default ${DEFAULT_KEY_ENV})."
    ),
]


def with_location(func: Any) -> Any:
    for option in reversed(location_options):
        func = option(func)
    return func


def _leader_target(target: ApiTarget, payload: Any) -> ApiTarget | None:
    api = payload.get("leader_api") if isinstance(payload, dict) else None
    return ApiTarget(api, target.token, None, tls=target.tls) if api else None


def _operate(
    target: ApiTarget, path: str, body: dict[str, Any], wait: bool, timeout: float
) -> None:
    """Start an operation on the site leader (following a redirect to it) and poll it."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    status, payload = target.request("POST", path, data, headers)
    leader = _leader_target(target, payload) if status == 409 else None
    if leader is not None:
        target = leader
        status, payload = target.request("POST", path, data, headers)
    if status != 202:
        _print(payload, ok=False)
    operation = payload["operation"]
    deadline = time.monotonic() + timeout
    while wait and operation["finished"] is None:
        if time.monotonic() > deadline:
            _print({"error": f"still running after {timeout:g}s", "operation": operation}, False)
        time.sleep(POLL_INTERVAL)
        status, payload = target.request("GET", f"/api/v1/backup/operations/{operation['id']}")
        if status != 200:
            _print(payload, ok=False)
        operation = payload["operation"]
    _print(operation, ok=operation["outcome"] != "failed")


wait_options = [
    click.option("--wait/--no-wait", default=True, help="Wait for the operation to finish."),
    click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait."),
]


def with_wait(func: Any) -> Any:
    for option in reversed(wait_options):
        func = option(func)
    return func


def register(main: click.Group) -> None:
    @main.group("backup")
    def backup() -> None:
        """Backups to object storage: status, now, list, verify, restore."""

    @backup.command("status")
    @with_target
    def backup_status(api: str | None, token: str | None, config_path: Path | None) -> None:
        """Per location: last backup (time, size, duration, outcome) and journal position."""
        target = ApiTarget(api, token, config_path)
        status, payload = target.request("GET", "/api/v1/backup/status")
        leader = _leader_target(target, payload)
        if status == 200 and not payload.get("is_leader") and leader is not None:
            status, payload = leader.request("GET", "/api/v1/backup/status")
        _print(payload, ok=status == 200)

    @backup.command("now")
    @with_wait
    @with_target
    def backup_now(
        wait: bool, timeout: float, api: str | None, token: str | None, config_path: Path | None
    ) -> None:
        """Take a snapshot to every location now (on the site leader), then prune."""
        _operate(ApiTarget(api, token, config_path), "/api/v1/backup/now", {}, wait, timeout)

    @backup.command("list")
    @with_location
    @with_target
    def backup_list(
        location: str | None,
        key_file: Path | None,
        key_env: str | None,
        api: str | None,
        token: str | None,
        config_path: Path | None,
    ) -> None:
        """Snapshots and journal coverage: what can be restored, from when to when."""
        if location is not None:
            key = _key(key_file, key_env, config_path)

            async def listing() -> dict[str, Any]:
                return await describe(await Repository.open(location, key))

            _direct(listing(), lambda _: True)
        status, payload = ApiTarget(api, token, config_path).request("GET", "/api/v1/backup/list")
        _print(payload, ok=status == 200)

    @backup.command("verify")
    @click.option("--quick", is_flag=True, help="Check blobs by presence and size only.")
    @with_location
    @with_wait
    @with_target
    def backup_verify(
        quick: bool,
        location: str | None,
        key_file: Path | None,
        key_env: str | None,
        wait: bool,
        timeout: float,
        api: str | None,
        token: str | None,
        config_path: Path | None,
    ) -> None:
        """Check every object is present and authentic (digests and tags); exit 1 if not."""
        if location is not None:
            key = _key(key_file, key_env, config_path)

            async def check() -> dict[str, Any]:
                return (await verify(await Repository.open(location, key), not quick)).public()

            _direct(check(), lambda report: bool(report["ok"]))
        target = ApiTarget(api, token, config_path)
        _operate(target, "/api/v1/backup/verify", {"quick": quick}, wait, timeout)

    @backup.command("restore")
    @click.option("--at", "at_text", required=True, help="`latest`, ISO 8601 time or Unix time.")
    @click.option(
        "--to",
        "to_dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Write the files into this new or empty directory (needs --location).",
    )
    @click.option(
        "--into-cluster", is_flag=True, help="Make the running cluster's content what it was."
    )
    @with_location
    @with_wait
    @with_target
    def backup_restore(
        at_text: str,
        to_dir: Path | None,
        into_cluster: bool,
        location: str | None,
        key_file: Path | None,
        key_env: str | None,
        wait: bool,
        timeout: float,
        api: str | None,
        token: str | None,
        config_path: Path | None,
    ) -> None:
        """Restore the content as it was at a point in time."""
        if (to_dir is None) == (not into_cluster):
            raise click.UsageError("give either --to DIR or --into-cluster")
        try:
            at = parse_time(at_text)
        except BackupError as exc:
            raise click.BadParameter(str(exc), param_hint="--at") from None
        if to_dir is not None:
            if location is None:
                raise click.UsageError("--to DIR reads the location directly: give --location")
            key = _key(key_file, key_env, config_path)
            target_dir = to_dir

            async def restore() -> dict[str, Any]:
                repo = await Repository.open(location, key)
                point = await restore_to_dir(repo, at, target_dir)
                return {"restored_to": str(target_dir), **point.summary()}

            _direct(restore(), lambda _: True)
        body = {"at": at_text, "location": location}
        _operate(ApiTarget(api, token, config_path), "/api/v1/backup/restore", body, wait, timeout)
