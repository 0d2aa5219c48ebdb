"""Per-transfer counters are written in batches (metrics.Tally): a busy worker writes them a
moment later, an idle one at once, and the active-sessions gauge follows a lone transfer
immediately. A real server on loopback, real UDP clients."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from simple_tftpd.config import Config
from simple_tftpd.metrics import Metrics
from simple_tftpd.protocol.packets import Opcode, Request, encode_ack, encode_request
from simple_tftpd.server import TALLY_SECONDS, TftpServer

OK = ("simple_tftpd_transfers_total", {"direction": "read", "outcome": "ok"})
SENT = ("simple_tftpd_sent_bytes_total", {})
ACTIVE = ("simple_tftpd_active_sessions", {})


def value(metrics: Metrics, sample: tuple[str, dict[str, str]]) -> float:
    return metrics.registry.get_sample_value(*sample) or 0.0


def rrq(name: str) -> bytes:
    return encode_request(Request(Opcode.RRQ, name, "octet", {}))


async def receive(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    data, peer = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 5)
    return data, peer


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def test_busy_worker_batches_counts_and_idle_one_writes_them(tmp_path: Path) -> None:
    (tmp_path / "held.bin").write_bytes(b"h" * 5000)  # several blocks: held open after one
    (tmp_path / "small.bin").write_bytes(b"s" * 100)  # one block
    # A long retransmit timeout: the held transfer must not resend block 1 while we wait.
    tftp = {"bind": "127.0.0.1", "port": 1, "root": tmp_path, "timeout": 10}
    config = Config.model_validate({"tftp": tftp})
    # An ephemeral port: model_copy skips the model's 1-65535 check.
    config = config.model_copy(update={"tftp": config.tftp.model_copy(update={"port": 0})})

    async def run() -> None:
        metrics = Metrics()
        server = TftpServer(config, metrics)
        server.start()
        port = server.port
        held, small = client(), client()
        try:
            # A lone transfer shows in the gauge at once.
            held.sendto(rrq("held.bin"), ("127.0.0.1", port))
            data, held_tid = await receive(held)
            assert data[:4] == b"\x00\x03\x00\x01"
            assert value(metrics, ACTIVE) == 1

            # While the worker is busy, a finished transfer is counted a moment later.
            small.sendto(rrq("small.bin"), ("127.0.0.1", port))
            small_data, small_tid = await receive(small)
            assert small_data == b"\x00\x03\x00\x01" + b"s" * 100
            small.sendto(encode_ack(1), small_tid)
            for _ in range(100):
                if server.sessions.keys() == {held.getsockname()}:
                    break
                await asyncio.sleep(0.01)
            assert server.sessions.keys() == {held.getsockname()}
            assert value(metrics, OK) == 0  # batched, not lost:
            await asyncio.sleep(TALLY_SECONDS + 0.2)
            assert value(metrics, OK) == 1
            assert value(metrics, SENT) == 100
            assert value(metrics, ACTIVE) == 1

            # The last transfer ends: the worker is idle and writes everything at once.
            block = 1
            while True:
                held.sendto(encode_ack(block), held_tid)
                if len(data) < 4 + 512:  # the short block was the last
                    break
                block += 1
                data, _ = await receive(held)
                assert data[2:4] == block.to_bytes(2, "big")
            for _ in range(100):
                if not server.sessions:
                    break
                await asyncio.sleep(0.01)
            assert not server.sessions
            assert value(metrics, OK) == 2
            assert value(metrics, SENT) == 5100
            assert value(metrics, ACTIVE) == 0
        finally:
            held.close()
            small.close()
            server.close()

    asyncio.run(run())
