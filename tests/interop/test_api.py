"""The management API of a running daemon: health, readiness, status and Prometheus metrics,
and metrics that move with real transfers; plus the per-transfer log in text and JSON form."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from simple_tftpd import __version__
from simple_tftpd.protocol.packets import (
    Data,
    Error,
    ErrorCode,
    Opcode,
    Request,
    encode_ack,
    encode_request,
)
from tests.interop.conftest import needs_clients
from tests.support.clients import fetch_curl, sha256
from tests.support.daemon import Daemon, wait_for
from tests.support.files import random_files
from tests.support.udp import Peer

pytestmark = [pytest.mark.interop, needs_clients]

TOKEN = "api-token-never-shown-0123456789"
NODE_ID = "api-test-node"
TIMEOUT = 0.2  # tftp.timeout of the API daemon: abandoned transfers end quickly
UNVERIFIED_RETRIES = 2  # resends to a peer that never answered (ddos_protection default)
RETRIES = 3  # tftp.retries of the API daemon: resends to a peer that has answered

FILES = {
    "fetched.bin": 3000,
    "cached.bin": 5000,
    "held.bin": 512 * 8 + 17,
    "abandoned.bin": 512 * 4,
    "silent.bin": 512 * 20 + 17,  # long enough for the compiled path (PUMP_MIN_BLOCKS)
    "json.bin": 1500,
}

OK = 'simple_tftpd_transfers_total{direction="read",outcome="ok"}'
TIMED_OUT = 'simple_tftpd_transfers_total{direction="read",outcome="timeout"}'
SENT = "simple_tftpd_sent_bytes_total"
DURATION_COUNT = 'simple_tftpd_transfer_duration_seconds_count{direction="read"}'
HITS = "simple_tftpd_cache_hits_total"
MISSES = "simple_tftpd_cache_misses_total"
ACTIVE = "simple_tftpd_active_sessions"
RETRANSMITS = "simple_tftpd_retransmits_total"
NOT_FOUND_SENT = 'simple_tftpd_errors_sent_total{code="1"}'


@pytest.fixture(scope="module")
def api_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api-root")
    random_files(root, FILES)
    return root


@pytest.fixture(scope="module")
def api_daemon(tmp_path_factory: pytest.TempPathFactory, api_root: Path) -> Iterator[Daemon]:
    with Daemon(
        tmp_path_factory.mktemp("api-daemon"),
        api_root,
        {
            "node": {"node_id": NODE_ID},
            "tftp": {"timeout": TIMEOUT, "retries": RETRIES},
            "api": {"token": TOKEN},
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def json_daemon(tmp_path_factory: pytest.TempPathFactory, api_root: Path) -> Iterator[Daemon]:
    with Daemon(
        tmp_path_factory.mktemp("json-daemon"), api_root, {"logging": {"format": "json"}}
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def idle_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test leaves no transfer running, so the next one's metric deltas are its own."""
    yield
    if "api_daemon" in request.fixturenames:
        daemon: Daemon = request.getfixturevalue("api_daemon")
        assert wait_for(lambda: daemon.metrics()[ACTIVE] == 0, 10)


def rrq(name: str) -> bytes:
    return encode_request(Request(Opcode.RRQ, name, "octet", {}))


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


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def transfer_lines(daemon: Daemon, name: str) -> list[str]:
    return [
        line
        for line in daemon.log().splitlines()
        if "event=transfer" in line and f"file={name} " in line
    ]


def transfer_line(daemon: Daemon, name: str) -> str:
    """The one transfer log line for `name` (transfer lines are written in batches)."""
    assert wait_for(lambda: transfer_lines(daemon, name) != [], 5), daemon.log()
    [line] = transfer_lines(daemon, name)
    return line


def json_records(daemon: Daemon) -> list[dict[str, Any]]:
    records = []
    for line in daemon.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "transfer":
            records.append(record)
    return records


def keys_of(value: object) -> set[str]:
    if isinstance(value, dict):
        return {str(k) for k in value} | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


# --- endpoints -------------------------------------------------------------------------------


def test_health(api_daemon: Daemon) -> None:
    assert api_daemon.get_json("/api/v1/health") == (200, {"status": "ok"})


def test_ready(api_daemon: Daemon) -> None:
    status, body = api_daemon.get_json("/api/v1/ready")
    assert status == 200
    assert body["status"] == "ready"


def test_status_reports_the_node_without_secrets(api_daemon: Daemon, api_root: Path) -> None:
    status, raw = api_daemon.get("/api/v1/status")
    assert status == 200
    assert TOKEN.encode() not in raw
    body = json.loads(raw)
    assert body["version"] == __version__
    assert body["node_id"] == NODE_ID
    assert isinstance(body["uptime_seconds"], int | float) and body["uptime_seconds"] >= 0
    assert body["active_sessions"] == 0
    assert body["draining"] is False
    assert body["tftp_port"] == api_daemon.port
    assert body["per_block_path"] == "compiled"  # `make test` builds simple_tftpd._fastpath
    config = body["config"]
    assert config["node_id"] == NODE_ID
    assert config["tftp_port"] == api_daemon.port
    assert config["tftp_root"] == str(api_root)
    assert not any("token" in key.lower() for key in keys_of(body))


def test_uptime_grows(api_daemon: Daemon) -> None:
    first = api_daemon.get_json("/api/v1/status")[1]["uptime_seconds"]
    assert wait_for(lambda: api_daemon.get_json("/api/v1/status")[1]["uptime_seconds"] > first, 5)


def test_prometheus_text(api_daemon: Daemon) -> None:
    url = f"http://127.0.0.1:{api_daemon.api_port}/api/v1/metrics/prometheus"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    assert content_type.split(";")[0] == CONTENT_TYPE_LATEST.split(";")[0] == "text/plain"
    assert "# TYPE simple_tftpd_transfers_total counter" in text
    assert "# TYPE simple_tftpd_active_sessions gauge" in text
    assert "# TYPE simple_tftpd_transfer_duration_seconds histogram" in text
    samples = api_daemon.metrics()
    assert samples["simple_tftpd_up"] == 1
    assert samples[ACTIVE] == 0


# --- metrics follow transfers ----------------------------------------------------------------


def test_successful_fetch_moves_metrics(api_daemon: Daemon, api_root: Path, tmp_path: Path) -> None:
    size = FILES["fetched.bin"]
    before = api_daemon.metrics()
    local = tmp_path / "fetched.bin"
    assert fetch_curl("127.0.0.1", api_daemon.port, "fetched.bin", local) == 0
    assert sha256(local) == sha256(api_root / "fetched.bin")
    # The daemon closes the session on curl's last ACK, which may land just after curl exits.
    assert wait_for(lambda: delta(before, api_daemon.metrics(), OK) == 1, 5)
    after = api_daemon.metrics()
    assert delta(before, after, SENT) == size
    assert delta(before, after, DURATION_COUNT) == 1
    assert delta(before, after, MISSES) == 1
    assert delta(before, after, HITS) == 0
    assert after[ACTIVE] == 0
    line = transfer_line(api_daemon, "fetched.bin")
    assert "outcome=ok" in line and f"bytes={size}" in line


def test_second_fetch_is_a_cache_hit(api_daemon: Daemon, api_root: Path, tmp_path: Path) -> None:
    expected = sha256(api_root / "cached.bin")
    for attempt, (misses, hits) in enumerate([(1, 0), (0, 1)]):
        before = api_daemon.metrics()
        local = tmp_path / f"cached-{attempt}.bin"
        assert fetch_curl("127.0.0.1", api_daemon.port, "cached.bin", local) == 0
        assert sha256(local) == expected
        assert wait_for(lambda before=before: delta(before, api_daemon.metrics(), OK) == 1, 5)
        after = api_daemon.metrics()
        assert (delta(before, after, MISSES), delta(before, after, HITS)) == (misses, hits)
        assert delta(before, after, SENT) == FILES["cached.bin"]
    assert api_daemon.get_json("/api/v1/status")[1]["cache"]["entries"] >= 1


def test_not_found_counts_an_error_and_logs_a_refusal(api_daemon: Daemon) -> None:
    name = f"missing-{api_daemon.port}.bin"
    before = api_daemon.metrics()
    with Peer() as peer:
        peer.send(rrq(name), api_daemon.port)
        reply = peer.receive()
    assert reply is not None and isinstance(reply[0], Error)
    assert reply[0].code == ErrorCode.FILE_NOT_FOUND
    after = api_daemon.metrics()
    assert delta(before, after, NOT_FOUND_SENT) == 1
    assert delta(before, after, OK) == 0
    assert after[ACTIVE] == 0
    line = transfer_line(api_daemon, name)
    assert "outcome=refused" in line


def test_active_sessions_follow_a_held_transfer(api_daemon: Daemon, api_root: Path) -> None:
    expected = (api_root / "held.bin").read_bytes()
    received = bytearray()
    with Peer() as peer:
        peer.send(rrq("held.bin"), api_daemon.port)
        block = 1
        packet, tid = next_data(peer, block)
        # Not ACKed yet: the transfer is open.
        assert api_daemon.metrics()[ACTIVE] == 1
        assert api_daemon.get_json("/api/v1/status")[1]["active_sessions"] == 1
        while True:
            received += packet.payload
            peer.send(encode_ack(block), tid)
            if len(packet.payload) < 512:
                break
            block += 1
            packet, _ = next_data(peer, block)
    assert bytes(received) == expected
    assert wait_for(lambda: api_daemon.metrics()[ACTIVE] == 0, 5)
    assert api_daemon.get_json("/api/v1/status")[1]["active_sessions"] == 0


def data_until_silence(peer: Peer, retries: int) -> list[Data]:
    """Every DATA the daemon sends until it falls silent (it gives up after `retries`)."""
    received = []
    deadline = time.monotonic() + 10 * TIMEOUT * (retries + 1)
    while time.monotonic() < deadline:
        reply = peer.receive(timeout=4 * TIMEOUT)
        if reply is None:
            break
        assert isinstance(reply[0], Data), reply
        received.append(reply[0])
    return received


def test_unacknowledged_data_is_retransmitted(api_daemon: Daemon) -> None:
    before = api_daemon.metrics()
    with Peer() as peer:
        peer.send(rrq("abandoned.bin"), api_daemon.port)
        # Never ACK: the daemon resends block 1 on each timeout, then gives up.
        copies = data_until_silence(peer, UNVERIFIED_RETRIES)
    assert wait_for(lambda: delta(before, api_daemon.metrics(), TIMED_OUT) == 1, 5)
    after = api_daemon.metrics()
    assert [copy.block for copy in copies] == [1] * (1 + UNVERIFIED_RETRIES)
    assert delta(before, after, RETRANSMITS) == UNVERIFIED_RETRIES
    assert after[ACTIVE] == 0
    line = transfer_line(api_daemon, "abandoned.bin")
    assert "outcome=timeout" in line and f"retransmits={UNVERIFIED_RETRIES}" in line


def test_a_client_silent_mid_transfer_gets_the_last_block_sent_again(
    api_daemon: Daemon, api_root: Path
) -> None:
    """ACKs 1-3 are served by the compiled path; the retransmit timer, in Python, must resend
    what it sent last (block 4), at the deadline of the last ACK, then give up."""
    assert "compiled per-block path" in api_daemon.log()
    expected = (api_root / "silent.bin").read_bytes()
    before = api_daemon.metrics()
    with Peer() as peer:
        peer.send(rrq("silent.bin"), api_daemon.port)
        packet, tid = next_data(peer, 1)
        for block in (1, 2, 3):
            peer.send(encode_ack(block), tid)
            packet, _ = next_data(peer, block + 1)
        assert packet.payload == expected[3 * 512 : 4 * 512]
        copies = data_until_silence(peer, RETRIES)
    assert wait_for(lambda: delta(before, api_daemon.metrics(), TIMED_OUT) == 1, 5)
    assert {(copy.block, copy.payload) for copy in copies} == {(4, packet.payload)}
    assert len(copies) == RETRIES  # a peer that answered gets the full retries
    line = transfer_line(api_daemon, "silent.bin")
    assert "outcome=timeout" in line and f"retransmits={RETRIES}" in line
    assert f"bytes={3 * 512} " in line


# --- JSON transfer log -----------------------------------------------------------------------


def test_json_transfer_log(json_daemon: Daemon, api_root: Path, tmp_path: Path) -> None:
    local = tmp_path / "json.bin"
    assert fetch_curl("127.0.0.1", json_daemon.port, "json.bin", local) == 0
    assert sha256(local) == sha256(api_root / "json.bin")
    missing = f"missing-{json_daemon.port}.bin"
    with Peer() as peer:
        peer.send(rrq(missing), json_daemon.port)
        reply = peer.receive()
    assert reply is not None and isinstance(reply[0], Error)

    def by_file() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for record in json_records(json_daemon):
            out.setdefault(record["file"], []).append(record)
        return out

    assert wait_for(lambda: {"json.bin", missing} <= by_file().keys(), 5), json_daemon.log()
    records = by_file()
    [ok] = records["json.bin"]
    assert ok["outcome"] == "ok"
    assert ok["bytes"] == FILES["json.bin"]
    assert ok["direction"] == "read"
    assert "127.0.0.1" in ok["client"]
    assert isinstance(ok["duration_s"], float) and 0 <= ok["duration_s"] < 60
    [refused] = records[missing]
    assert refused["outcome"] == "refused"
    assert refused["bytes"] == 0
    assert "127.0.0.1" in refused["client"]
    assert "duration_s" in refused


def test_json_log_lines_are_all_json(json_daemon: Daemon) -> None:
    lines = [line for line in json_daemon.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


# --- several workers: the supervisor's API adds them up --------------------------------------


@pytest.fixture(scope="module")
def supervisor_daemon(tmp_path_factory: pytest.TempPathFactory, api_root: Path) -> Iterator[Daemon]:
    with Daemon(
        tmp_path_factory.mktemp("supervisor-daemon"),
        api_root,
        {
            "api": {"token": TOKEN},
            "logging": {"format": "json"},  # transfer records carry the worker's pid
            "performance": {"thread_pool": {"workers": 2}},
        },
    ) as running:
        yield running


def test_supervisor_sums_worker_metrics(supervisor_daemon: Daemon, api_root: Path) -> None:
    daemon = supervisor_daemon
    status, raw = daemon.get("/api/v1/status")
    assert status == 200 and TOKEN.encode() not in raw
    body = json.loads(raw)
    assert body["workers"] == 2 and len(body["worker_pids"]) == 2
    assert body["active_sessions"] == 0
    assert daemon.metrics()["simple_tftpd_up"] == 2
    before = daemon.metrics()
    expected = (api_root / "json.bin").read_bytes()

    def worker_pids() -> set[int]:
        return {r["pid"] for r in json_records(daemon) if r["file"] == "json.bin" and "pid" in r}

    # The kernel hashes each client port to a worker: fetch until both workers have served.
    fetches = 0
    while fetches < 40 and len(worker_pids()) < 2:
        with Peer() as peer:
            peer.send(rrq("json.bin"), daemon.port)
            received = bytearray()
            block = 1
            while True:
                packet, tid = next_data(peer, block)
                received += packet.payload
                peer.send(encode_ack(block), tid)
                if len(packet.payload) < 512:
                    break
                block += 1
        assert bytes(received) == expected
        fetches += 1
        # Wait for this transfer's record (records are written in batches).
        assert wait_for(
            lambda n=fetches: sum(r["file"] == "json.bin" for r in json_records(daemon)) >= n, 5
        ), daemon.log()
    assert worker_pids() <= set(body["worker_pids"])
    assert len(worker_pids()) == 2
    assert wait_for(lambda: delta(before, daemon.metrics(), OK) == fetches, 5)
    after = daemon.metrics()
    assert delta(before, after, SENT) == fetches * len(expected)
    assert delta(before, after, DURATION_COUNT) == fetches
    assert after[ACTIVE] == 0
    assert daemon.get_json("/api/v1/status")[1]["active_sessions"] == 0

    # A held transfer shows in the sum, whichever worker holds it.
    held = (api_root / "held.bin").read_bytes()
    received = bytearray()
    with Peer() as peer:
        peer.send(rrq("held.bin"), daemon.port)
        block = 1
        packet, tid = next_data(peer, block)
        assert daemon.metrics()[ACTIVE] == 1
        assert daemon.get_json("/api/v1/status")[1]["active_sessions"] == 1
        while True:
            received += packet.payload
            peer.send(encode_ack(block), tid)
            if len(packet.payload) < 512:
                break
            block += 1
            packet, _ = next_data(peer, block)
    assert bytes(received) == held
    assert wait_for(lambda: daemon.metrics()[ACTIVE] == 0, 5)
