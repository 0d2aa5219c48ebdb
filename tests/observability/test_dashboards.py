"""The Grafana dashboard and the Prometheus alert rules in templates/: their shape, promtool's
verdict, and that every metric they query is one a live daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import Site
from tests.support.daemon import Daemon, free_port, wait_for
from tests.support.etcd import EtcdCluster, etcd_available

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "templates" / "grafana" / "simple-tftpd.json"
ALERTS = ROOT / "templates" / "prometheus" / "alerts.yml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")
AREAS = [
    "Cluster health",
    "Node status",
    "Performance metrics",
    "Multi-site sync status",
    "Resource utilization",
]
# Series Prometheus makes itself for every target; no exporter has them.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
REQUIRED_ALERTS = {
    "SimpleTftpdNodeDown",
    "SimpleTftpdNoLeader",
    "SimpleTftpdReplicationLag",
    "SimpleTftpdSiteSyncLag",
    "SimpleTftpdSiteSyncStale",
    "SimpleTftpdBackupOverdue",
    "SimpleTftpdHighErrorRate",
    "SimpleTftpdRateLimitSpike",
}
SYNC_TOKEN = "obs-site-sync-token-0123456"

# --- PromQL: which metric names an expression reads ----------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A name not glued to a digit or a dot (so no "5m" or "1e3"), and whether a call follows.
_NAMES = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\(?)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    text = _STRINGS.sub('""', expr)
    for pattern in (_VARIABLES, _MATCHERS, _RANGES, _LABEL_LISTS):
        text = pattern.sub(" ", text)
    return {
        name for name, call in _NAMES.findall(text) if not call and name.lower() not in _KEYWORDS
    }


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{node=~"$node", x="y{z}"}'
        "[$__rate_interval]))) / on (site) group_left (node) b_total offset 5m"
        ' and (c > 0) - time() < 14 * 86400 unless d{e="f"} == bool 1e3'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}
    assert metric_names("sum without (peer) (rate(x[5m]))") == {"x"}


# --- the files -----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every panel and every templating query."""
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            assert inner, variable
            queries.append((f"${variable['name']}", inner.group(1)))
    return queries


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def queried_names() -> dict[str, set[str]]:
    """metric name -> where it is queried."""
    used: dict[str, set[str]] = {}
    for where, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"panel {where!r}")
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    return used


def test_the_dashboard_shows_the_five_areas() -> None:
    board = dashboard()
    panels = board["panels"]
    assert [p["title"] for p in panels if p["type"] == "row"] == AREAS
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    area, per_area = "", dict.fromkeys(AREAS, 0)
    for panel in panels:
        if panel["type"] == "row":
            area = panel["title"]
            continue
        per_area[area] += 1
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        assert panel.get("description"), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    assert all(count >= 4 for count in per_area.values()), per_area
    assert board["uid"] == "simple-tftpd"
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "site", "node"}


def test_every_queried_name_is_a_daemon_metric() -> None:
    # Catches a typo before any daemon runs: names outside the daemon's namespace.
    strangers = set(queried_names()) - PROMETHEUS_SERIES
    assert all(name.startswith("simple_tftpd_") for name in strangers), strangers


def test_the_alert_rules_cover_the_guide() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is installed by make test")
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_fire_when_they_should() -> None:
    done = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr


# --- a live daemon with clustering and site sync -------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if not etcd_available():
        pytest.skip("etcd-server is installed by make test")
    workdir = tmp_path_factory.mktemp("observability")
    etcd = EtcdCluster(workdir, size=1).start()
    site = Site(workdir, etcd, "obs-site")
    try:
        node = site.create_node()
        # A peer site nobody answers for: the leader's sync rounds fail, which is what makes
        # the per-peer series appear.
        dead_peer = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
        node.config["multi_site"] = {
            "enabled": True,
            "site_id": "obs-site",
            "sync": {
                "enabled": True,
                "token": SYNC_TOKEN,
                "interval_seconds": 0.2,
                "peer_sites": [{"site_id": "far-away", "endpoint": dead_peer}],
            },
        }
        node.config["api"]["metrics_port"] = free_port(socket.SOCK_STREAM)
        node.start()
        assert wait_for(lambda: site.status(node).get("leader") == "node0", 20)
        errors = 'simple_tftpd_sitesync_errors_total{peer="far-away"}'
        assert wait_for(lambda: node.metrics().get(errors, 0) > 0, 20), node.log()[-2000:]
        yield node
    finally:
        site.stop()
        etcd.stop()


_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def scrape(daemon: Daemon) -> tuple[set[str], set[str]]:
    """(every sample name the output declares, the names that have samples now), from the
    plain metrics listener, as Prometheus scrapes it."""
    port = daemon.config["api"]["metrics_port"]
    url = f"http://127.0.0.1:{port}/api/v1/metrics/prometheus"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    declared, sampled = set(), set()
    for family in text_string_to_metric_families(text):
        # A labelled metric nobody has set yet (a backup location before its first run) has
        # no samples but is declared by its HELP and TYPE lines.
        declared |= {family.name + s for s in _SAMPLE_SUFFIXES.get(family.type, ("",))}
        sampled |= {sample.name for sample in family.samples}
    return declared | sampled, sampled


def test_every_metric_a_panel_or_rule_queries_is_exported(live: Daemon) -> None:
    declared, sampled = scrape(live)
    used = queried_names()
    missing = {name: sorted(where) for name, where in used.items() if name not in declared}
    missing = {k: v for k, v in missing.items() if k not in PROMETHEUS_SERIES}
    assert not missing, json.dumps(missing, indent=2)
    # Clustering and site sync were really on: their series carry values, not just TYPE lines.
    for name in (
        "simple_tftpd_cluster_members",
        "simple_tftpd_cluster_is_leader",
        "simple_tftpd_sitesync_errors_total",
        "simple_tftpd_sitesync_lag_entries",
        "simple_tftpd_process_cpu_seconds_total",
        "simple_tftpd_process_memory_bytes",
    ):
        assert name in sampled, name
    samples = live.metrics()
    assert samples["simple_tftpd_cluster_is_leader"] == 1
    assert samples["simple_tftpd_process_memory_bytes"] > 1 << 20
