"""Where replies come from (standard, port range, single-port), and remap rules."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from simple_tftpd.protocol.packets import (
    Data,
    OAck,
    Opcode,
    Request,
    encode_ack,
    encode_request,
)
from tests.interop.conftest import needs_clients
from tests.support.clients import fetch_tftp_hpa, sha256
from tests.support.daemon import Daemon
from tests.support.udp import Peer

pytestmark = [pytest.mark.interop, needs_clients]


def first_reply_port(daemon: Daemon, name: str = "boot/grub.cfg") -> int:
    """Fetch a one-block file by hand; the port the DATA came from."""
    with Peer() as peer:
        peer.send(encode_request(Request(Opcode.RRQ, name, "octet", {})), daemon.port)
        reply = peer.receive()
        assert reply is not None and isinstance(reply[0], Data)
        peer.send(encode_ack(1), reply[1])
        return reply[1]


@pytest.fixture
def make_daemon(content_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    started: list[Daemon] = []

    def make(config: dict[str, object]) -> Daemon:
        daemon = Daemon(tmp_path_factory.mktemp("modes"), content_root, config).start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def test_standard_mode_answers_from_a_fresh_port(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon({})
    assert first_reply_port(daemon) != daemon.port


def test_port_range_is_respected(make_daemon) -> None:  # type: ignore[no-untyped-def]
    # Above the kernel's ephemeral range (32768-60999), so no client socket holds these ports.
    # Wider than the number of fetches: a session whose last ACK is still queued holds its port.
    daemon = make_daemon({"tftp": {"port_range": {"low": 61100, "high": 61115}}})
    ports = {first_reply_port(daemon) for _ in range(6)}
    assert ports <= set(range(61100, 61116))


def test_single_port_answers_from_the_listening_port(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon({"tftp": {"single_port": True}})
    assert first_reply_port(daemon) == daemon.port


@pytest.mark.parametrize("single_port", [False, True], ids=["standard", "single-port"])
def test_asking_again_after_the_last_block_starts_a_new_transfer_at_once(
    make_daemon,  # type: ignore[no-untyped-def]
    content_root: Path,
    single_port: bool,
) -> None:
    """curl asks for its next file from the same port straight away. If the last ACK of the
    previous transfer is lost (or still queued), the new request must be answered now, not
    after the old transfer's retries or the client's own 3 s retry."""
    daemon = make_daemon({"tftp": {"single_port": single_port, "timeout": 30}})
    expected = (content_root / "boot" / "grub.cfg").read_bytes()
    request = encode_request(Request(Opcode.RRQ, "boot/grub.cfg", "octet", {"blksize": "1468"}))
    with Peer() as peer:
        peer.send(request, daemon.port)
        reply = peer.receive()
        assert reply is not None and isinstance(reply[0], OAck)
        first_tid = reply[1]
        peer.send(encode_ack(0), first_tid)
        reply = peer.receive()
        assert reply is not None and isinstance(reply[0], Data)
        assert reply[0].payload == expected
        # The final ACK is never sent: the next request comes from the same port.
        peer.send(request, daemon.port)
        reply = peer.receive()  # the old transfer would only resend after 30 s
        assert reply is not None and isinstance(reply[0], OAck)
        if not single_port:
            assert reply[1] != first_tid
        peer.send(encode_ack(0), reply[1])
        data = peer.receive()
        assert data is not None and isinstance(data[0], Data)
        assert data[0].payload == expected
        peer.send(encode_ack(1), reply[1])


def test_remap_rule_rewrites_backslashes(
    make_daemon,  # type: ignore[no-untyped-def]
    content_root: Path,
    tmp_path: Path,
) -> None:
    daemon = make_daemon({"tftp": {"remap": [{"pattern": r"\\", "replacement": "/"}]}})
    local = tmp_path / "grub.cfg"
    fetch_tftp_hpa("127.0.0.1", daemon.port, "boot\\grub.cfg", local)
    assert sha256(local) == sha256(content_root / "boot" / "grub.cfg")


def test_serve_with_flags_only(content_root: Path, tmp_path: Path) -> None:
    """The quick-start surface: no config file, flags override the embedded default."""
    import subprocess
    import sys

    from tests.support.daemon import free_port, wait_for

    port, api_port = free_port(), free_port(socket.SOCK_STREAM)
    argv = [
        sys.executable,
        "-m",
        "simple_tftpd",
        "serve",
        "--root",
        str(content_root),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-bind",
        "127.0.0.1",
        "--api-port",
        str(api_port),
        "--single-port",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = Daemon(tmp_path, content_root)
        probe.api_port = api_port
        assert wait_for(lambda: _ready(probe), 20)
        _, status = probe.get_json("/api/v1/status")
        assert status["config"]["single_port"] is True
        assert status["config"]["tftp_port"] == port
        local = tmp_path / "out"
        fetch_tftp_hpa("127.0.0.1", port, "small.bin", local)
        assert sha256(local) == sha256(content_root / "small.bin")
    finally:
        process.terminate()
        assert process.wait(20) == 0


def _ready(daemon: Daemon) -> bool:
    try:
        return daemon.get("/api/v1/ready")[0] == 200
    except OSError:
        return False
