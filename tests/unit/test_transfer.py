"""Transfer state machines, driven directly: no sockets, no clock, no sleeps."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_tftpd.protocol.packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OAck,
    Opcode,
    Request,
    encode_ack,
    encode_data,
    parse,
)
from simple_tftpd.protocol.transfer import (
    READ_AHEAD_BYTES,
    Limits,
    NegotiationError,
    Outcome,
    Parameters,
    ReadTransfer,
    SinkError,
    WriteTransfer,
    negotiate,
)


class Source:
    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


class Sink:
    def __init__(self, fail_after: int | None = None) -> None:
        self.buffer = bytearray()
        self.committed: bytes | None = None
        self.aborted = False
        self.fail_after = fail_after

    def write(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.buffer) + len(data) > self.fail_after:
            raise SinkError(ErrorCode.DISK_FULL, "disk full")
        self.buffer += data

    def commit(self) -> None:
        self.committed = bytes(self.buffer)

    def abort(self) -> None:
        self.aborted = True


def rrq(options: dict[str, str] | None = None, mode: str = "octet") -> Request:
    return Request(Opcode.RRQ, "f", mode, options or {})


def wrq(options: dict[str, str] | None = None) -> Request:
    return Request(Opcode.WRQ, "up/f", "octet", options or {})


def reader(data: bytes, options: dict[str, str] | None = None, **limits: int) -> ReadTransfer:
    lim = Limits(**limits)  # type: ignore[arg-type]
    params, oack = negotiate(rrq(options), lim, len(data))
    return ReadTransfer(Source(data), lim, params, oack)


# -- option negotiation ----------------------------------------------------------------------


def test_no_options_means_no_oack_and_defaults() -> None:
    params, oack = negotiate(rrq(), Limits(), 10)
    assert oack == {}
    assert params == Parameters(512, 1, 1.0)


def test_options_are_accepted_and_clamped_to_ceilings() -> None:
    params, oack = negotiate(
        rrq({"blksize": "65464", "tsize": "0", "timeout": "3", "windowsize": "500", "x": "1"}),
        Limits(max_blksize=1468, max_windowsize=16),
        12345,
    )
    assert oack == {"blksize": "1468", "tsize": "12345", "timeout": "3", "windowsize": "16"}
    assert params == Parameters(1468, 16, 3.0)


def test_blksize_is_never_raised_above_request() -> None:
    params, oack = negotiate(rrq({"blksize": "100"}), Limits(), 1)
    assert params.blksize == 100
    assert oack["blksize"] == "100"


@pytest.mark.parametrize(
    "options",
    [
        {"blksize": "7"},
        {"blksize": "abc"},
        {"blksize": "-1"},
        {"blksize": "99999999999999999999"},
        {"timeout": "0"},
        {"timeout": "256"},
        {"windowsize": "0"},
        {"windowsize": "65536"},
        {"tsize": "x"},
    ],
)
def test_invalid_option_values_are_refused(options: dict[str, str]) -> None:
    with pytest.raises(NegotiationError):
        negotiate(rrq(options), Limits(), 1)


def test_write_tsize_over_limit_is_refused() -> None:
    with pytest.raises(NegotiationError):
        negotiate(wrq({"tsize": "2048"}), Limits(max_upload_bytes=1024), None)


# -- reads -----------------------------------------------------------------------------------


def test_lockstep_read_with_final_short_block() -> None:
    data = bytes(range(256)) * 5  # 1280 bytes: blocks of 512, 512, 256
    t = reader(data)
    assert t.start(0.0) == [encode_data(1, data[:512])]
    assert t.receive(Ack(1), 0.1) == [encode_data(2, data[512:1024])]
    assert t.receive(Ack(2), 0.2) == [encode_data(3, data[1024:])]
    assert t.receive(Ack(3), 0.3) == []
    assert t.outcome is Outcome.OK
    assert t.bytes == len(data)


@pytest.mark.parametrize("size", [0, 512, 1024])
def test_exact_multiple_ends_with_empty_block(size: int) -> None:
    t = reader(b"x" * size)
    out = t.start(0.0)
    for block in range(1, size // 512 + 1):
        out = t.receive(Ack(block), 0.0)
    assert out == [encode_data(size // 512 + 1, b"")]
    t.receive(Ack(size // 512 + 1), 0.0)
    assert t.outcome is Outcome.OK


def test_oack_then_ack_zero_starts_data() -> None:
    data = b"a" * 3000
    t = reader(data, {"blksize": "1000", "tsize": "0"})
    (first,) = t.start(0.0)
    assert parse(first) == OAck({"blksize": "1000", "tsize": "3000"})
    assert t.receive(Ack(0), 0.1) == [encode_data(1, data[:1000])]


def test_duplicate_ack_does_not_resend() -> None:
    """Sorcerer's Apprentice: a duplicated ACK must not double the traffic."""
    t = reader(b"z" * 2000)
    t.start(0.0)
    assert len(t.receive(Ack(1), 0.1)) == 1
    assert t.receive(Ack(1), 0.2) == []
    assert t.receive(Ack(0), 0.2) == []
    assert t.retransmits == 0


def test_timeout_resends_and_then_gives_up() -> None:
    t = reader(b"q" * 100, retries=2, unverified_retries=2)
    first = t.start(0.0)
    assert t.on_timer(0.5) == []  # not yet due
    assert t.on_timer(1.0) == first
    assert t.on_timer(2.0) == first
    assert t.on_timer(3.0) == []
    assert t.outcome is Outcome.TIMEOUT
    assert t.retransmits == 2


def test_unverified_peer_gets_fewer_resends() -> None:
    """A spoofed request cannot make the daemon send more than 1 + unverified_retries."""
    t = reader(b"q" * 5000, retries=5, unverified_retries=1)
    sent = len(t.start(0.0))
    now = 0.0
    while not t.finished:
        now += 1.0
        sent += len(t.on_timer(now))
    assert sent == 2


def test_verified_peer_gets_full_retries() -> None:
    t = reader(b"q" * 5000, retries=3, unverified_retries=0)
    t.start(0.0)
    t.receive(Ack(1), 0.1)
    resends = [t.on_timer(1.1 * i + 1) for i in range(1, 5)]
    assert [len(r) for r in resends] == [1, 1, 1, 0]


def test_window_sends_and_slides_on_partial_ack() -> None:
    data = bytes(8) * 100  # 800 bytes, blksize 100 -> 9 blocks (last empty)
    t = reader(data, {"blksize": "100", "windowsize": "4"})
    t.start(0.0)
    window = t.receive(Ack(0), 0.0)
    assert [parse(d).block for d in window] == [1, 2, 3, 4]  # type: ignore[union-attr]
    # The client lost block 3: it acks 2, the window restarts at 3.
    assert [parse(d).block for d in t.receive(Ack(2), 0.1)] == [3, 4, 5, 6]  # type: ignore[union-attr]
    assert [parse(d).block for d in t.receive(Ack(6), 0.2)] == [7, 8, 9]  # type: ignore[union-attr]
    assert t.receive(Ack(9), 0.3) == []
    assert t.outcome is Outcome.OK


def test_window_timeout_resends_whole_window() -> None:
    t = reader(b"w" * 1000, {"blksize": "100", "windowsize": "3"})
    t.start(0.0)
    window = t.receive(Ack(0), 0.0)
    assert t.on_timer(1.0) == window
    assert t.retransmits == 3


class CountingSource(Source):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return super().read(offset, length)


def test_blocks_are_cut_from_read_ahead_chunks() -> None:
    data = random.Random(1).randbytes(READ_AHEAD_BYTES * 3 + 77)
    source = CountingSource(data)
    params, oack = negotiate(rrq({"blksize": "1000"}), Limits(), len(data))
    t = ReadTransfer(source, Limits(), params, oack)
    received = bytearray()
    out = t.start(0.0)
    out = t.receive(Ack(0), 0.0)  # the OACK is confirmed
    while out:
        packet = parse(out[0])
        assert isinstance(packet, Data)
        received += packet.payload
        out = t.receive(Ack(packet.block), 0.0)
    assert bytes(received) == data
    assert t.outcome is Outcome.OK
    # One read per chunk of blocks, not one per block.
    per_chunk = READ_AHEAD_BYTES // 1000
    assert len(source.reads) == -(-t.last_block // per_chunk)
    assert all(length == per_chunk * 1000 for _, length in source.reads)


def test_window_resent_from_before_the_chunk_is_read_again() -> None:
    blksize = READ_AHEAD_BYTES // 4  # read-ahead chunks of 4 blocks, as is the window
    data = random.Random(2).randbytes(blksize * 10)
    source = CountingSource(data)
    lim = Limits(max_blksize=blksize)
    params, oack = negotiate(rrq({"blksize": str(blksize), "windowsize": "4"}), lim, len(data))
    t = ReadTransfer(source, lim, params, oack)
    t.start(0.0)
    t.receive(Ack(0), 0.0)  # blocks 1-4
    t.receive(Ack(2), 0.1)  # blocks 3-6: the chunk now starts at block 5
    resent = t.on_timer(5.0)  # 3-6 again, from before the chunk
    assert [parse(d) for d in resent] == [
        Data(n, data[(n - 1) * blksize : n * blksize]) for n in range(3, 7)
    ]
    assert [offset // blksize for offset, _ in source.reads] == [0, 4, 2]


def test_a_large_window_is_read_in_bounded_chunks() -> None:
    # What a transfer holds stays READ_AHEAD_BYTES however large the window it negotiated.
    data = random.Random(3).randbytes(1468 * 200)
    source = CountingSource(data)
    lim = Limits(max_windowsize=64)
    params, oack = negotiate(rrq({"blksize": "1468", "windowsize": "64"}), lim, len(data))
    t = ReadTransfer(source, lim, params, oack)
    t.start(0.0)
    window = t.receive(Ack(0), 0.0)
    assert len(window) == 64
    assert [parse(d) for d in window] == [
        Data(n, data[(n - 1) * 1468 : n * 1468]) for n in range(1, 65)
    ]
    assert all(length <= READ_AHEAD_BYTES for _, length in source.reads)


def test_block_numbers_roll_over_to_zero() -> None:
    blocks = 65540
    data = b"r" * (blocks * 8 - 3)
    t = reader(data, {"blksize": "8"})
    t.start(0.0)
    out = t.receive(Ack(0), 0.0)
    for n in range(1, blocks + 1):
        (datagram,) = out
        packet = parse(datagram)
        assert isinstance(packet, Data)
        assert packet.block == n & 0xFFFF
        out = t.receive(Ack(n & 0xFFFF), 0.0)
    assert out == []
    assert t.outcome is Outcome.OK


def test_stale_ack_after_rollover_is_ignored() -> None:
    t = reader(b"s" * (70000 * 8), {"blksize": "8"})
    t.start(0.0)
    t.receive(Ack(0), 0.0)
    for n in range(1, 65537):
        t.receive(Ack(n & 0xFFFF), 0.0)
    # block 65536 (wire 0) acked; a late ACK 65535 must not move anything.
    assert t.receive(Ack(65535), 0.0) == []


def test_peer_error_ends_transfer() -> None:
    t = reader(b"e" * 10)
    t.start(0.0)
    assert t.receive(Error(0, "cancelled"), 0.1) == []
    assert t.outcome is Outcome.PEER_ERROR


def test_unexpected_packet_is_an_error() -> None:
    t = reader(b"e" * 10)
    t.start(0.0)
    (out,) = t.receive(Data(1, b"x"), 0.1)
    assert parse(out) == Error(ErrorCode.ILLEGAL_OPERATION, "unexpected packet during read")
    assert t.outcome is Outcome.ERROR


def test_retried_request_is_ignored() -> None:
    t = reader(b"e" * 10)
    t.start(0.0)
    assert t.receive(rrq(), 0.1) == []
    assert not t.finished


def test_request_after_the_last_block_ends_the_transfer() -> None:
    # The client answered (ACK 0 to the OACK) and has every block: asking again from the
    # same port starts something new; its final ACK was lost.
    t = reader(b"e" * 10, {"blksize": "1024"})
    t.start(0.0)
    assert t.receive(Ack(0), 0.1) == [encode_data(1, b"e" * 10)]
    assert t.receive(rrq(), 0.2) == []
    assert t.outcome is Outcome.OK


def test_request_before_the_last_block_is_a_retry() -> None:
    t = reader(b"f" * 2000, {"blksize": "1024"})
    t.start(0.0)
    t.receive(Ack(0), 0.1)
    assert not t.on_repeated_request()
    assert not t.finished
    t.receive(Ack(1), 0.2)  # block 2, the last, goes out
    assert t.on_repeated_request()
    assert t.outcome is Outcome.OK


def test_cancel_sends_error_once() -> None:
    t = reader(b"c" * 10)
    t.start(0.0)
    assert len(t.cancel()) == 1
    assert t.cancel() == []
    assert t.outcome is Outcome.CANCELLED


# -- writes ----------------------------------------------------------------------------------


def writer(
    options: dict[str, str] | None = None, sink: Sink | None = None, **limits: int
) -> tuple[WriteTransfer, Sink]:
    lim = Limits(**limits)  # type: ignore[arg-type]
    params, oack = negotiate(wrq(options), lim, None)
    sink = sink or Sink()
    return WriteTransfer(sink, lim, params, oack), sink


def test_lockstep_write_commits_only_at_the_end() -> None:
    t, sink = writer()
    assert t.start(0.0) == [encode_ack(0)]
    assert t.receive(Data(1, b"a" * 512), 0.1) == [encode_ack(1)]
    assert sink.committed is None
    assert t.receive(Data(2, b"b" * 10), 0.2) == [encode_ack(2)]
    assert sink.committed == b"a" * 512 + b"b" * 10
    # The final ACK was lost: the client resends, we answer again while dallying.
    assert t.receive(Data(2, b"b" * 10), 0.3) == [encode_ack(2)]
    assert t.on_timer(5.0) == []
    assert t.outcome is Outcome.OK


def test_write_with_oack_and_window() -> None:
    t, sink = writer({"blksize": "10", "windowsize": "3", "tsize": "35"})
    (oack,) = t.start(0.0)
    assert parse(oack) == OAck({"blksize": "10", "tsize": "35", "windowsize": "3"})
    assert t.receive(Data(1, b"1" * 10), 0.0) == []
    assert t.receive(Data(2, b"2" * 10), 0.0) == []
    assert t.receive(Data(3, b"3" * 10), 0.0) == [encode_ack(3)]
    # Block 4 lost: block 5 arrives out of order -> one ACK of the last good block.
    assert t.receive(Data(5, b"5" * 5), 0.0) == [encode_ack(3)]
    assert t.receive(Data(5, b"5" * 5), 0.0) == []
    assert t.receive(Data(4, b"4" * 10), 0.0) == []
    assert t.receive(Data(5, b"5" * 5), 0.0) == [encode_ack(5)]
    assert sink.committed == b"1" * 10 + b"2" * 10 + b"3" * 10 + b"4" * 10 + b"5" * 5


def test_write_over_size_limit_aborts() -> None:
    t, sink = writer(max_upload_bytes=600)
    t.start(0.0)
    t.receive(Data(1, b"a" * 512), 0.0)
    (out,) = t.receive(Data(2, b"a" * 512), 0.0)
    assert parse(out) == Error(ErrorCode.DISK_FULL, "upload exceeds the size limit")
    assert sink.aborted and sink.committed is None


def test_sink_failure_aborts_with_its_code() -> None:
    t, sink = writer(sink=Sink(fail_after=100))
    t.start(0.0)
    (out,) = t.receive(Data(1, b"a" * 512), 0.0)
    assert parse(out) == Error(ErrorCode.DISK_FULL, "disk full")
    assert sink.aborted


def test_write_timeout_aborts_sink() -> None:
    t, sink = writer(retries=1, unverified_retries=1)
    t.start(0.0)
    assert t.on_timer(1.0) == [encode_ack(0)]
    assert t.on_timer(2.0) == []
    assert t.outcome is Outcome.TIMEOUT
    assert sink.aborted


def test_cancel_during_write_aborts_sink() -> None:
    t, sink = writer()
    t.start(0.0)
    t.receive(Data(1, b"a" * 512), 0.0)
    t.cancel()
    assert sink.aborted and sink.committed is None


def test_oversized_block_is_refused() -> None:
    t, sink = writer({"blksize": "8"})
    t.start(0.0)
    (out,) = t.receive(Data(1, b"x" * 9), 0.0)
    assert parse(out).code == ErrorCode.ILLEGAL_OPERATION  # type: ignore[union-attr]
    assert sink.aborted


# -- whole transfers over a lossy, duplicating, reordering network ----------------------------


class Client:
    """A minimal RFC 7440 reading client, to exercise the server machine end to end."""

    def __init__(self, blksize: int, windowsize: int) -> None:
        self.blksize, self.windowsize = blksize, windowsize
        self.received = bytearray()
        self.next = 1
        self.in_window = 0
        self.done = False
        self.last_ack = encode_ack(0)

    def receive(self, datagram: bytes) -> list[bytes]:
        packet = parse(datagram)
        if isinstance(packet, OAck):
            return [encode_ack(0)] if self.next == 1 else []
        assert isinstance(packet, Data)
        if packet.block != self.next & 0xFFFF:
            return [self.last_ack]
        self.received += packet.payload
        self.next += 1
        self.in_window += 1
        last = len(packet.payload) < self.blksize
        if last or self.in_window == self.windowsize:
            self.in_window = 0
            self.last_ack = encode_ack(packet.block)
            self.done = self.done or last
            return [self.last_ack]
        return []


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 3000),
    blksize=st.integers(8, 600),
    windowsize=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.05, 0.2]),
)
def test_read_completes_over_a_bad_network(
    size: int, blksize: int, windowsize: int, seed: int, loss: float
) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    lim = Limits(max_blksize=1468, retries=50, unverified_retries=50)
    params, oack = negotiate(
        rrq({"blksize": str(blksize), "windowsize": str(windowsize)}), lim, size
    )
    server = ReadTransfer(Source(data), lim, params, oack)
    client = Client(blksize, windowsize)
    now = 0.0
    to_client = list(server.start(now))
    to_server: list[bytes] = []

    def network(datagrams: list[bytes]) -> list[bytes]:
        out = []
        for d in datagrams:
            if rng.random() < loss:
                continue
            out.append(d)
            if rng.random() < 0.05:
                out.append(d)  # duplicated
        if rng.random() < 0.1:
            rng.shuffle(out)
        return out

    for _ in range(100_000):
        if server.finished:
            break
        if to_client or to_server:
            for d in network(to_client):
                to_server += client.receive(d)
            to_client = []
            for d in network(to_server):
                to_client += server.receive(parse(d), now)
            to_server = []
        else:
            assert server.deadline is not None
            now = server.deadline
            to_client = server.on_timer(now)
            if not to_client and not server.finished:
                to_server = [client.last_ack]
    assert server.outcome is Outcome.OK or (loss and server.outcome is Outcome.TIMEOUT)
    if server.outcome is Outcome.OK:
        assert client.done
        assert bytes(client.received) == data
