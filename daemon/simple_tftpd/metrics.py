"""Prometheus metrics of one daemon, in a registry of its own (tests run several daemons).

With several worker processes, prometheus-client's multiprocess mode is on (the supervisor
sets PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client): each worker writes
its values to files there and the supervisor's API adds them up. Gauges say how.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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

    def render(self) -> bytes:
        return generate_latest(self.registry)


def render_all_workers() -> bytes:
    """The sum over every worker process (multiprocess mode only)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, os.environ[MULTIPROC_ENV])  # type: ignore[no-untyped-call]
    return generate_latest(registry)
