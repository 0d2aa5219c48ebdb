"""Running commands and writing files on a host through a Fabric Connection.

Every remote step goes through `sh` (commands) or `write_file` (files), so the rollout reads
as a list of shell steps and unit tests can answer them with invoke's MockContext. Commands run
with `warn=True` and their exit codes are checked here: a failure becomes a RemoteError that
names the host, the step and the command's stderr.
"""

from __future__ import annotations

import io
import secrets
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from invoke.runners import Result

from deploy import DeployError
from deploy.inventory import Node


class Remote(Protocol):
    """What the rollout needs of a connection (a fabric.Connection has all of it)."""

    host: str
    user: str

    def run(self, command: str, **kwargs: Any) -> Result: ...

    def sudo(self, command: str, **kwargs: Any) -> Result: ...

    def put(self, local: Any, remote: str | None = None, preserve_mode: bool = True) -> Any: ...


class RemoteError(DeployError):
    def __init__(self, host: str, what: str, detail: str) -> None:
        super().__init__(f"{host}: {what} failed: {detail}".rstrip())
        self.host = host
        self.what = what
        self.detail = detail


def q(value: object) -> str:
    return shlex.quote(str(value))


def sh(
    c: Remote, command: str, what: str, *, check: bool = True, timeout: float | None = 300
) -> Result:
    """Run `command` as root (sudo unless the login user is root); bounded by `timeout`."""
    kwargs: dict[str, Any] = {"hide": True, "warn": True, "timeout": timeout, "in_stream": False}
    try:
        if c.user == "root":
            result = c.run(command, **kwargs)
        else:
            # invoke's sudo prefixes only the first word: run the whole line in one shell.
            result = c.sudo(f"sh -c {q(command)}", **kwargs)
    except CommandTimedOut:
        raise RemoteError(c.host, what, f"no result after {timeout}s") from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise RemoteError(c.host, what, f"{type(exc).__name__}: {exc}") from None
    if check and result.failed:
        detail = (result.stderr or result.stdout or "").strip()[-2000:]
        raise RemoteError(c.host, what, f"exit {result.exited}: {detail}")
    return result


def put(c: Remote, local: Path | bytes, what: str, *, private: bool = False) -> str:
    """Upload to a fresh path in /tmp as the login user (sftp cannot sudo); returns the path.

    `private` (keys): into a fresh 0700 directory of the login user, made before the upload,
    so the bytes are never readable by anyone else on the host, not even for a moment (sftp
    creates files with the server's umask and chmods only afterwards). Remove it with
    `staged_dir`."""
    remote = f"/tmp/simple-tftpd-{secrets.token_hex(8)}"
    source: Any = io.BytesIO(local) if isinstance(local, bytes) else str(local)
    try:
        if private:
            made = c.run(
                f"mkdir -m 0700 {q(remote)}", hide=True, warn=True, in_stream=False, timeout=60
            )
            if made.failed:
                detail = (made.stderr or made.stdout or "").strip()
                raise RemoteError(c.host, f"upload of {what}", f"mkdir {remote}: {detail}")
            remote = f"{remote}/data"
        c.put(source, remote)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise RemoteError(c.host, f"upload of {what}", f"{type(exc).__name__}: {exc}") from None
    return remote


def staged_dir(staged: str) -> str:
    """What to remove after installing an upload: its private directory, or the file."""
    return staged.removesuffix("/data") if staged.endswith("/data") else staged


def write_file(
    c: Remote,
    path: str,
    content: str | bytes,
    *,
    mode: int = 0o644,
    owner: str = "root",
    group: str = "root",
) -> None:
    """Replace `path` atomically: upload, install beside it with the final owner and mode,
    then rename over it, so a reader never sees a half-written file. A file that others may
    not all read (a key, a config with tokens) is staged privately (see `put`)."""
    data = content.encode() if isinstance(content, str) else content
    staged = put(c, data, path, private=mode & 0o004 == 0)
    target = Path(path)
    temp = target.with_name(f".{target.name}.new")
    sh(
        c,
        f"install -D -m {mode:04o} -o {q(owner)} -g {q(group)} {q(staged)} {q(temp)}"
        f" && mv -f {q(temp)} {q(path)}; status=$?; rm -rf {q(staged_dir(staged))}; exit $status",
        f"writing {path}",
    )


def read_facts(c: Remote, script: str, what: str) -> dict[str, str]:
    """Run a script that prints key=value lines; one round trip for many facts."""
    result = sh(c, script, what)
    facts: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def connect(node: Node, config: Config | None = None) -> Connection:
    """A Fabric connection to `node` that verifies its host key.

    Fabric accepts unknown host keys by default; here an unknown or changed key stops the task
    unless the inventory asks for "accept-new" (trust on first use, nothing written)."""
    ssh = node.ssh
    connect_kwargs: dict[str, Any] = {"banner_timeout": ssh.connect_timeout}
    if ssh.identity_file:
        connect_kwargs["key_filename"] = [str(Path(ssh.identity_file).expanduser())]
    connection = Connection(
        node.address,
        user=ssh.user,
        port=ssh.port,
        config=config,
        connect_timeout=int(ssh.connect_timeout),
        connect_kwargs=connect_kwargs,
    )
    client = connection.client
    if ssh.known_hosts:
        client.load_host_keys(str(Path(ssh.known_hosts).expanduser()))
    else:
        client.load_system_host_keys()
    if ssh.host_key_policy == "reject":
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    return connection


def close_all(connections: Iterable[Any]) -> None:
    for connection in connections:
        close = getattr(connection, "close", None)
        if close is not None:
            close()
