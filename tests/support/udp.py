"""A raw UDP peer for hostile-input tests: send exactly the bytes under test."""

from __future__ import annotations

import socket

from simple_tftpd.protocol.packets import Packet, parse


class Peer:
    def __init__(self, host: str = "127.0.0.1", source: str | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((source or ("::1" if family == socket.AF_INET6 else "127.0.0.1"), 0))

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, (self.host, port))

    def receive(self, timeout: float = 2.0) -> tuple[Packet, int] | None:
        """The next packet and the port it came from, or None if nothing came in time."""
        self.sock.settimeout(timeout)
        try:
            data, addr = self.sock.recvfrom(70000)
        except TimeoutError:
            return None
        return parse(data), int(addr[1])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
