"""Hostile input against a running daemon: each case gets the right ERROR or silence, the
daemon keeps serving, and nothing under the root changes."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from simple_tftpd.protocol.packets import (
    Ack,
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
from tests.support.udp import Peer

pytestmark = [pytest.mark.interop, needs_clients]


def tree_digest(root: Path) -> str:
    """Names, kinds and contents of everything under root."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            digest.update(str(path.relative_to(root)).encode())
            if path.is_symlink():
                digest.update(b"->" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def hostile_root(content_root: Path) -> Path:
    (content_root / "link-out").symlink_to("/etc/hostname")
    (content_root / "boot" / "etc-dir").symlink_to("/etc")
    (content_root / "link-in").symlink_to("small.bin")
    return content_root


@pytest.fixture(autouse=True)
def root_unchanged(hostile_root: Path, daemon: Daemon, tmp_path: Path) -> Iterator[None]:
    before = tree_digest(hostile_root)
    yield
    assert tree_digest(hostile_root) == before
    # ...and the daemon still serves a good client.
    local = tmp_path / "after"
    fetch_curl("127.0.0.1", daemon.port, "small.bin", local)
    assert sha256(local) == sha256(hostile_root / "small.bin")


def rrq(name: str, mode: str = "octet", **options: str) -> bytes:
    return encode_request(Request(Opcode.RRQ, name, mode, dict(options)))


def wrq(name: str) -> bytes:
    return encode_request(Request(Opcode.WRQ, name, "octet", {}))


MALFORMED = {
    "empty": b"",
    "one byte": b"\x00",
    "unknown opcode": b"\x00\x09hello\x00",
    "opcode zero": b"\x00\x00",
    "missing NULs": b"\x00\x01small.bin",
    "missing mode NUL": b"\x00\x01small.bin\x00octet",
    "garbage mode": b"\x00\x01small.bin\x00\xff\xfe\x00",
    "mail mode": b"\x00\x01small.bin\x00mail\x00",
    "huge request": b"\x00\x01" + b"A" * 60000 + b"\x00octet\x00",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_illegal_operation(daemon: Daemon, data: bytes) -> None:
    with Peer() as peer:
        peer.send(data, daemon.port)
        reply = peer.receive()
    assert reply is not None
    assert isinstance(reply[0], Error)
    assert reply[0].code == ErrorCode.ILLEGAL_OPERATION


@pytest.mark.parametrize(
    "options",
    [{"blksize": "abc"}, {"blksize": "7"}, {"timeout": "0"}, {"windowsize": "0"}, {"tsize": "-1"}],
)
def test_bad_option_values_get_option_error(daemon: Daemon, options: dict[str, str]) -> None:
    with Peer() as peer:
        peer.send(rrq("small.bin", **options), daemon.port)
        reply = peer.receive()
    assert reply is not None and isinstance(reply[0], Error)
    assert reply[0].code == ErrorCode.OPTION_NEGOTIATION


TRAVERSALS = [
    "../etc/passwd",
    "/../etc/passwd",
    "boot/../../etc/hostname",
    "boot/../../../../../../etc/hostname",
    "..\\..\\etc\\passwd",
    "boot\\..\\..\\etc\\hostname",
    "link-out",
    "boot/etc-dir/hostname",
    "/etc/passwd",
    "boot",
    ".",
]


@pytest.mark.parametrize("name", TRAVERSALS)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_traversal_is_refused(daemon: Daemon, name: str, host: str) -> None:
    with Peer(host) as peer:
        peer.send(rrq(name), daemon.port)
        reply = peer.receive()
    assert reply is not None
    packet = reply[0]
    assert isinstance(packet, Error), f"{name!r} was served"
    assert packet.code in (ErrorCode.FILE_NOT_FOUND, ErrorCode.ACCESS_VIOLATION)
    assert "/etc" not in packet.message


def test_symlink_inside_root_is_served(daemon: Daemon, hostile_root: Path, tmp_path: Path) -> None:
    local = tmp_path / "via-link"
    fetch_curl("127.0.0.1", daemon.port, "link-in", local)
    assert sha256(local) == sha256(hostile_root / "small.bin")


@pytest.mark.parametrize("name", ["outside.bin", "uploads/../escape.bin", "boot/x.bin", "uploadsX"])
def test_upload_outside_prefix_is_refused(daemon: Daemon, name: str) -> None:
    with Peer() as peer:
        peer.send(wrq(name), daemon.port)
        reply = peer.receive()
    assert reply is not None and isinstance(reply[0], Error)
    assert reply[0].code == ErrorCode.ACCESS_VIOLATION


def test_abandoned_upload_leaves_nothing(daemon: Daemon, hostile_root: Path) -> None:
    name = f"uploads/abandoned-{daemon.port}.bin"
    timeout_key = 'simple_tftpd_transfers_total{direction="write",outcome="timeout"}'
    before = daemon.metrics().get(timeout_key, 0)
    with Peer() as peer:
        peer.send(wrq(name), daemon.port)
        reply = peer.receive()
        assert reply is not None and reply[0] == Ack(0)
        peer.send(b"\x00\x03\x00\x01" + b"x" * 512, reply[1])
        assert peer.receive() == (Ack(1), reply[1])
        # Walk away: the daemon gives up after its retries and removes the partial file.
        assert wait_for(lambda: daemon.metrics().get(timeout_key, 0) > before, 15)
    assert not (hostile_root / name).exists()
    assert not [p for p in (hostile_root / "uploads").iterdir() if p.name.startswith(".")]


def test_non_request_to_listener_gets_unknown_tid(daemon: Daemon) -> None:
    with Peer() as peer:
        peer.send(encode_ack(1), daemon.port)
        reply = peer.receive()
        assert reply is not None and isinstance(reply[0], Error)
        assert reply[0].code == ErrorCode.UNKNOWN_TID
        # An ERROR is never answered (no error loops between two servers).
        peer.send(b"\x00\x05\x00\x00oops\x00", daemon.port)
        assert peer.receive(timeout=0.5) is None


def test_stranger_does_not_disturb_a_transfer(daemon: Daemon, hostile_root: Path) -> None:
    expected = (hostile_root / "multiple-512.bin").read_bytes()
    received = bytearray()
    with Peer() as client, Peer() as stranger:
        client.send(rrq("multiple-512.bin"), daemon.port)
        block = 1
        while True:
            reply = client.receive()
            assert reply is not None
            packet, tid = reply
            assert isinstance(packet, Data) and packet.block == block
            received += packet.payload
            # The stranger pokes the transfer's port with a plausible ACK.
            stranger.send(encode_ack(block), tid)
            answer = stranger.receive()
            assert answer is not None and isinstance(answer[0], Error)
            assert answer[0].code == ErrorCode.UNKNOWN_TID
            client.send(encode_ack(block), tid)
            if len(packet.payload) < 512:
                break
            block += 1
    assert bytes(received) == expected


def test_retried_request_starts_one_transfer(daemon: Daemon) -> None:
    before = daemon.metrics()
    key = 'simple_tftpd_transfers_total{direction="read",outcome="ok"}'
    with Peer() as client:
        for _ in range(3):
            client.send(rrq("boot/grub.cfg"), daemon.port)  # one block
        reply = client.receive()
        assert reply is not None and isinstance(reply[0], Data)
        client.send(encode_ack(1), reply[1])
        leftovers = [client.receive(timeout=0.3) for _ in range(3)]
    # At most retransmissions of the same block 1, never a second transfer's DATA.
    assert all(r is None or r == reply for r in leftovers)
    after = daemon.metrics()
    assert after[key] - before.get(key, 0) == 1
    assert after["simple_tftpd_active_sessions"] == 0


def test_random_garbage_barrage(daemon: Daemon) -> None:
    rng = random.Random(1350)
    # From its own address: the rate limit it trips must not hit the other tests' client.
    with Peer(source="127.0.0.9") as peer:
        for _ in range(2000):
            size = rng.choice([0, 1, 2, 3, 4, 5, 20, 516, 1500, 9000])
            opcode = rng.choice(
                [
                    b"",
                    b"\x00\x01",
                    b"\x00\x02",
                    b"\x00\x03",
                    b"\x00\x04",
                    b"\x00\x05",
                    b"\x00\x06",
                    b"\x00\x07",
                ]
            )
            peer.send(opcode + rng.randbytes(size), daemon.port)
    status, _ = daemon.get("/api/v1/health")
    assert status == 200
