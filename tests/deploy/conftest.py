"""Fixtures for the deploy tests: the end-to-end testbed (real hosts, booted once for the
end-to-end module and torn down even when a test fails)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deploy import PROJECT_ROOT
from testbed import Testbed

HOSTS = ("lb-1", "tftp-1", "tftp-2", "tftp-3")
NODES = HOSTS[1:]
BIG_FILE = "e2e/big.bin"
FAB = Path(sys.executable).with_name("fab")
FAB_TIMEOUT = 600

_TOOLS = ("systemd-nspawn", "debootstrap", "ip")
_missing = [tool for tool in _TOOLS if not shutil.which(tool)]
needs_testbed = pytest.mark.skipif(
    os.geteuid() != 0 or bool(_missing),
    reason=f"the testbed needs root and {', '.join(_TOOLS)} (`make test` installs them)",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: boots real test hosts (systemd-nspawn)")


@dataclass(frozen=True)
class E2ESite:
    bed: Testbed
    inventory: Path
    work: Path
    big_sha256: str

    @property
    def lb_address(self) -> str:
        return self.bed.hosts["lb-1"].address

    def fab(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `fab TASK --inventory ... ARGS` as an operator would; output is captured."""
        task, *rest = args
        return subprocess.run(
            [str(FAB), task, "--inventory", str(self.inventory), *rest],
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

    def current_version(self, host: str) -> str:
        return self.sh(host, "/opt/simple-tftpd/current/venv/bin/simple-tftpd version").strip()


# Module scope: the hosts go away as soon as the end-to-end module is done, not at the end of a
# whole-repository run. Put further end-to-end tests in that module to share the testbed.
@pytest.fixture(scope="module")
def e2e_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ESite]:
    work = tmp_path_factory.mktemp("e2e")
    bed = Testbed(list(HOSTS), log=lambda line: print(line, flush=True))
    with bed:
        inventory = work / "site.yaml"
        inventory.write_text(
            yaml.safe_dump(
                {
                    "site": "e2e",
                    "ssh": {
                        "user": "root",
                        "identity_file": str(bed.key),
                        "known_hosts": str(bed.known_hosts),
                    },
                    "config": {
                        "tftp": {"root": "/srv/tftp", "single_port": True, "drain_timeout": 10},
                        "performance": {"thread_pool": {"workers": 1}},
                    },
                    "hosts": [
                        {"name": "lb-1", "address": bed.hosts["lb-1"].address, "roles": ["lb"]},
                        {"name": "tftp-1", "address": bed.hosts["tftp-1"].address},
                        # One node with a supervisor and two workers, as production runs.
                        {
                            "name": "tftp-2",
                            "address": bed.hosts["tftp-2"].address,
                            "config": {"performance": {"thread_pool": {"workers": 2}}},
                        },
                        {"name": "tftp-3", "address": bed.hosts["tftp-3"].address},
                    ],
                },
                sort_keys=False,
            )
        )
        big = os.urandom(1 << 20)
        for host in NODES:
            client = bed.client(host)
            try:
                client.exec_command("mkdir -p /srv/tftp/e2e")[1].channel.recv_exit_status()
                with client.open_sftp() as sftp, sftp.open(f"/srv/tftp/{BIG_FILE}", "wb") as f:
                    f.write(big)
            finally:
                client.close()
        yield E2ESite(bed, inventory, work, hashlib.sha256(big).hexdigest())
