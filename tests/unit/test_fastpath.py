"""The compiled per-block path (simple_tftpd._fastpath.ReadPump) against the pure core.

A pump and a pure ReadTransfer over the same content get the same ACKs; the pump's are real
datagrams on loopback. Whatever the pump sends must be what the pure transfer returns, and
whatever it does not serve itself (the final ACK, errors, strangers, read errors) must reach
the fallback untouched. `make test` builds the module, so a failed build fails here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simple_tftpd._fastpath import ReadPump
from simple_tftpd.content.store import BytesSource, FileSource
from simple_tftpd.protocol.packets import ErrorCode, encode_ack, encode_error
from simple_tftpd.protocol.transfer import Limits, Parameters, ReadTransfer

RECV_SIZE = 65536


@dataclass
class Rig:
    """A transfer socket served by a pump, its peer, and what reached the fallback."""

    server: socket.socket
    client: socket.socket
    recv_buffer: bytearray = field(default_factory=lambda: bytearray(RECV_SIZE))
    fallbacks: list[tuple[bytes, object]] = field(default_factory=list)
    answer: bool = True

    def fallback(self, size: int, stranger: object) -> bool:
        self.fallbacks.append((bytes(self.recv_buffer[:size]), stranger))
        return self.answer

    def pump_for(
        self,
        transfer: ReadTransfer,
        source: BytesSource | FileSource,
        client: socket.socket | None = None,
        **overrides: Any,
    ) -> ReadPump:
        """A pump serving `transfer` from where it is to `client` (default: self.client),
        with any argument replaced by `overrides`."""
        acked, sent = transfer.position()
        host, port = (client or self.client).getsockname()[:2]
        arguments: dict[str, Any] = {
            "sock": self.server.fileno(),
            "family": self.server.family,
            "host": host,
            "port": port,
            "flowinfo": 0,
            "scope_id": 0,
            "content": source.view if isinstance(source, BytesSource) else b"",
            "file": source.fd if isinstance(source, FileSource) else -1,
            "size": source.size,
            "blksize": transfer.params.blksize,
            "last_block": transfer.last_block,
            "acked": acked,
            "sent": sent,
            "recv_buffer": self.recv_buffer,
            "fallback": self.fallback,
        }
        return ReadPump(**(arguments | overrides))

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.client.recv(RECV_SIZE))
            except BlockingIOError:
                return out


def _pair(family: socket.AddressFamily, host: str) -> tuple[socket.socket, socket.socket]:
    server = socket.socket(family, socket.SOCK_DGRAM)
    client = socket.socket(family, socket.SOCK_DGRAM)
    for sock in (server, client):
        sock.bind((host, 0))
        sock.setblocking(False)
    client.connect(server.getsockname())
    return server, client


@pytest.fixture
def rig() -> Iterator[Rig]:
    server, client = _pair(socket.AF_INET, "127.0.0.1")
    with server, client:
        yield Rig(server, client)


def _transfer(source: BytesSource | FileSource, blksize: int, oack: bool) -> ReadTransfer:
    options = {"blksize": str(blksize)} if oack else {}
    transfer = ReadTransfer(source, Limits(), Parameters(blksize=blksize), options)
    transfer.start(0.0)
    return transfer


def _file_source(tmp_path: Path, data: bytes) -> FileSource:
    path = tmp_path / "content.bin"
    path.write_bytes(data)
    return FileSource(os.open(path, os.O_RDONLY), len(data))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(0, 5000),
    blksize=st.sampled_from([8, 9, 512, 1024, 1468]),
    oack=st.booleans(),
    in_file=st.booleans(),
    steps=st.lists(
        st.tuples(st.sampled_from(["next", "same", "stale", "any"]), st.integers(0, 0xFFFF)),
        max_size=80,
    ),
    data=st.data(),
)
def test_pump_sends_what_the_pure_core_sends(
    rig: Rig,
    tmp_path: Path,
    size: int,
    blksize: int,
    oack: bool,
    in_file: bool,
    steps: list[tuple[str, int]],
    data: st.DataObject,
) -> None:
    content = data.draw(st.binary(min_size=size, max_size=size))
    make = (lambda: _file_source(tmp_path, content)) if in_file else (lambda: BytesSource(content))
    pure_source, pump_source = make(), make()
    pure, twin = _transfer(pure_source, blksize, oack), _transfer(pump_source, blksize, oack)
    rig.fallbacks.clear()
    rig.received()
    pump = rig.pump_for(twin, pump_source)
    try:
        for kind, wire in steps:
            acked, sent = pure.position()
            wire = {"next": sent, "same": acked, "stale": acked - 1, "any": wire}[kind] & 0xFFFF
            expected = pure.on_ack(wire, 1.0)
            rig.client.send(encode_ack(wire))
            pump()
            if pure.finished:
                # The final ACK is Python's: it reaches the fallback as it came.
                assert rig.fallbacks == [(encode_ack(wire), None)]
                assert rig.received() == []
                break
            assert rig.fallbacks == []
            assert rig.received() == expected
            assert (pump.acked, pump.sent) == pure.position()
            # And back: the pure twin resumes where the pump is.
            twin.resume(pump.acked, pump.sent, pump.progressed_at)
            assert twin.position() == pure.position()
    finally:
        pump.close()
        for source in (pure_source, pump_source):
            source.close()


def test_block_numbers_roll_over_past_65535(rig: Rig) -> None:
    content = bytes(range(256)) * (8 * 65540 // 256 + 1)
    source = BytesSource(content[: 8 * 65540 + 3])
    transfer = _transfer(source, 8, oack=True)
    pump = rig.pump_for(transfer, source)
    blocks = 0
    for block in range(transfer.last_block):
        rig.client.send(encode_ack(block & 0xFFFF))
        pump()
        (datagram,) = rig.received()
        assert datagram[:4] == bytes([0, 3, ((block + 1) >> 8) & 0xFF, (block + 1) & 0xFF])
        assert datagram[4:] == source.read(block * 8, 8)
        blocks += 1
    assert blocks == transfer.last_block == 65541
    assert pump.acked == 65540
    rig.client.send(encode_ack(transfer.last_block & 0xFFFF))
    pump()
    assert rig.fallbacks == [(encode_ack(65541 & 0xFFFF), None)]


def test_everything_else_goes_to_the_fallback_as_it_came(rig: Rig) -> None:
    source = BytesSource(b"x" * 10_000)
    transfer = _transfer(source, 512, oack=False)
    pump = rig.pump_for(transfer, source)
    rig.answer = False  # not answered: the pump goes on reading
    error = encode_error(ErrorCode.DISK_FULL, "full")
    for datagram in (error, b"\x00", b"\x00\x04\x00"):
        rig.client.send(datagram)
    rig.client.send(encode_ack(1))
    pump()
    assert rig.fallbacks == [(error, None), (b"\x00", None), (b"\x00\x04\x00", None)]
    assert [d[:4] for d in rig.received()] == [b"\x00\x03\x00\x02"]


def test_a_stranger_reaches_the_fallback_with_its_address_tuple(rig: Rig) -> None:
    source = BytesSource(b"x" * 10_000)
    pump = rig.pump_for(_transfer(source, 512, oack=False), source)
    rig.answer = False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.2", 0))
        stranger.sendto(encode_ack(1), rig.server.getsockname())
        pump()
        assert rig.fallbacks == [(encode_ack(1), stranger.getsockname())]
    assert pump.acked == 0  # the transfer did not move


def test_ipv6_peers_and_strangers_match_pythons_address_tuples() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server, client = _pair(socket.AF_INET6, "::1")
    with server, client, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as stranger:
        rig = Rig(server, client, answer=False)
        source = BytesSource(b"y" * 3000)
        transfer = _transfer(source, 1024, oack=False)
        pump = rig.pump_for(transfer, source)
        stranger.bind(("::1", 0))
        stranger.sendto(encode_ack(1), server.getsockname())
        client.send(encode_ack(1))
        pump()
        assert rig.fallbacks == [(encode_ack(1), stranger.getsockname())]
        assert [d[:4] for d in rig.received()] == [b"\x00\x03\x00\x02"]
        # Python's own view of the same sender, for the session table's keys.
        stranger.sendto(b"z", server.getsockname())
        assert server.recvfrom(16)[1] == stranger.getsockname()


def test_a_failed_read_is_left_to_python_with_the_transfer_unmoved(
    rig: Rig, tmp_path: Path
) -> None:
    directory = os.open(tmp_path, os.O_RDONLY)  # pread on it fails with EISDIR
    try:
        source = FileSource(directory, 100_000)
        transfer = _transfer(source, 1024, oack=True)
        pump = rig.pump_for(transfer, source)
        rig.client.send(encode_ack(0))
        pump()
        assert rig.fallbacks == [(encode_ack(0), None)]
        assert (pump.acked, pump.sent) == (-1, 0)
        assert rig.received() == []
    finally:
        os.close(directory)


def test_a_closed_pump_reads_nothing(rig: Rig) -> None:
    source = BytesSource(b"x" * 10_000)
    pump = rig.pump_for(_transfer(source, 512, oack=False), source)
    pump.close()
    assert pump.closed
    rig.client.send(encode_ack(1))
    pump()
    assert rig.received() == [] and rig.fallbacks == []
    assert rig.server.recv(16) == encode_ack(1)  # still queued: the pump did not read it


def test_bad_arguments_are_refused(rig: Rig) -> None:
    source = BytesSource(b"x" * 100)
    transfer = _transfer(source, 512, oack=False)
    with pytest.raises(ValueError, match="peer address"):
        rig.pump_for(transfer, source, host="not-an-ip", port=1)
    with pytest.raises(ValueError, match="below 64 KiB"):
        rig.pump_for(transfer, source, recv_buffer=bytearray(100))
    with pytest.raises(ValueError, match="shorter than size"):
        rig.pump_for(transfer, source, size=1000, last_block=2)


def test_resume_refuses_a_position_the_rules_cannot_reach() -> None:
    transfer = _transfer(BytesSource(b"x" * 5000), 512, oack=False)
    with pytest.raises(ValueError):
        transfer.resume(transfer.last_block, transfer.last_block, 1.0)  # the end is Python's
    with pytest.raises(ValueError):
        transfer.resume(3, 2, 1.0)  # acked beyond sent
    transfer.resume(3, 4, 7.0)
    assert transfer.position() == (3, 4)
    assert transfer.deadline == 7.0 + transfer.params.timeout


def test_single_port_listener_serves_each_senders_pump_and_leaves_the_rest(rig: Rig) -> None:
    """One listening socket, two transfers: each ACK reaches its sender's pump; a request,
    an unknown sender and a transfer's final ACK reach the fallback with the sender's tuple."""
    from simple_tftpd._fastpath import Listener

    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.connect(rig.server.getsockname())
    other.setblocking(False)
    with other:
        sources = [BytesSource(bytes([n]) * 3000) for n in (1, 2)]
        transfers = [_transfer(source, 1024, oack=False) for source in sources]
        pumps = {}
        for client, transfer, source in zip((rig.client, other), transfers, sources, strict=True):
            pumps[client.getsockname()] = rig.pump_for(transfer, source, client)
        seen: list[tuple[bytes, object]] = []

        def fallback(size: int, peer: object) -> bool:
            seen.append((bytes(rig.recv_buffer[:size]), peer))
            return False

        sessions = dict.fromkeys(pumps, "session")
        listener = Listener(
            sock=rig.server.fileno(), recv_buffer=rig.recv_buffer, pumps=pumps,
            sessions=sessions, fallback=fallback,
        )  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.1", 0))
            rig.client.send(encode_ack(1))
            other.send(encode_ack(1))
            stranger.sendto(encode_ack(1), rig.server.getsockname())
            rig.client.send(b"\x00\x01boot.efi\x00octet\x00")
            listener()
            assert [d[:4] for d in rig.received()] == [b"\x00\x03\x00\x02"]
            assert other.recv(RECV_SIZE) == b"\x00\x03\x00\x02" + bytes([2]) * 1024
            assert seen == [
                (encode_ack(1), stranger.getsockname()),
                (b"\x00\x01boot.efi\x00octet\x00", rig.client.getsockname()),
            ]
            # The final ACK is Python's; nothing was left queued.
            seen.clear()
            rig.client.send(encode_ack(2))
            listener()
            rig.client.send(encode_ack(3))
            listener()
            assert [d[:4] for d in rig.received()] == [b"\x00\x03\x00\x03"]
            assert seen == [(encode_ack(3), rig.client.getsockname())]
        listener.close()
        for pump in pumps.values():
            pump.close()
