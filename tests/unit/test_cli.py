"""The command line surface: check-config, version, and serve's refusal of bad input."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from simple_tftpd import __version__
from simple_tftpd.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "datacenter.json"


def test_version() -> None:
    result = CliRunner().invoke(main, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__


def test_check_config_accepts_the_example() -> None:
    result = CliRunner().invoke(main, ["check-config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_check_config_names_every_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tftp": {"port": 70000, "prot": 1}, "nodes": []}))
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 1
    assert "tftp.port" in result.output
    assert "tftp.prot: unknown key" in result.output
    assert "nodes: unknown key" in result.output


def test_serve_refuses_bad_config_before_binding(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tftp": {"max_blksize": 4}}))
    result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert result.exit_code == 2
    assert "tftp.max_blksize" in result.output


def test_serve_refuses_a_bad_flag_value(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--root", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2
    assert "tftp.port" in result.output


def test_serve_refuses_a_missing_root(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--root", str(tmp_path / "nope"), "--port", "6969"])
    assert result.exit_code == 2
    assert "tftp.root" in result.output


def test_serving_does_not_load_the_cluster_backup_or_crypto_libraries() -> None:
    """Every worker process carries what `serve` imported before the fork: grpc (etcd), obstore,
    cryptography, Jinja and PyYAML belong to commands and features that are not on, so they
    stay out."""
    import subprocess
    import sys

    probe = (
        "import sys, simple_tftpd.cli, simple_tftpd.daemon, simple_tftpd.server;"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "click" in loaded and "aiohttp" in loaded  # the probe saw the serving stack
    assert not loaded & {"grpc", "aetcd", "obstore", "cryptography", "jinja2", "yaml"}


def test_lazy_commands_are_listed_and_run() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("cluster-status", "site-sync-now", "backup", "files", "serve"):
        assert name in result.output
    result = CliRunner().invoke(main, ["backup", "--help"])
    assert result.exit_code == 0 and "restore" in result.output
