"""The four scenarios from the performance issue, each measured against one running server."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tftpbench import cgroup
from tftpbench.clients import Expected, curl_batch, fetch_atftp, sha256_of, storm
from tftpbench.procfs import PeakPss
from tftpbench.servers import BLKSIZE, PROBE_BYTES, PROBE_FILE, RunningServer

MIB = 1 << 20
BIG_FILE, STORM_FILE, SMALL_FILE = "big.bin", "storm.bin", "small.bin"
# Generous bounds that only a hung server reaches; they keep every run finite.
BIG_TIMEOUT = 600.0
STORM_TIMEOUT = 900.0
SMALL_TIMEOUT = 600.0


@dataclass(frozen=True)
class Workload:
    big_bytes: int
    storm_clients: int
    storm_bytes: int
    small_fetches: int
    small_workers: int = 8
    small_bytes: int = 1024
    windowsize: int = 16


FULL = Workload(big_bytes=64 * MIB, storm_clients=200, storm_bytes=4 * MIB, small_fetches=2000)
QUICK = Workload(big_bytes=8 * MIB, storm_clients=20, storm_bytes=1 * MIB, small_fetches=200)


@dataclass(frozen=True)
class Content:
    root: Path
    files: dict[str, Expected]


@dataclass
class Sample:
    """One scenario against one server in one repeat."""

    metrics: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    attempted: int = 0


def _write_random(path: Path, size: int) -> Expected:
    # Random bytes: nothing on the path (cache, page cache, loopback) can compress them.
    with path.open("wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, MIB))
            out.write(chunk)
            remaining -= len(chunk)
    return Expected(size=size, sha256=sha256_of(path))


def make_content(root: Path, workload: Workload) -> Content:
    root.mkdir(parents=True, exist_ok=True)
    (root / PROBE_FILE).write_bytes(PROBE_BYTES)
    sizes = {
        BIG_FILE: workload.big_bytes,
        STORM_FILE: workload.storm_bytes,
        SMALL_FILE: workload.small_bytes,
    }
    return Content(root, {name: _write_random(root / name, size) for name, size in sizes.items()})


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile: always one of the measured values."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _cpu_per_block_us(cpu_seconds: float, good_bytes: int) -> dict[str, float]:
    blocks = good_bytes / BLKSIZE
    return {"cpu_us_block": cpu_seconds * 1e6 / blocks} if blocks else {}


def _run_big(
    server: RunningServer, content: Content, scratch: Path, windowsize: int | None
) -> Sample:
    expected = content.files[BIG_FILE]
    cpu_before = server.cpu_seconds()
    fetch = fetch_atftp(
        server.port, BIG_FILE, scratch / "big.out", expected, windowsize, BIG_TIMEOUT
    )
    cpu = server.cpu_seconds() - cpu_before
    if not fetch.ok:
        return Sample(failed=1, attempted=1)
    metrics = {"mib_s": expected.size / MIB / fetch.seconds}
    return Sample({**metrics, **_cpu_per_block_us(cpu, expected.size)}, attempted=1)


def run_big(server: RunningServer, content: Content, work: Workload, scratch: Path) -> Sample:
    return _run_big(server, content, scratch, None)


def run_big_windowed(
    server: RunningServer, content: Content, work: Workload, scratch: Path
) -> Sample:
    return _run_big(server, content, scratch, work.windowsize)


def _run_storm(
    server: RunningServer, content: Content, work: Workload, scratch: Path, windowsize: int | None
) -> Sample:
    expected = content.files[STORM_FILE]
    # The clients' CPU too: on shared cores, what a server makes its clients spend (wake-ups,
    # cache misses) is throughput the aggregate cannot have.
    clients = cgroup.create(f"clients-{server.port}")
    try:
        cpu_before = server.cpu_seconds()
        client_before = clients.seconds() if clients else 0.0
        with PeakPss(server.pid) as pss:
            fetches, wall = storm(
                server.port,
                STORM_FILE,
                scratch,
                work.storm_clients,
                expected,
                STORM_TIMEOUT,
                windowsize,
                clients.wrap if clients else None,
            )
        cpu = server.cpu_seconds() - cpu_before
        client_cpu = clients.seconds() - client_before if clients else None
    finally:
        if clients:
            clients.remove()
    times = sorted(fetch.seconds for fetch in fetches if fetch.ok)
    good_bytes = len(times) * expected.size
    metrics = {"mib_s": good_bytes / MIB / wall, "pss_mib": pss.peak_kib / 1024}
    if times:
        metrics |= {"p50_s": percentile(times, 50), "p99_s": percentile(times, 99)}
    metrics |= _cpu_per_block_us(cpu, good_bytes)
    if client_cpu is not None and good_bytes:
        metrics["client_cpu_us_block"] = client_cpu * 1e6 / (good_bytes / BLKSIZE)
    return Sample(metrics, failed=len(fetches) - len(times), attempted=len(fetches))


def run_storm(server: RunningServer, content: Content, work: Workload, scratch: Path) -> Sample:
    return _run_storm(server, content, work, scratch, None)


def run_storm_windowed(
    server: RunningServer, content: Content, work: Workload, scratch: Path
) -> Sample:
    return _run_storm(server, content, work, scratch, work.windowsize)


def run_small(server: RunningServer, content: Content, work: Workload, scratch: Path) -> Sample:
    expected = content.files[SMALL_FILE]
    cpu_before = server.cpu_seconds()
    verified, wall = curl_batch(
        server.port,
        SMALL_FILE,
        scratch,
        work.small_fetches,
        work.small_workers,
        expected,
        SMALL_TIMEOUT,
    )
    cpu = server.cpu_seconds() - cpu_before
    metrics = {"req_s": verified / wall}
    if verified:
        metrics["cpu_us_req"] = cpu * 1e6 / verified
    return Sample(metrics, failed=work.small_fetches - verified, attempted=work.small_fetches)


Runner = Callable[[RunningServer, Content, Workload, Path], Sample]


@dataclass(frozen=True)
class Scenario:
    key: str
    run: Runner
    headline: str  # the metric ratios are computed on
    needs_windowsize: bool = False

    def title(self, work: Workload) -> str:
        big = f"{work.big_bytes / MIB:g} MiB file, blksize {BLKSIZE}"
        return {
            "big": f"{big}, lockstep",
            "big-w16": f"{big}, windowsize {work.windowsize}",
            "storm": f"boot storm: {work.storm_clients} clients x "
            f"{work.storm_bytes / MIB:g} MiB, blksize {BLKSIZE}",
            "storm-w16": f"boot storm, windowed: {work.storm_clients} clients x "
            f"{work.storm_bytes / MIB:g} MiB, blksize {BLKSIZE}, windowsize {work.windowsize}",
            "small": f"{work.small_fetches} fetches of a {work.small_bytes} B file, "
            f"{work.small_workers} curl workers",
        }[self.key]


SCENARIOS: dict[str, Scenario] = {
    scenario.key: scenario
    for scenario in (
        Scenario("big", run_big, "mib_s"),
        Scenario("big-w16", run_big_windowed, "mib_s", needs_windowsize=True),
        Scenario("storm", run_storm, "mib_s"),
        Scenario("storm-w16", run_storm_windowed, "mib_s", needs_windowsize=True),
        Scenario("small", run_small, "req_s"),
    )
}
