"""Cluster event keys: events recorded within one millisecond (site sync applies entries that
fast) must not overwrite each other, and keys must sort in the order events happened."""

from __future__ import annotations

import json
from pathlib import Path

from simple_tftpd.cluster.node import ClusterNode
from simple_tftpd.config import Config
from simple_tftpd.metrics import Metrics


def test_events_of_one_millisecond_keep_distinct_keys_in_order(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "node": {"node_id": "node0", "cluster_id": "site-a"},
            "tftp": {"root": str(tmp_path / "root")},
            "api": {"token": "test-admin-token-0123456789"},
            "clustering": {
                "enabled": True,
                "etcd_endpoints": ["127.0.0.1:2379"],  # never contacted here
                "state_dir": str(tmp_path / "state"),
                "advertise": "127.0.0.1:8080",
            },
        }
    )
    node = ClusterNode(config, Metrics())
    records = [node._event_record("sitesync_stored", f"batch/{i:03d}.bin") for i in range(500)]
    keys = [key for key, _ in records]
    assert len(set(keys)) == len(keys)
    assert sorted(keys) == keys
    assert all(key.startswith(node.keys.events) for key in keys)
    details = [json.loads(value)["detail"] for _, value in records]
    assert details == [f"batch/{i:03d}.bin" for i in range(500)]
