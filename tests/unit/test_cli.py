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
