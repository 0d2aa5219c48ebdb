"""A seconds-long run of the benchmark harness against simple-tftpd alone: the harness
starts the daemon, drives real clients, verifies bytes and writes its report. No timings
are asserted; the report's numbers are for docs/benchmarks.md, not for tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


needs_clients = pytest.mark.skipif(
    not shutil.which("atftp") or not shutil.which("curl"), reason="needs clients"
)


def quick_run(tmp_path: Path, server: str, scenarios: list[str]) -> list[str]:
    """The failed/attempted cell of each scenario table for `server`, after a quick run."""
    out = tmp_path / "bench.md"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/run.py",
            "--quick",
            "--servers",
            server,
            "--scenarios",
            ",".join(scenarios),
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = out.read_text()
    for scenario in scenarios:
        assert f"`{scenario}`" in report
    rows = [line for line in report.splitlines() if line.startswith(f"| {server} |")]
    # Scenario tables end with a failed/attempted column.
    failed = [row.rstrip(" |").rsplit("|", 1)[1].strip() for row in rows]
    return [cell for cell in failed if "/" in cell]


@needs_clients
def test_quick_run_reports_no_failures(tmp_path: Path) -> None:
    counts = quick_run(tmp_path, "simple-tftpd", ["big", "big-w16", "storm", "storm-w16", "small"])
    assert len(counts) == 5, counts
    assert all(cell.startswith("0/") for cell in counts), counts


@needs_clients
@pytest.mark.skipif(not shutil.which("cc"), reason="the reference is built with cc")
def test_epoll_reference_is_built_and_serves_verified_bytes(tmp_path: Path) -> None:
    """The C reference is a yardstick in the report: it must really serve the files (the
    harness checks every download's sha256), or the floor it shows would be fiction."""
    counts = quick_run(tmp_path, "epoll-reference", ["big", "storm", "small"])
    assert len(counts) == 3, counts
    assert all(cell.startswith("0/") and not cell.endswith("/0") for cell in counts), counts
