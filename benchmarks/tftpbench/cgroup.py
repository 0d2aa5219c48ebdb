"""A cgroup per server, so its CPU time includes processes that have already exited.

/proc/PID/stat cutime/cstime only grow when a parent wait()s for a child. tftpd-hpa forks
one process per transfer and reaps them without that accounting (measured: its cutime stays
0 after a 64 MiB transfer), so a /proc-only view would show it using almost no CPU. A cgroup
counts every task that ever ran in it. cgroup v2's cpu.stat works without any controller
enabled; cgroup v1's cpuacct is the fallback. Without either, callers use /proc.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "tftp-bench-"


@dataclass(frozen=True)
class CpuCgroup:
    path: Path
    usage_file: str  # "cpu.stat" (v2, microseconds) or "cpuacct.usage" (v1, nanoseconds)

    @property
    def method(self) -> str:
        return f"cgroup {'v2 cpu.stat' if self.usage_file == 'cpu.stat' else 'v1 cpuacct'}"

    def seconds(self) -> float:
        text = (self.path / self.usage_file).read_text()
        if self.usage_file == "cpuacct.usage":
            return int(text) / 1e9
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise OSError(f"no usage_usec in {self.path / self.usage_file}")

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run so the process joins the cgroup before exec: nothing it forks escapes."""
        join = 'echo $$ > "$0" && exec "$@"'
        return ["/bin/sh", "-c", join, str(self.path / "cgroup.procs"), *argv]

    def remove(self) -> None:
        # The last killed processes can take a moment to leave; a leftover empty cgroup is
        # harmless and removed by the next run's sweep.
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def _mounts() -> list[tuple[Path, str, set[str]]]:
    """(mount point, fs type, super options) of every cgroup mount."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fstype, _source, options = [*after.split(), "", "", ""][:3]
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((Path(before.split()[4]), fstype, set(options.split(","))))
    return mounts


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per hierarchy: key "" for v2, else the controller list."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        paths[controllers] = path
    return paths


def _parents() -> list[tuple[Path, str]]:
    """Directories to create server cgroups in, best first, with their usage file."""
    own = _own_paths()
    candidates = []
    for mount, fstype, options in _mounts():
        if fstype == "cgroup2" and "" in own:
            candidates.append((mount / own[""].lstrip("/"), "cpu.stat"))
        elif fstype == "cgroup" and "cpuacct" in options:
            path = next((p for c, p in own.items() if "cpuacct" in c.split(",")), "/")
            candidates.append((mount / path.lstrip("/"), "cpuacct.usage"))
    return sorted(candidates, key=lambda item: item[1] != "cpu.stat")


def _parents_or_none() -> list[tuple[Path, str]]:
    try:
        return _parents()
    except (OSError, ValueError):
        return []  # no /proc/self/cgroup or an unexpected format: use /proc accounting


def sweep_stale() -> None:
    """Remove empty cgroups left by an earlier run that was killed before cleaning up."""
    for parent, _usage in _parents_or_none():
        for stale in parent.glob(f"{PREFIX}*"):
            with contextlib.suppress(OSError):
                stale.rmdir()


def create(name: str) -> CpuCgroup | None:
    for parent, usage_file in _parents_or_none():
        path = parent / f"{PREFIX}{os.getpid()}-{name}"
        try:
            path.mkdir()
        except OSError:
            continue
        group = CpuCgroup(path, usage_file)
        try:
            group.seconds()
        except (OSError, ValueError):
            group.remove()
            continue
        return group
    return None
