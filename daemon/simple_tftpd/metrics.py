"""Prometheus metrics of one daemon, in a registry of its own (tests run several daemons).

With several worker processes, prometheus-client's multiprocess mode is on (the supervisor
sets PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client): each worker writes
its values to files there and the supervisor's API adds them up. Gauges say how.

Dashboards and alert rules (templates/grafana, templates/prometheus) query these names; a test
scrapes a live daemon and fails if one of them is missing here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

LabelledMetric = TypeVar("LabelledMetric", Counter, Gauge, Histogram)


class Tally:
    """Per-transfer counts added up in plain numbers and written to the metrics in batches.

    With several workers every `inc` is a locked write to a memory-mapped file: about 1.5 us,
    and a small-file transfer made seven of them besides the duration histogram (all of its
    metric writes together measured 14 us of ~150 us server CPU per request). The server
    writes the tally when it goes idle or a moment after the first count, so a scrape is at
    most that moment behind.
    """

    def __init__(self) -> None:
        self.pending: dict[Any, float] = {}

    def add(self, child: Any, amount: float = 1.0) -> None:
        pending = self.pending
        pending[child] = pending.get(child, 0.0) + amount

    def flush(self) -> None:
        for child, amount in self.pending.items():
            child.inc(amount)
        self.pending.clear()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry
        self.transfers = Counter(
            "simple_tftpd_transfers",
            "Finished transfers by direction and outcome",
            ["direction", "outcome"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "simple_tftpd_sent_bytes", "File bytes sent to clients", registry=r
        )
        self.bytes_received = Counter(
            "simple_tftpd_received_bytes", "File bytes received in uploads", registry=r
        )
        self.active_sessions = Gauge(
            "simple_tftpd_active_sessions",
            "Transfers in progress",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.duration = Histogram(
            "simple_tftpd_transfer_duration_seconds",
            "Duration of finished transfers",
            ["direction"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.retransmits = Counter(
            "simple_tftpd_retransmits", "Datagrams sent again after a timeout", registry=r
        )
        self.errors = Counter(
            "simple_tftpd_errors_sent",
            "ERROR packets sent, by TFTP error code",
            ["code"],
            registry=r,
        )
        self.rate_limited = Counter(
            "simple_tftpd_rate_limited_requests",
            "Requests dropped by the per-client rate limit",
            registry=r,
        )
        self.acl_denied = Counter(
            "simple_tftpd_acl_denied_requests", "Requests refused by the access list", registry=r
        )
        self.malformed = Counter(
            "simple_tftpd_malformed_packets", "Datagrams that were not valid TFTP", registry=r
        )
        self.cache_hits = Counter("simple_tftpd_cache_hits", "Hot-file cache hits", registry=r)
        self.cache_misses = Counter(
            "simple_tftpd_cache_misses", "Hot-file cache misses", registry=r
        )
        self.cache_bytes = Gauge(
            "simple_tftpd_cache_bytes",
            "Bytes held by the hot-file cache",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.up = Gauge(
            "simple_tftpd_up",
            "Worker processes serving TFTP (0 while draining)",
            registry=r,
            multiprocess_mode="livesum",
        )

        # Cluster (set by the process that runs the cluster node).
        self.cluster_members = Gauge(
            "simple_tftpd_cluster_members",
            "Nodes registered in this node's cluster",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cluster_leader = Gauge(
            "simple_tftpd_cluster_is_leader",
            "1 if this node is the cluster leader",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.replication_pending_entries = Gauge(
            "simple_tftpd_replication_pending_entries",
            "Manifest entries not yet served locally (replication lag)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.replication_pending_bytes = Gauge(
            "simple_tftpd_replication_pending_bytes",
            "Bytes of manifest entries not yet served locally",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.replication_errors = Counter(
            "simple_tftpd_replication_errors", "Failed blob pulls or switches", registry=r
        )
        # Multi-site sync, per peer site (set by the site leader).
        self.sitesync_lag_entries = Gauge(
            "simple_tftpd_sitesync_lag_entries",
            "Peer manifest changes not yet applied here",
            ["peer"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.sitesync_lag_bytes = Gauge(
            "simple_tftpd_sitesync_lag_bytes",
            "Bytes of peer manifest changes not yet applied here",
            ["peer"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.sitesync_last_success = Gauge(
            "simple_tftpd_sitesync_last_success_timestamp_seconds",
            "When the last sync round with a peer site succeeded",
            ["peer"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.sitesync_errors = Counter(
            "simple_tftpd_sitesync_errors",
            "Failed sync rounds with a peer site",
            ["peer"],
            registry=r,
        )

        # Backups, per location (set by the site leader, which runs them).
        self.backup_runs = Counter(
            "simple_tftpd_backup_runs",
            "Snapshot runs by location and outcome (ok, failed)",
            ["location", "outcome"],
            registry=r,
        )
        self.backup_last_outcome = Gauge(
            "simple_tftpd_backup_last_outcome",
            "1 if the last snapshot to a location succeeded, 0 if it failed",
            ["location"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.backup_last_success = Gauge(
            "simple_tftpd_backup_last_success_timestamp_seconds",
            "When the last successful snapshot to a location finished",
            ["location"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.backup_last_duration = Gauge(
            "simple_tftpd_backup_last_duration_seconds",
            "How long the last snapshot to a location took",
            ["location"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.backup_last_size = Gauge(
            "simple_tftpd_backup_last_size_bytes",
            "Bytes of file content in the last successful snapshot",
            ["location"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.backup_last_uploaded = Gauge(
            "simple_tftpd_backup_last_uploaded_bytes",
            "Bytes the last successful snapshot uploaded (new blobs and the snapshot itself)",
            ["location"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.backup_journal_timestamp = Gauge(
            "simple_tftpd_backup_journal_timestamp_seconds",
            "Every manifest change up to this time is in the location's journal",
            ["location"],
            registry=r,
            multiprocess_mode="livemax",
        )

        # Reads over both boot protocols, TFTP and HTTP. Which machine fetched what is in the
        # transfer log: client addresses and MACs as labels would grow without bound.
        self.fetches = Counter(
            "simple_tftpd_fetches",
            "Reads by protocol (tftp, http), kind (file, generated) and outcome",
            ["protocol", "kind", "outcome"],
            registry=r,
        )
        self.fetched_bytes = Counter(
            "simple_tftpd_fetched_bytes",
            "Bytes sent by protocol (tftp, http) and kind (file, generated)",
            ["protocol", "kind"],
            registry=r,
        )

        # TLS and access control of the management API (set by the process that serves it).
        self.tls_certificate_expiry = Gauge(
            "simple_tftpd_tls_certificate_expiry_timestamp_seconds",
            "When this node's TLS certificate expires (0 without TLS)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.tls_reloads = Counter(
            "simple_tftpd_tls_reloads",
            "Reloads of the TLS files on SIGHUP by outcome (ok, failed)",
            ["outcome"],
            registry=r,
        )
        self.api_refused = Counter(
            "simple_tftpd_api_refused_requests",
            "API requests refused: 401 without an identity, 403 without the role",
            ["status"],
            registry=r,
        )
        # The process's own CPU and memory; the supervisor reports its workers' too.
        r.register(ProcessTreeCollector(lambda: [os.getpid()]))

    def labelled(self, metric: LabelledMetric, *values: str) -> LabelledMetric:
        """`metric.labels(*values)`, looked up once: counted on every transfer, where
        prometheus-client's own lookup (a lock and label checks) costs about 1 us."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)


def render_all_workers(pids: Iterable[int]) -> bytes:
    """The sum over every worker process (multiprocess mode only); `pids` are the daemon's
    processes (supervisor and workers) for the CPU and memory figures."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, os.environ[MULTIPROC_ENV])  # type: ignore[no-untyped-call]
    pid_list = list(pids)
    registry.register(ProcessTreeCollector(lambda: pid_list))
    return generate_latest(registry)


_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessTreeCollector(Collector):
    """CPU, memory and open files of the daemon's processes, added up, under one set of names
    whatever the worker count (prometheus-client's own process metrics see one process).

    Memory is the proportional set size: forked workers share most pages with the supervisor,
    and adding up their resident sizes would count those pages once per worker."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        cpu = memory = fds = processes = 0.0
        for pid in self._pids():
            try:
                cpu += _cpu_seconds(pid)
                memory += _memory_bytes(pid)
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:  # gone (a worker being restarted) or not Linux
                continue
            processes += 1
        yield CounterMetricFamily(
            "simple_tftpd_process_cpu_seconds", "CPU time of the daemon's processes", value=cpu
        )
        yield GaugeMetricFamily(
            "simple_tftpd_process_memory_bytes",
            "Proportional set size (PSS) of the daemon's processes",
            value=memory,
        )
        yield GaugeMetricFamily(
            "simple_tftpd_process_open_fds", "Open file descriptors of the daemon", value=fds
        )
        yield GaugeMetricFamily(
            "simple_tftpd_processes", "Processes of the daemon (supervisor, workers)", processes
        )


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as file:
        # The command name may hold spaces and parentheses; the fields follow the last ")".
        fields = file.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _memory_bytes(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
            for line in file:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass  # kernels before 4.14: fall back to the resident size
    with open(f"/proc/{pid}/statm", "rb") as file:
        return int(file.read().split()[1]) * float(_PAGE)
