"""The helpers that run on the nodes: the health probe (against a real local daemon) and the
handoff's rules and readiness check."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import handoff, probe
from deploy.rollout import CANARY_SHA256, canary_bytes
from tests.support.daemon import Daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("root")
    (root / "canary.bin").write_bytes(canary_bytes())
    running = Daemon(tmp_path_factory.mktemp("daemon"), root).start()
    try:
        yield running
    finally:
        running.stop()


def run_probe(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = probe.main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_probe_fetches_and_checks_the_digest(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--tftp", "127.0.0.1", "--port", str(daemon.port), "--file", "canary.bin"]
    code, answer = run_probe(capsys, "fetch", *where, "--sha256", CANARY_SHA256)
    assert (code, answer["ok"], answer["bytes"]) == (0, True, len(canary_bytes()))
    code, answer = run_probe(capsys, "fetch", *where, "--sha256", "0" * 64)
    assert (code, answer["error"]) == (1, "sha256 mismatch")
    code, answer = run_probe(capsys, "fetch", *where[:4], "--file", "missing.bin")
    assert code == 1 and "File not found" in str(answer["error"])


def test_probe_counts_running_transfers(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, answer = run_probe(capsys, "sessions", "--api", f"http://127.0.0.1:{daemon.api_port}")
    assert (code, answer) == (0, {"ok": True, "active_sessions": 0})
    code, answer = run_probe(capsys, "sessions", "--api", "http://127.0.0.1:9")
    assert code == 1


def test_handoff_rules_dnat_only_new_requests_from_the_network() -> None:
    rules = handoff.ruleset(69, ["10.0.0.12", "10.0.0.13"])
    assert rules.startswith("table ip simple_tftpd_handoff\ndelete table")
    assert (
        'iifname != "lo" udp dport 69 @th,64,16 { 1, 2 } counter'
        " dnat to numgen inc mod 2 map { 0 : 10.0.0.12, 1 : 10.0.0.13 }" in rules
    )
    assert (
        "ip daddr { 10.0.0.12, 10.0.0.13 } udp dport 69 ct status dnat counter masquerade" in rules
    )


def test_handoff_without_peers_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff, "_nft", lambda script: pytest.fail("nft was called"))
    assert handoff.handoff_on(69, [], "10.0.0.11") == 0


def test_a_held_handoff_survives_a_restart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setattr(handoff, "HOLD", hold)

    def no_subprocess(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise AssertionError("the handoff was ended")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert handoff.off_when_ready(69, "", 5) == 0


def test_readiness_looks_for_the_bound_udp_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert handoff._udp_bound(port)
    assert not handoff._udp_bound(port)


def test_a_handoff_that_cannot_start_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    forwarding = tmp_path / "ip_forward"
    forwarding.write_text("1\n")
    monkeypatch.setattr(handoff, "FORWARDING", forwarding)

    def no_nft(script: str) -> None:
        raise RuntimeError("nft: No such file or directory")

    monkeypatch.setattr(handoff, "_nft", no_nft)
    argv = ["on", "--port", "69", "--peers", "10.0.0.12", "--address", "10.0.0.11"]
    assert handoff.main(argv) == 1
    assert "handoff: not turned on: nft: No such file or directory" in capsys.readouterr().err
    assert handoff.main(["on", "--port", "69", "--peers", "bad", "--address", "x"]) == 1


def test_forwarding_switched_on_by_the_handoff_carries_only_handed_over_flows() -> None:
    assert "chain forward" not in handoff.ruleset(69, ["10.0.0.12"])
    guarded = handoff.ruleset(69, ["10.0.0.12"], guard_forwarding=True)
    assert "type filter hook forward priority filter; policy drop;\n    ct status dnat accept" in (
        guarded
    )
