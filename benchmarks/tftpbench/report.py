"""Markdown tables from the raw samples: median and min-max per cell, ratios against peers."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from tftpbench.scenarios import SCENARIOS, Sample, Workload
from tftpbench.servers import SERVERS

REFERENCE_PEERS = ("tftpd-hpa", "atftpd")

# metric key -> column header; the unit is in the header so cells stay short.
METRIC_HEADERS = {
    "mib_s": "MiB/s",
    "req_s": "req/s",
    "cpu_us_block": "server CPU µs/block",
    "cpu_us_req": "server CPU µs/req",
    "client_cpu_us_block": "client CPU µs/block",
    "p50_s": "p50 s/transfer",
    "p99_s": "p99 s/transfer",
    "pss_mib": "peak PSS MiB",
}
SCENARIO_METRICS = {
    "big": ["mib_s", "cpu_us_block"],
    "big-w16": ["mib_s", "cpu_us_block"],
    "storm": ["mib_s", "p50_s", "p99_s", "cpu_us_block", "client_cpu_us_block", "pss_mib"],
    "storm-w16": ["mib_s", "p50_s", "p99_s", "cpu_us_block", "client_cpu_us_block", "pss_mib"],
    "small": ["req_s", "cpu_us_req"],
}


@dataclass
class Results:
    """Samples by scenario key, then server name; a missing key means 'not run'."""

    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    not_applicable: set[tuple[str, str]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    cpu_methods: set[str] = field(default_factory=set)

    def add(self, scenario: str, server: str, sample: Sample) -> None:
        self.samples.setdefault(scenario, {}).setdefault(server, []).append(sample)

    def values(self, scenario: str, server: str, metric: str) -> list[float]:
        samples = self.samples.get(scenario, {}).get(server, [])
        return [sample.metrics[metric] for sample in samples if metric in sample.metrics]

    def median(self, scenario: str, server: str, metric: str) -> float | None:
        values = self.values(scenario, server, metric)
        return statistics.median(values) if values else None


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _spread_cell(values: list[float]) -> str:
    if not values:
        return "-"
    middle = _number(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} ({_number(min(values))}-{_number(max(values))})"


def _ratio_cell(results: Results, scenario: str, server: str, peer: str) -> str:
    metric = SCENARIOS[scenario].headline
    mine, theirs = results.median(scenario, server, metric), results.median(scenario, peer, metric)
    if mine is None or not theirs:
        return "-"
    return f"{mine / theirs:.2f}x"


def _failed_cell(samples: list[Sample]) -> str:
    return f"{sum(s.failed for s in samples)}/{sum(s.attempted for s in samples)}"


def _row(results: Results, scenario: str, server: str) -> list[str]:
    metrics = SCENARIO_METRICS[scenario]
    if (scenario, server) in results.not_applicable:
        return [server, *(["n/a"] * (len(metrics) + 3))]
    samples = results.samples.get(scenario, {}).get(server, [])
    if not samples:
        return [server, *(["not run"] * (len(metrics) + 3))]
    cells = [_spread_cell(results.values(scenario, server, metric)) for metric in metrics]
    ratios = [_ratio_cell(results, scenario, server, peer) for peer in REFERENCE_PEERS]
    return [server, cells[0], *ratios, *cells[1:], _failed_cell(samples)]


def _table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["--:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def scenario_table(results: Results, scenario: str, servers: list[str]) -> str:
    metrics = SCENARIO_METRICS[scenario]
    headline = METRIC_HEADERS[metrics[0]]
    header = ["server", headline, *(f"vs {peer}" for peer in REFERENCE_PEERS)]
    header += [METRIC_HEADERS[metric] for metric in metrics[1:]] + ["failed"]
    return _table(header, [_row(results, scenario, server) for server in servers])


def summary_table(results: Results, scenarios: list[str], servers: list[str]) -> str:
    """Headline medians only, one column per scenario: the table to glance at."""
    header = ["server"] + [
        f"{key} ({METRIC_HEADERS[SCENARIOS[key].headline]})" for key in scenarios
    ]
    rows = []
    for server in servers:
        row = [server]
        for key in scenarios:
            median = results.median(key, server, SCENARIOS[key].headline)
            na = (key, server) in results.not_applicable
            row.append("n/a" if na else "-" if median is None else _number(median))
        rows.append(row)
    return _table(header, rows)


def results_markdown(
    results: Results, scenarios: list[str], servers: list[str], work: Workload
) -> str:
    parts = ["### Summary (medians)", "", summary_table(results, scenarios, servers)]
    for key in scenarios:
        title = SCENARIOS[key].title(work)
        parts += ["", f"### `{key}`: {title}", "", scenario_table(results, key, servers)]
    return "\n".join(parts)


def servers_markdown(servers: list[str]) -> str:
    return "\n".join(f"- **{name}**: {SERVERS[name].about}" for name in servers)


COLUMNS = """\
- **MiB/s**: bytes verified by sha256 divided by wall time. Single-file scenarios time one
  `atftp` process from start to exit; the storms divide all verified bytes by the time from
  the release of the clients to the last client's exit (aggregate throughput). Storm clients
  are all started first, each blocked reading a pipe, then released together by one write,
  like machines powered on at once (started back to back, their start times spread with the
  CPU the server left the harness: the 200th began 4-5 s after the first against tftpd-hpa,
  under 1 s against simple-tftpd; reports before 2026-11-27 started them that way).
- **req/s**: verified 1 KiB downloads per second of wall time across all curl workers.
- **vs tftpd-hpa, vs atftpd**: this server's median divided by the peer's median of the same
  run (above 1 is better for MiB/s and req/s).
- **server CPU µs/block** and **µs/req**: user+system CPU used by the server and everything
  it forked during the scenario, per data block (verified bytes / 1468) or per verified
  request; lower is better. Read before and after each scenario ({cpu_methods}). Each server
  runs in its own cgroup because tftpd-hpa's per-transfer children never show up in its
  cutime/cstime; where no cgroup can be made, the harness falls back to summing
  utime+stime+cutime+cstime over the live process tree in /proc/PID/stat (10 ms ticks), which
  undercounts tftpd-hpa.
- **client CPU µs/block** (storms): CPU used by all the atftp clients per data block, read
  from a cgroup of their own. Clients share the cores with the server, so a server that
  makes its clients work harder per block (more cross-CPU wake-ups, colder caches) leaves
  less CPU for the transfers even at the same server CPU per block.
- **p50/p99 s/transfer**: per-client time from the release to its exit, successful
  transfers only (nearest-rank percentiles).
- **peak PSS MiB**: largest sum of `Pss` from /proc/PID/smaps_rollup over the server's
  process tree, sampled every ~100 ms during each storm (includes any content cache).
- **failed**: transfers that failed, timed out or produced wrong bytes / transfers attempted,
  summed over all repeats.
- Cells are `median (min-max)` over the repeats; `n/a` means the server does not negotiate
  windowsize (RFC 7440), so the scenario would only repeat the lockstep one."""

CAVEATS = """\
- The machine has {cores} cores, and the clients (atftp, curl, up to hundreds of processes)
  run on the same cores as the server. Results show how servers compare under that contention,
  not their ceiling on a dedicated host.
- Everything goes over loopback: no NIC, no wire latency, no packet loss unless socket
  buffers overflow. Lockstep throughput is bounded by round trips through the kernel and
  process wake-ups, which is where the servers differ most.
- Expect ~20% run-to-run noise on a shared virtual machine, more when other work runs at the
  same time (see the load average before the run, above); the min-max spread shows it.
  Compare ratios within one run rather than absolute numbers across runs or machines.
- When other work shares the machine (see the note and the busy share under Machine), the
  wall-clock columns (MiB/s, req/s, p50/p99) move with it far more than server CPU per
  block or request, and fork-per-transfer servers (tftpd-hpa: one process per client) get
  more of a contended CPU than servers with a fixed number of processes. Read the CPU
  columns first.
- Lockstep (`big`) throughput is bimodal on this VM: the same server lands near ~20 or near
  ~60-70 MiB/s from one repeat to the next, depending on how the scheduler places client and
  server on the vCPUs, and CPU µs/block moves with it (the slow mode pays for more
  wake-ups). A median of 3 can fall in either mode: for lockstep comparisons run
  `--scenarios big --repeats 7`.
- A windowed 64 MiB transfer takes well under a second: compare `big-w16` over several
  repeats (`--scenarios big-w16 --repeats 7`). (Reports before 2026-11-27 timed single
  fetches with a wait that polled every 50 ms, which quantised them to 50 ms steps.)
- simple-tftpd sends a window with one UDP segmentation (GSO) call only while a worker
  serves two or more transfers: one transfer alone goes a datagram at a time, which is
  faster on loopback (the client reads the first blocks while the rest are sent) at more
  CPU per block. `big-w16` shows that lone-transfer mode, `storm-w16` the GSO one.
- All storm clients fetch the same file (as in a PXE boot storm), so servers that cache
  content benefit, as they would in production.
- Each server is restarted for every repeat and runs the scenarios in order (`big`,
  `big-w16`, `storm`, `storm-w16`, `small`); server order is rotated between repeats.
- Server settings: blksize capped at 1468 everywhere, per-transfer logging off,
  simple-tftpd rate limits raised because every client is 127.0.0.1. atftp clients use a
  1 s retransmit timeout for every server."""
