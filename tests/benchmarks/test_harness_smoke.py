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


@pytest.mark.skipif(not shutil.which("atftp") or not shutil.which("curl"), reason="needs clients")
def test_quick_run_reports_no_failures(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/run.py",
            "--quick",
            "--servers",
            "simple-tftpd",
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
    for scenario in ("`big`", "`big-w16`", "`storm`", "`storm-w16`", "`small`"):
        assert scenario in report
    rows = [line for line in report.splitlines() if line.startswith("| simple-tftpd |")]
    # Scenario tables end with a failed/attempted column: five of them, nothing failed.
    failed = [row.rstrip(" |").rsplit("|", 1)[1].strip() for row in rows]
    counts = [cell for cell in failed if "/" in cell]
    assert len(counts) == 5, rows
    assert all(cell.startswith("0/") for cell in counts), rows
