"""Sans-I/O TFTP transfer state machines (server side).

A transfer owns no socket and no clock. The I/O layer feeds it packets with the current time
(`receive`), asks when it wants to be woken (`deadline`) and wakes it (`on_timer`); every call
returns the datagrams to send to the peer. That keeps every RFC edge case (option bounds,
block-number rollover, duplicate ACKs, window resends, retries) testable without sockets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from simple_tftpd.protocol import netascii
from simple_tftpd.protocol.packets import (
    MAX_BLKSIZE,
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    Packet,
    Request,
    encode_ack,
    encode_error,
    encode_oack,
)

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_WINDOWSIZE = 65535
# A read transfer asks its source for this much at a time (at least one block) and cuts
# blocks out of it: one pread per ~5 blocks of 1468 bytes instead of one per block (a
# zero-copy view for content already in memory). Every transfer holds one such buffer, so
# it stays small whatever the window: at 32 KiB, or a whole window of 16 blocks, the buffers
# took the daemon's PSS in a 200-client storm above 64 MiB.
READ_AHEAD_BYTES = 8 * 1024
_HEADER = struct.Struct("!HH")
_DATA = int(Opcode.DATA)


@dataclass(frozen=True, slots=True)
class Limits:
    """The daemon's ceilings and retry policy for one transfer."""

    max_blksize: int = 1468
    max_windowsize: int = 64
    timeout: float = 1.0
    retries: int = 5
    # A peer that has not yet answered may be a spoofed victim: resend to it fewer times.
    unverified_retries: int = 2
    max_upload_bytes: int = 1 << 30


class Outcome(Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    PEER_ERROR = "peer_error"  # the client sent ERROR
    ERROR = "error"  # we ended it with ERROR
    CANCELLED = "cancelled"  # daemon shutdown


class NegotiationError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BlockSource(Protocol):
    """Readable content of a known size (a cached bytes object, or a file read with pread).

    `read` may return fewer bytes than asked for at the end of the content.
    """

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes | memoryview: ...


class BlockSink(Protocol):
    """Where an upload goes: written in order, made visible only by `commit`."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class SinkError(Exception):
    """Raised by a sink that cannot take more data; `code` is the TFTP error to send."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Parameters:
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = 1.0


def _int_option(options: dict[str, str], name: str) -> int | None:
    raw = options.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise NegotiationError(f"invalid {name} value")
    return int(raw)


def negotiate(
    request: Request, limits: Limits, size: int | None
) -> tuple[Parameters, dict[str, str]]:
    """Apply RFC 2347/2348/2349/7440 to a request.

    Returns the transfer parameters and the options to acknowledge in an OACK (empty: no
    OACK). `size` is the content size for a read; for a write, the client's tsize is checked
    against the upload limit. Unknown options are ignored; values that can never be valid
    raise NegotiationError (answered with ERROR 8); values above the daemon's ceiling are
    lowered, as RFC 2348 and 7440 allow.
    """
    accepted: dict[str, str] = {}
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, limits.timeout
    opts = request.options

    requested_blksize = _int_option(opts, "blksize")
    if requested_blksize is not None:
        if requested_blksize < MIN_BLKSIZE:
            raise NegotiationError("blksize below 8")
        blksize = min(requested_blksize, limits.max_blksize, MAX_BLKSIZE)
        accepted["blksize"] = str(blksize)

    requested_timeout = _int_option(opts, "timeout")
    if requested_timeout is not None:
        if not 1 <= requested_timeout <= 255:
            raise NegotiationError("timeout outside 1..255")
        timeout = float(requested_timeout)
        accepted["timeout"] = str(requested_timeout)

    tsize = _int_option(opts, "tsize")
    if tsize is not None:
        if request.is_write:
            if tsize > limits.max_upload_bytes:
                raise NegotiationError("tsize exceeds the upload limit")
            accepted["tsize"] = str(tsize)
        elif size:
            # An empty file's tsize is left out: curl rejects "tsize 0" in an OACK, and
            # RFC 2347 lets a server decline any option.
            accepted["tsize"] = str(size)

    requested_window = _int_option(opts, "windowsize")
    if requested_window is not None:
        if not 1 <= requested_window <= MAX_WINDOWSIZE:
            raise NegotiationError("windowsize outside 1..65535")
        windowsize = min(requested_window, limits.max_windowsize)
        accepted["windowsize"] = str(windowsize)

    return Parameters(blksize, windowsize, timeout), accepted


class Transfer:
    """What both directions share: retry accounting, outcome, counters."""

    def __init__(self, limits: Limits, params: Parameters, oack: dict[str, str]) -> None:
        self.limits = limits
        self.params = params
        self.oack = encode_oack(oack) if oack else None
        self.deadline: float | None = None
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self.verified = False  # the peer has answered, so its address is not spoofed
        self.retransmits = 0
        self.bytes = 0
        self._tries = 0

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def _finish(self, outcome: Outcome, error: str | None = None) -> None:
        self.outcome = outcome
        self.error = error
        self.deadline = None

    def _fail(self, code: ErrorCode, message: str) -> list[bytes]:
        self._finish(Outcome.ERROR, message)
        return [encode_error(code, message)]

    def _arm(self, now: float) -> None:
        self.deadline = now + self.params.timeout

    def _retry_allowed(self) -> bool:
        self._tries += 1
        limit = self.limits.retries if self.verified else self.limits.unverified_retries
        if self._tries > limit:
            self._finish(Outcome.TIMEOUT, "no answer from peer")
            return False
        return True

    def _progress(self) -> None:
        self.verified = True
        self._tries = 0

    def _peer_error(self, packet: Error) -> list[bytes]:
        self._finish(Outcome.PEER_ERROR, f"peer error {packet.code}: {packet.message}")
        return []

    def cancel(self, message: str = "server shutting down") -> list[bytes]:
        if self.finished:
            return []
        self._finish(Outcome.CANCELLED, message)
        return [encode_error(ErrorCode.NOT_DEFINED, message)]


class ReadTransfer(Transfer):
    """Serve a file to a client (RRQ), lockstep or windowed (RFC 7440).

    Block numbers are tracked unwrapped; only the wire carries them modulo 65536, so files
    of more than 65535 blocks roll over to 0 as tftp-hpa and atftp expect.
    """

    def __init__(
        self, source: BlockSource, limits: Limits, params: Parameters, oack: dict[str, str]
    ) -> None:
        super().__init__(limits, params, oack)
        self.source = source
        self.last_block = source.size // params.blksize + 1
        # With an OACK the client confirms with ACK 0, so "acknowledged" starts one lower.
        self._acked = -1 if self.oack else 0
        self._sent = 0
        # Hot-path copies of the parameters (attribute reads on a frozen dataclass cost more).
        self._blksize = params.blksize
        self._window = params.windowsize
        self._timeout = params.timeout
        # Read-ahead: blocks [_chunk_first, _chunk_end) are in _chunk (none yet).
        self._chunk_blocks = max(READ_AHEAD_BYTES // params.blksize, 1)
        self._chunk: memoryview = memoryview(b"")
        self._chunk_first = self._chunk_end = 0

    def start(self, now: float) -> list[bytes]:
        self._arm(now)
        if self.oack:
            return [self.oack]
        return self._send_window()

    def _block(self, number: int) -> bytes:
        blksize = self._blksize
        if not self._chunk_first <= number < self._chunk_end:
            self._chunk = memoryview(
                self.source.read((number - 1) * blksize, self._chunk_blocks * blksize)
            )
            self._chunk_first = number
            self._chunk_end = number + self._chunk_blocks
        start = (number - self._chunk_first) * blksize
        # Past the end of the content the slice is short or empty: the final block.
        return _HEADER.pack(_DATA, number & 0xFFFF) + self._chunk[start : start + blksize]

    def _send_window(self) -> list[bytes]:
        first = self._acked + 1
        last = min(self._acked + self._window, self.last_block)
        self._sent = last
        if first == last:
            return [self._block(first)]
        return [self._block(n) for n in range(first, last + 1)]

    def receive(self, packet: Packet, now: float) -> list[bytes]:
        if self.finished:
            return []
        if isinstance(packet, Ack):
            return self.on_ack(packet.block, now)
        if isinstance(packet, Error):
            return self._peer_error(packet)
        if isinstance(packet, Request):
            self.on_repeated_request()
            return []  # a retry: the timer resends; or this transfer has just ended
        return self._fail(ErrorCode.ILLEGAL_OPERATION, "unexpected packet during read")

    def on_repeated_request(self) -> bool:
        """The peer sent a request again while this transfer is open; True if that ends it.

        Before the client has answered, or before the last block went out, it is a retry
        (the OACK or a block was lost) and the timer resends. After both, the client has
        every block and has begun something new from the same port (curl reuses its port at
        once), so its final ACK was lost or is still queued: the transfer is over, and the
        new request must not wait out its retries.
        """
        if self.outcome is None and self.verified and self._sent == self.last_block:
            self._finish(Outcome.OK)
        return self.outcome is not None

    def on_ack(self, wire_block: int, now: float) -> list[bytes]:
        """An ACK (the per-block hot path: the I/O layer calls it without building a packet)."""
        if self.outcome is not None:
            return []
        acked = self._acked
        # Map the 16-bit number onto the outstanding range (acked, sent].
        block = acked + ((wire_block - acked) & 0xFFFF)
        if block > self._sent or block == acked:
            # Stale or duplicate ACK: never resend on it (Sorcerer's Apprentice);
            # the timer covers genuine loss.
            return []
        self.verified = True
        self._tries = 0
        self._acked = block
        if block == self.last_block:
            self._finish(Outcome.OK)
            return []
        self.deadline = now + self._timeout
        return self._send_window()

    # A compiled I/O path (simple_tftpd._fastpath) may serve a lockstep transfer's ACKs by
    # on_ack's rules and keep the position itself; these two hand it over and back.

    def position(self) -> tuple[int, int]:
        """(acked, sent): the highest block acknowledged (-1: not even the OACK) and sent."""
        return self._acked, self._sent

    def resume(self, acked: int, sent: int, progressed_at: float) -> None:
        """Take a position reached elsewhere, its last ACK received at `progressed_at`."""
        if self.outcome is not None or acked == self._acked:
            return
        if not (self._acked < acked < self.last_block and acked <= sent <= self.last_block):
            raise ValueError(f"cannot resume at acked={acked} sent={sent} from {self.position()}")
        self.verified = True
        self._tries = 0
        self._acked, self._sent = acked, sent
        self.deadline = progressed_at + self._timeout

    def _finish(self, outcome: Outcome, error: str | None = None) -> None:
        # Counted once at the end instead of on every ACK: bytes the client acknowledged.
        self.bytes = min(max(self._acked, 0) * self.params.blksize, self.source.size)
        super()._finish(outcome, error)

    def on_timer(self, now: float) -> list[bytes]:
        if self.finished or self.deadline is None or now < self.deadline:
            return []
        if not self._retry_allowed():
            return []
        self._arm(now)
        if self._acked < 0:
            self.retransmits += 1
            return [self.oack] if self.oack else []
        window = self._send_window()
        self.retransmits += len(window)
        return window


class WriteTransfer(Transfer):
    """Receive a file from a client (WRQ), lockstep or windowed.

    Data goes to the sink in order; the sink makes it visible only on `commit`, after the
    last block, so a partial upload is never served.
    """

    def __init__(
        self,
        sink: BlockSink,
        limits: Limits,
        params: Parameters,
        oack: dict[str, str],
        netascii_mode: bool = False,
    ) -> None:
        super().__init__(limits, params, oack)
        self.sink = sink
        self._decoder = netascii.Decoder() if netascii_mode else None
        self._received = 0  # highest block written, unwrapped
        self._in_window = 0
        self._nacked = False  # already asked for a resend since the last progress
        self._dallying = False

    def start(self, now: float) -> list[bytes]:
        self._arm(now)
        return [self.oack] if self.oack else [encode_ack(0)]

    def _abort(self, code: ErrorCode, message: str) -> list[bytes]:
        self.sink.abort()
        return self._fail(code, message)

    def cancel(self, message: str = "server shutting down") -> list[bytes]:
        if self._dallying:  # already committed: the upload is complete
            self._finish(Outcome.OK)
            return []
        if not self.finished:
            self.sink.abort()
        return super().cancel(message)

    def receive(self, packet: Packet, now: float) -> list[bytes]:
        if self.finished:
            return []
        if isinstance(packet, Data):
            return self._on_data(packet, now)
        if isinstance(packet, Error):
            self.sink.abort()
            return self._peer_error(packet)
        if isinstance(packet, Request):
            return []
        return self._abort(ErrorCode.ILLEGAL_OPERATION, "unexpected packet during write")

    def _on_data(self, packet: Data, now: float) -> list[bytes]:
        expected = (self._received + 1) & 0xFFFF
        if packet.block != expected:
            # Duplicate or out of order: ask once for a resend from the last good block.
            if self._nacked and not self._dallying:
                return []
            self._nacked = True
            return [encode_ack(self._received)]
        if self._dallying:
            return []
        payload = packet.payload
        if len(payload) > self.params.blksize:
            return self._abort(ErrorCode.ILLEGAL_OPERATION, "block larger than blksize")
        if self.bytes + len(payload) > self.limits.max_upload_bytes:
            return self._abort(ErrorCode.DISK_FULL, "upload exceeds the size limit")
        try:
            self.sink.write(self._decoder.feed(payload) if self._decoder else payload)
        except SinkError as exc:
            return self._abort(exc.code, exc.message)
        self._progress()
        self._nacked = False
        self.bytes += len(payload)
        self._received += 1
        self._in_window += 1
        self._arm(now)
        if len(payload) < self.params.blksize:
            try:
                if self._decoder:
                    self.sink.write(self._decoder.finish())
                self.sink.commit()
            except SinkError as exc:
                return self._abort(exc.code, exc.message)
            # Linger one timeout so a lost final ACK can be answered again.
            self._dallying = True
            return [encode_ack(self._received)]
        if self._in_window >= self.params.windowsize:
            self._in_window = 0
            return [encode_ack(self._received)]
        return []

    def on_timer(self, now: float) -> list[bytes]:
        if self.finished or self.deadline is None or now < self.deadline:
            return []
        if self._dallying:
            self._finish(Outcome.OK)
            return []
        if not self._retry_allowed():
            self.sink.abort()
            return []
        self._arm(now)
        self._in_window = 0
        self.retransmits += 1
        if self._received == 0 and self.oack:
            return [self.oack]
        return [encode_ack(self._received)]
