"""Fixtures for the deploy tests: the end-to-end testbed (real hosts, booted once for the
end-to-end module and torn down even when a test fails)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from deploy import PROJECT_ROOT
from testbed import Testbed

# The site's three nodes and its load balancer, plus a fourth node that `fab cluster-join`
# adds to the running site at the end (booted with the others: hosts cannot be added later).
HOSTS = ("lb-1", "tftp-1", "tftp-2", "tftp-3", "tftp-4")
NODES = HOSTS[1:4]
NEW_NODE = HOSTS[4]
BIG_FILE = "e2e/big.bin"
FAB = Path(sys.executable).with_name("fab")
FAB_TIMEOUT = 600
T = TypeVar("T")
HTTP_TIMEOUT = 15

_TOOLS = ("systemd-nspawn", "debootstrap", "ip")
_missing = [tool for tool in _TOOLS if not shutil.which(tool)]
needs_testbed = pytest.mark.skipif(
    os.geteuid() != 0 or bool(_missing),
    reason=f"the testbed needs root and {', '.join(_TOOLS)} (`make test` installs them)",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: boots real test hosts (systemd-nspawn)")


@dataclass(frozen=True)
class HostsSite:
    """A site on testbed hosts, driven as an operator drives one: fab tasks and shells."""

    bed: Testbed
    inventory: Path

    def address(self, host: str) -> str:
        return self.bed.hosts[host].address

    def fab(self, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run `fab TASK --inventory ... ARGS` as an operator would; output is captured."""
        task, *rest = args
        return subprocess.run(
            [str(FAB), task, "--inventory", str(inventory or self.inventory), *rest],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=FAB_TIMEOUT,
            check=False,
        )

    def sh(self, host: str, command: str) -> str:
        code, out, err = self.bed.run(host, command)
        assert code == 0, f"{host}: {command}: exit {code}: {err}"
        return out


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"{result.stdout}\n{result.stderr}"


def wait_until(check: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """Call `check` until `done` accepts its answer or `timeout` passes; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


@dataclass(frozen=True)
class E2ESite(HostsSite):
    # The same site with the fourth node added, as an operator edits it before a join.
    joined_inventory: Path
    work: Path
    big_sha256: str
    token: str

    @property
    def lb_address(self) -> str:
        return self.bed.hosts["lb-1"].address

    def current_version(self, host: str) -> str:
        return self.sh(host, "/opt/simple-tftpd/current/venv/bin/simple-tftpd version").strip()

    def api(
        self,
        host: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """A request to `host`'s management API with the site's admin token."""
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        url = f"http://{self.address(host)}:8080{path}"
        request = urllib.request.Request(url, body, all_headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return int(response.status), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read() or b"null")

    def etcd_members(self, host: str) -> list[dict[str, Any]]:
        """etcd's own member list, read from `host`'s etcd (its v3 JSON gateway)."""
        url = f"http://{self.address(host)}:2379/v3/cluster/member/list"
        request = urllib.request.Request(
            url, b"{}", {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return list(json.load(response).get("members", []))


def put_file(bed: Testbed, host: str, path: str, data: bytes) -> None:
    """Write `data` to `path` on `host` (its directory made first), over SFTP as root."""
    client = bed.client(host)
    try:
        directory = path.rpartition("/")[0] or "/"
        client.exec_command(f"mkdir -p {directory}")[1].channel.recv_exit_status()
        with client.open_sftp() as sftp, sftp.open(path, "wb") as handle:
            handle.write(data)
    finally:
        client.close()


def ssh_settings(bed: Testbed) -> dict[str, str]:
    """An inventory's `ssh` block for the testbed's hosts."""
    return {"user": "root", "identity_file": str(bed.key), "known_hosts": str(bed.known_hosts)}


def cluster_views(
    read_status: Callable[[str], tuple[int, Any]], hosts: tuple[str, ...]
) -> dict[str, Any]:
    """Each host's /api/v1/cluster/status as `read_status(host)` gets it (status, body); an
    error or a refusal in place of the view of a host that does not answer yet."""
    views: dict[str, Any] = {}
    for host in hosts:
        try:
            status, body = read_status(host)
        except (OSError, ValueError) as exc:  # not answering yet: not settled
            views[host] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        views[host] = body if status == 200 else {"status": status, "body": body}
    return views


def _site_document(bed: Testbed, nodes: tuple[str, ...], token: str) -> dict[str, Any]:
    hosts: list[dict[str, Any]] = [
        {"name": "lb-1", "address": bed.hosts["lb-1"].address, "roles": ["lb"]}
    ]
    for name in nodes:
        host: dict[str, Any] = {
            "name": name,
            "address": bed.hosts[name].address,
            "roles": ["tftp", "etcd"],
        }
        if name == "tftp-2":
            # One node with a supervisor and two workers, as production runs.
            host["config"] = {"performance": {"thread_pool": {"workers": 2}}}
        hosts.append(host)
    return {
        "site": "e2e",
        "ssh": ssh_settings(bed),
        "config": {
            "tftp": {"root": "/srv/tftp", "single_port": True, "drain_timeout": 10},
            "performance": {"thread_pool": {"workers": 1}},
            # Every node an etcd member and a member of the site cluster; nodes pull
            # replicated blobs from each other with the admin token. The default resync
            # period (30 s): a joining node catches up through its start-up sync.
            "api": {"token": token},
            "clustering": {"enabled": True},
        },
        "hosts": hosts,
    }


# Module scope: the hosts go away as soon as the end-to-end module is done, not at the end of a
# whole-repository run. Put further end-to-end tests in that module to share the testbed.
@pytest.fixture(scope="module")
def e2e_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ESite]:
    work = tmp_path_factory.mktemp("e2e")
    bed = Testbed(list(HOSTS), log=lambda line: print(line, flush=True))
    token = secrets.token_hex(16)
    with bed:
        inventory = work / "site.yaml"
        inventory.write_text(yaml.safe_dump(_site_document(bed, NODES, token), sort_keys=False))
        joined = work / "site-joined.yaml"
        joined.write_text(
            yaml.safe_dump(_site_document(bed, (*NODES, NEW_NODE), token), sort_keys=False)
        )
        big = os.urandom(1 << 20)
        for host in NODES:
            put_file(bed, host, f"/srv/tftp/{BIG_FILE}", big)
        yield E2ESite(bed, inventory, joined, work, hashlib.sha256(big).hexdigest(), token)
