"""How the I/O layer hands a read window to the kernel: UDP segmentation (GSO) for runs of
equal-sized datagrams while the worker serves several transfers, one datagram at a time
otherwise or when the kernel refuses."""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
from typing import Any

import pytest

from simple_tftpd.config import Config
from simple_tftpd.metrics import Metrics
from simple_tftpd.server import (
    GSO_MAX_SEGMENTS,
    GSO_MIN_SESSIONS,
    SOL_UDP,
    UDP_SEGMENT,
    TftpServer,
)

PEER = ("127.0.0.1", 40000)


class FakeSocket:
    def __init__(self, refuse_gso: int | None = None) -> None:
        self.sent: list[bytes] = []  # what the peer would receive, datagram by datagram
        self.calls: list[str] = []
        self.refuse_gso = refuse_gso

    def sendto(self, data: bytes, peer: Any) -> int:
        self.calls.append("sendto")
        self.sent.append(data)
        return len(data)

    def sendmsg(self, buffers: list[bytes], ancillary: Any, flags: int, peer: Any) -> int:
        if self.refuse_gso is not None:
            raise OSError(self.refuse_gso, "refused")
        ((level, kind, raw),) = ancillary
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        size = int.from_bytes(raw, sys.byteorder)
        data = b"".join(buffers)
        self.calls.append("sendmsg")
        self.sent += [data[i : i + size] for i in range(0, len(data), size)]
        return len(data)


def send(datagrams: list[bytes], sock: FakeSocket, transfers: int = GSO_MIN_SESSIONS) -> TftpServer:
    async def run() -> TftpServer:
        server = TftpServer(Config(), Metrics())
        server._gso_limit = 65000  # as on Linux, whatever runs the test
        # Only the count of transfers this worker serves matters to how a window is sent.
        server.sessions = {("127.0.0.1", port): None for port in range(transfers)}  # type: ignore[misc]
        server._send(sock, datagrams, PEER)  # type: ignore[arg-type]
        return server

    return asyncio.run(run())


def window(count: int, size: int = 1472, last: int = 1472) -> list[bytes]:
    blocks = [bytes([n]) * size for n in range(count - 1)]
    return [*blocks, bytes([count]) * last]


@pytest.mark.parametrize("last", [1472, 700, 4])
def test_a_window_goes_out_in_one_call(last: int) -> None:
    datagrams = window(16, last=last)
    sock = FakeSocket()
    send(datagrams, sock)
    assert sock.calls == ["sendmsg"]
    assert sock.sent == datagrams


def test_a_lone_transfer_sends_its_window_datagram_by_datagram() -> None:
    datagrams = window(16)
    sock = FakeSocket()
    send(datagrams, sock, transfers=1)
    assert sock.calls == ["sendto"] * 16
    assert sock.sent == datagrams


def test_a_long_window_is_split_within_the_kernel_limits() -> None:
    datagrams = window(100, size=516, last=516)  # blksize 512
    sock = FakeSocket()
    send(datagrams, sock)
    assert sock.sent == datagrams
    assert len(sock.calls) == -(-100 // GSO_MAX_SEGMENTS)


def test_unequal_datagrams_are_sent_one_by_one() -> None:
    datagrams = [b"a" * 100, b"b" * 50, b"c" * 100]
    sock = FakeSocket()
    send(datagrams, sock)
    assert sock.calls == ["sendto"] * 3
    assert sock.sent == datagrams


def test_single_datagrams_never_use_segmentation() -> None:
    sock = FakeSocket()
    send([b"x" * 1472], sock)
    assert sock.calls == ["sendto"]


@pytest.mark.parametrize("code", [errno.EIO, errno.EINVAL])
def test_refused_segmentation_falls_back_and_is_not_retried(code: int) -> None:
    datagrams = window(4)
    sock = FakeSocket(refuse_gso=code)
    server = send(datagrams, sock)
    assert sock.sent == datagrams
    assert sock.calls == ["sendto"] * 4
    assert server._gso_limit < 1472  # datagrams this large now go one by one


@pytest.mark.skipif(sys.platform != "linux", reason="UDP GSO is Linux-only")
def test_the_kernel_delivers_segmented_windows_as_separate_datagrams() -> None:
    datagrams = window(16, last=99)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)

        async def run() -> None:
            server = TftpServer(Config(), Metrics())
            server.sessions = {("127.0.0.1", n): None for n in range(2)}  # type: ignore[misc]
            server._send(sender, datagrams, receiver.getsockname())

        asyncio.run(run())
        assert [receiver.recv(65536) for _ in datagrams] == datagrams
