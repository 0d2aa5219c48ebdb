"""Server-side cost read from /proc: CPU time and PSS of a server's whole process tree.

Servers differ in shape (one process, threads, worker processes, fork per transfer), so every
number here covers the tree rooted at the PID the harness started, not just that PID.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None if the process is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses; everything after the last ')' is safe.
    return text[text.rindex(")") + 2 :].split()


def _children_from_task_files(pid: int) -> list[int] | None:
    files = list((_PROC / str(pid) / "task").glob("*/children"))
    if not files:
        return None  # kernel built without CONFIG_PROC_CHILDREN (or pid gone)
    kids: list[int] = []
    for path in files:
        try:
            kids.extend(int(word) for word in path.read_text().split())
        except OSError:
            continue
    return kids


def _parent_map() -> dict[int, list[int]]:
    """parent PID -> child PIDs for every process, from each /proc/PID/stat field 4."""
    parents: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    return parents


def process_tree(root: int) -> list[int]:
    """root and all its live descendants (zombies included until they are reaped)."""
    parents: dict[int, list[int]] | None = None
    tree: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in tree:
            continue
        tree.append(pid)
        kids = _children_from_task_files(pid)
        if kids is None:
            # Fallback is one scan of /proc per call, built lazily and shared by the whole walk.
            parents = parents if parents is not None else _parent_map()
            kids = parents.get(pid, [])
        stack.extend(kids)
    return tree


def _cpu_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # utime, stime, cutime, cstime are stat fields 14-17, i.e. indexes 11-14 here. c* hold
    # reaped children (tftpd-hpa forks per transfer); a live child's own c* hold its reaped
    # descendants, so summing all four over the live tree counts every process exactly once.
    return sum(int(value) for value in fields[11:15])


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by root and all descendants, live or reaped."""
    return sum(_cpu_ticks(pid) for pid in process_tree(root)) / CLK_TCK


def _pss_kib(pid: int) -> int:
    try:
        with (_PROC / str(pid) / "smaps_rollup").open() as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass  # exited between listing and reading: it holds no memory any more
    return 0


def tree_pss_kib(root: int) -> int:
    """Proportional set size of the tree: shared pages are split, so workers add up honestly."""
    return sum(_pss_kib(pid) for pid in process_tree(root))


class PeakPss:
    """Samples tree_pss_kib(root) in a background thread while the `with` block runs."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="pss-sampler", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, tree_pss_kib(self.root))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        # One last sample so a run shorter than the interval still has a value.
        self.peak_kib = max(self.peak_kib, tree_pss_kib(self.root))


def wall_clock() -> float:
    """Monotonic seconds; one name so every timing in the harness uses the same clock."""
    return time.monotonic()
