"""Admission policy and process signals against real daemons: the access list, the per-client
rate limit and the session cap; SIGTERM drains (and cancels on its timeout), SIGHUP reloads the
config file without disturbing running transfers and keeps the running config if the new one
is invalid."""

from __future__ import annotations

import copy
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simple_tftpd.protocol.packets import (
    Data,
    Error,
    ErrorCode,
    Opcode,
    Request,
    encode_ack,
    encode_error,
    encode_request,
)
from tests.interop.conftest import needs_clients
from tests.support.clients import fetch_curl, sha256
from tests.support.daemon import Daemon, wait_for
from tests.support.files import random_files
from tests.support.udp import Peer

pytestmark = [pytest.mark.interop, needs_clients]

FILES = {
    "one-block.bin": 100,
    "multi.bin": 512 * 6 + 5,
    "slow.bin": 512 * 40 + 123,  # 41 blocks
}

ACTIVE = "simple_tftpd_active_sessions"
ACL_DENIED = "simple_tftpd_acl_denied_requests_total"
RATE_LIMITED = "simple_tftpd_rate_limited_requests_total"
TIMED_OUT = 'simple_tftpd_transfers_total{direction="read",outcome="timeout"}'


@pytest.fixture(scope="module")
def policy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policy-root")
    random_files(root, FILES)
    return root


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def make_daemon(
    tmp_path_factory: pytest.TempPathFactory, policy_root: Path
) -> Iterator[DaemonFactory]:
    """Build (not start) a test's own daemons; each is stopped when the test ends."""
    made: list[Daemon] = []

    def make(config: dict[str, Any] | None = None) -> Daemon:
        daemon = Daemon(tmp_path_factory.mktemp("policy-daemon"), policy_root, config)
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.stop()


def firewall(port: int, rules: list[tuple[str, str]], default: str = "allow") -> dict[str, Any]:
    """A security section with one UDP rule per (action, cidr) on `port`."""
    return {
        "network": {
            "firewall": {
                "default_action": default,
                "rules": [
                    {
                        "name": f"{action}-{i}",
                        "action": action,
                        "protocol": "udp",
                        "ports": [port],
                        "sources": [cidr],
                    }
                    for i, (action, cidr) in enumerate(rules)
                ],
            }
        }
    }


def rrq(name: str) -> bytes:
    return encode_request(Request(Opcode.RRQ, name, "octet", {}))


def first_reply(port: int, name: str, source: str = "127.0.0.1") -> Data | Error:
    """Send one RRQ from `source`; the first packet back. A transfer it started is ended at
    once with an ERROR, so it does not linger until its retries run out."""
    with Peer(source=source) as peer:
        peer.send(rrq(name), port)
        reply = peer.receive()
        assert reply is not None, f"no answer to {source}"
        packet, tid = reply
        if isinstance(packet, Data):
            peer.send(encode_error(ErrorCode.NOT_DEFINED, "test done"), tid)
    assert isinstance(packet, Data | Error), packet
    return packet


def next_data(peer: Peer, block: int, timeout: float = 5.0) -> tuple[Data, int]:
    """The DATA packet `block`, skipping resends of earlier blocks."""
    deadline = time.monotonic() + timeout
    while True:
        reply = peer.receive(max(0.01, deadline - time.monotonic()))
        assert reply is not None, f"no DATA {block} in {timeout}s"
        packet, tid = reply
        assert isinstance(packet, Data), f"expected DATA {block}, got {packet}"
        if packet.block == block:
            return packet, tid
        assert packet.block < block, f"DATA {packet.block} before DATA {block}"


def fetch_lockstep(
    peer: Peer,
    port: int,
    name: str,
    pace: float = 0.0,
    before_ack: Callable[[int], None] | None = None,
) -> bytes:
    """Read `name` with one ACK per block; `before_ack(block)` runs before each ACK."""
    peer.send(rrq(name), port)
    received = bytearray()
    block = 1
    while True:
        packet, tid = next_data(peer, block)
        received += packet.payload
        if before_ack is not None:
            before_ack(block)
        if pace:
            time.sleep(pace)
        peer.send(encode_ack(block), tid)
        if len(packet.payload) < 512:
            return bytes(received)
        block += 1


def assert_error(packet: Data | Error, code: ErrorCode) -> Error:
    assert isinstance(packet, Error), f"expected ERROR {int(code)}, got {packet}"
    assert packet.code == code, packet
    return packet


# --- access list -----------------------------------------------------------------------------


def test_deny_rule_refuses_one_source(make_daemon: DaemonFactory, policy_root: Path) -> None:
    daemon = make_daemon()
    daemon.config["security"] = firewall(daemon.port, [("deny", "127.0.0.2/32")])
    daemon.start()
    before = daemon.metrics().get(ACL_DENIED, 0)
    assert_error(first_reply(daemon.port, "one-block.bin", "127.0.0.2"), ErrorCode.ACCESS_VIOLATION)
    assert daemon.metrics()[ACL_DENIED] == before + 1
    with Peer(source="127.0.0.3") as peer:
        data = fetch_lockstep(peer, daemon.port, "multi.bin")
    assert data == (policy_root / "multi.bin").read_bytes()
    assert daemon.metrics()[ACL_DENIED] == before + 1


def test_default_deny_serves_only_allowed_source(
    make_daemon: DaemonFactory, policy_root: Path
) -> None:
    daemon = make_daemon()
    daemon.config["security"] = firewall(daemon.port, [("allow", "127.0.0.3/32")], "deny")
    daemon.start()
    assert_error(first_reply(daemon.port, "one-block.bin", "127.0.0.4"), ErrorCode.ACCESS_VIOLATION)
    assert_error(first_reply(daemon.port, "one-block.bin", "127.0.0.1"), ErrorCode.ACCESS_VIOLATION)
    assert daemon.metrics()[ACL_DENIED] == 2
    with Peer(source="127.0.0.3") as peer:
        data = fetch_lockstep(peer, daemon.port, "multi.bin")
    assert data == (policy_root / "multi.bin").read_bytes()


# --- rate limit ------------------------------------------------------------------------------


def test_rate_limit_per_source(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(
        {"security": {"network": {"ddos_protection": {"rate_limit": 1, "burst": 3}}}}
    ).start()
    sent = 10
    with Peer(source="127.0.0.5") as peer:
        for i in range(sent):
            peer.send(rrq(f"missing-{i}.bin"), daemon.port)
        replies = []
        while (reply := peer.receive(timeout=0.5)) is not None:
            replies.append(reply[0])
    # A bucket of 3, refilled at 1/s: the burst is answered, the rest dropped silently.
    assert 3 <= len(replies) <= 4, replies
    for packet in replies:
        assert_error(packet, ErrorCode.FILE_NOT_FOUND)
    limited = daemon.metrics()[RATE_LIMITED]
    assert limited >= sent - 4
    assert limited == sent - len(replies)
    # Another source has its own bucket.
    for _ in range(3):
        assert_error(first_reply(daemon.port, "missing.bin", "127.0.0.8"), ErrorCode.FILE_NOT_FOUND)
    assert isinstance(first_reply(daemon.port, "one-block.bin", "127.0.0.7"), Data)
    assert daemon.metrics()[RATE_LIMITED] == limited


# --- session cap -----------------------------------------------------------------------------


def test_session_cap_refuses_then_recovers(make_daemon: DaemonFactory, policy_root: Path) -> None:
    daemon = make_daemon(
        {"tftp": {"timeout": 0.5}, "performance": {"connection_pool": {"max_connections": 2}}}
    ).start()
    before = daemon.metrics().get(TIMED_OUT, 0)
    holders = [Peer(), Peer()]
    try:
        for holder in holders:
            holder.send(rrq("multi.bin"), daemon.port)
            next_data(holder, 1)  # ...and never ACKed
        assert daemon.metrics()[ACTIVE] == 2
        busy = assert_error(first_reply(daemon.port, "one-block.bin"), ErrorCode.NOT_DEFINED)
        assert "busy" in busy.message.lower()
    finally:
        for holder in holders:
            holder.close()
    # The held transfers give up after their retries; then there is room again.
    assert wait_for(lambda: daemon.metrics()[ACTIVE] == 0, 10)
    assert daemon.metrics()[TIMED_OUT] == before + 2
    with Peer() as peer:
        data = fetch_lockstep(peer, daemon.port, "multi.bin")
    assert data == (policy_root / "multi.bin").read_bytes()


# Signals reach one process, or a supervisor that passes them on to its workers.
WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["single-process", "2-workers"])


# --- SIGTERM ---------------------------------------------------------------------------------


@WORKERS
def test_sigterm_drains_running_transfer(
    make_daemon: DaemonFactory, policy_root: Path, workers: int
) -> None:
    daemon = make_daemon(
        {"tftp": {"drain_timeout": 20}, "performance": {"thread_pool": {"workers": workers}}}
    ).start()
    checked = threading.Event()
    reached = threading.Event()
    result: dict[str, Any] = {}

    def before_ack(block: int) -> None:
        if block == 5:
            reached.set()
        if block == 40:  # hold the last ACKs until the checks during the drain are done
            assert checked.wait(10)

    def slow_client() -> None:
        try:
            with Peer() as peer:
                result["data"] = fetch_lockstep(
                    peer, daemon.port, "slow.bin", pace=0.05, before_ack=before_ack
                )
        except BaseException as exc:
            result["error"] = exc
            reached.set()

    client = threading.Thread(target=slow_client, daemon=True)
    client.start()
    try:
        assert reached.wait(10)
        assert "error" not in result, result
        daemon.signal(signal.SIGTERM)
        # Draining: not ready, and a new request is refused while the old one goes on.
        assert wait_for(lambda: daemon.get("/api/v1/ready")[0] == 503, 5)
        status, body = daemon.get_json("/api/v1/ready")
        assert status == 503 and "draining" in body["problems"]
        assert daemon.get_json("/api/v1/status")[1]["draining"] is True
        # With workers, the supervisor is draining before it has told every worker.
        assert wait_for(lambda: daemon.metrics()["simple_tftpd_up"] == 0, 5)
        refused = assert_error(first_reply(daemon.port, "one-block.bin"), ErrorCode.NOT_DEFINED)
        assert "shutting down" in refused.message
        assert daemon.process is not None and daemon.process.poll() is None
    finally:
        checked.set()
        client.join(30)
    assert not client.is_alive()
    assert "error" not in result, result
    assert result["data"] == (policy_root / "slow.bin").read_bytes()
    assert daemon.wait(15) == 0
    log = daemon.log()
    assert any("file=slow.bin" in line and "outcome=ok" in line for line in log.splitlines())
    assert "drain timeout" not in log


@WORKERS
def test_sigterm_drain_timeout_cancels(make_daemon: DaemonFactory, workers: int) -> None:
    # A long tftp.timeout: the transfer can only end by the 1 s drain timeout.
    daemon = make_daemon(
        {
            "tftp": {"drain_timeout": 1, "timeout": 5},
            "performance": {"thread_pool": {"workers": workers}},
        }
    ).start()
    with Peer() as peer:
        peer.send(rrq("multi.bin"), daemon.port)
        _, tid = next_data(peer, 1)
        peer.send(encode_ack(1), tid)
        next_data(peer, 2)  # ...and never ACKed
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        deadline = started + 5
        cancel = None
        while cancel is None and time.monotonic() < deadline:
            reply = peer.receive(timeout=max(0.01, deadline - time.monotonic()))
            assert reply is not None, "no ERROR after the drain timeout"
            if isinstance(reply[0], Error):
                cancel = reply[0]
            else:  # only a resend of block 2 may come first
                assert isinstance(reply[0], Data) and reply[0].block == 2, reply[0]
    assert cancel is not None and cancel.code == ErrorCode.NOT_DEFINED
    assert daemon.wait(5) == 0
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 5
    log = daemon.log()
    assert "drain timeout" in log
    assert any(
        "file=multi.bin" in line and "outcome=cancelled" in line for line in log.splitlines()
    )


# --- SIGHUP ----------------------------------------------------------------------------------


@WORKERS
def test_sighup_reloads_policy_and_keeps_transfers(
    make_daemon: DaemonFactory, policy_root: Path, tmp_path: Path, workers: int
) -> None:
    daemon = make_daemon(
        {"tftp": {"timeout": 1.0}, "performance": {"thread_pool": {"workers": workers}}}
    ).start()
    # The supervisor logs the reload, then each worker as it re-reads the file.
    per_reload = 1 if workers == 1 else 1 + workers
    original = copy.deepcopy(daemon.config)
    assert isinstance(first_reply(daemon.port, "one-block.bin", "127.0.0.6"), Data)

    def reloaded(times: int) -> bool:
        return daemon.log().count("configuration reloaded") == times

    def reload_at(block: int) -> None:
        if block == 3:
            new = copy.deepcopy(original)
            new["security"] = firewall(daemon.port, [("deny", "127.0.0.6/32")])
            daemon.write_config(new)
            daemon.signal(signal.SIGHUP)
            assert wait_for(lambda: reloaded(per_reload), 5), daemon.log()

    # A transfer in progress across the reload, ACKed before and after it.
    with Peer() as peer:
        data = fetch_lockstep(peer, daemon.port, "multi.bin", before_ack=reload_at)
    assert data == (policy_root / "multi.bin").read_bytes()
    assert_error(first_reply(daemon.port, "one-block.bin", "127.0.0.6"), ErrorCode.ACCESS_VIOLATION)

    # An invalid file is rejected and the running config (with the deny rule) stays.
    broken = copy.deepcopy(daemon.config)
    broken["tftp"]["port"] = "x"
    broken["no_such_section"] = {}
    daemon.write_config(broken)
    daemon.signal(signal.SIGHUP)
    assert wait_for(lambda: "keeping the running one" in daemon.log(), 5), daemon.log()
    log = daemon.log()
    assert "tftp.port" in log and "no_such_section" in log
    assert reloaded(per_reload)
    assert daemon.process is not None and daemon.process.poll() is None
    assert daemon.get("/api/v1/ready")[0] == 200
    assert_error(first_reply(daemon.port, "one-block.bin", "127.0.0.6"), ErrorCode.ACCESS_VIOLATION)
    local = tmp_path / "after-reload.bin"
    assert fetch_curl("127.0.0.1", daemon.port, "slow.bin", local) == 0
    assert sha256(local) == sha256(policy_root / "slow.bin")
