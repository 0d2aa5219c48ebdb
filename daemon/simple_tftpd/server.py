"""The asyncio UDP layer: sockets, timers and policy around the sans-I/O transfers.

Two modes:
- standard: requests arrive on the listening port, each transfer answers from a fresh
  socket (RFC 1350 TIDs), optionally taken from a configured port range;
- single-port: every transfer answers from the listening socket and sessions are told apart
  by client ip:port, which is what L4 load balancers and stateful firewalls need.

Sockets are driven with `loop.add_reader` and non-blocking `recvfrom_into`/`sendto`: fewer
layers than asyncio transports on the per-packet path. Datagrams land in one reused buffer
and an ACK is read there in place; the transfers still decide what to send. A window goes to
the kernel in one call (UDP segmentation). A send that would block is dropped; the
transfer's retransmit timer covers it like any lost datagram.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import random
import socket
import struct
import sys
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from simple_tftpd.config import Config
from simple_tftpd.content.cache import ContentCache
from simple_tftpd.content.generated import GenerateError, Machine, Rendered
from simple_tftpd.content.resolve import ResolveError
from simple_tftpd.content.store import BytesSource, ContentStore, FileSource, Source
from simple_tftpd.metrics import Metrics, Tally
from simple_tftpd.policy import AccessList, AclRule, RateLimiter, SessionLimiter
from simple_tftpd.protocol.packets import (
    Error,
    ErrorCode,
    MalformedPacket,
    Opcode,
    Request,
    encode_error,
    parse,
)
from simple_tftpd.protocol.transfer import (
    Limits,
    NegotiationError,
    ReadTransfer,
    WriteTransfer,
    negotiate,
)
from simple_tftpd.transfer_log import TransferLog

if TYPE_CHECKING:
    from simple_tftpd._fastpath import Listener, ReadPump

log = logging.getLogger("simple_tftpd.server")

Address = tuple[Any, ...]  # (host, port) or (host, port, flowinfo, scope_id)
RECV_SIZE = 65536
# Datagrams handled per readiness callback before yielding to other sockets and timers.
RECV_BATCH = 64
# UDP generic segmentation offload (Linux 4.18+): a window of equal-sized DATA packets goes
# to the kernel in one sendmsg and leaves as separate datagrams (measured on loopback: about
# 1.7 instead of 4.7 us per 1468-byte datagram). Kernel limits: at most 64 segments and one
# UDP payload's worth of bytes per call.
SOL_UDP = 17
UDP_SEGMENT = 103
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
# GSO only while this worker serves at least this many transfers. One transfer alone is sent
# a datagram at a time so the receiver works on the first blocks while the rest are sent
# (measured, one windowsize-16 transfer on loopback: 0.88x -> 1.01x of atftpd's rate at
# ~1.5x the server CPU per block); with more, CPU is what limits and GSO wins (50 windowed
# clients: ~1.7x the per-datagram aggregate).
GSO_MIN_SESSIONS = 2
# A pump saves ~5 us per block it serves but costs more than that to set up and hand back;
# measured on 1 KiB files (one block): ~10-20 us more per request than the pure path.
PUMP_MIN_BLOCKS = 8
# A busy worker writes its per-transfer counters this often (see metrics.Tally).
TALLY_SECONDS = 0.5
_ACK = 4
_REQUESTS = (1, 2)  # RRQ, WRQ opcodes


def _compiled_module() -> types.ModuleType | None:
    try:
        from simple_tftpd import _fastpath
    except ImportError:  # not built (no C compiler at install time): Python serves everything
        return None
    return _fastpath


FASTPATH = _compiled_module()


@dataclass(eq=False, slots=True)
class Session:
    peer: Address
    sock: socket.socket
    transfer: ReadTransfer | WriteTransfer
    request: Request
    started: float
    own_socket: bool
    source: Source | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    generated: Rendered | None = None
    # Serves the transfer's steady-state ACKs in C; the transfer's position is pulled from it
    # before Python decides anything (_pull) and pushed back after (_push).
    pump: ReadPump | None = field(default=None, repr=False)


@functools.lru_cache(maxsize=8)
def _family_for(bind: str) -> socket.AddressFamily:
    # Cached: every transfer's socket asks, and parsing the address is not free.
    return socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET


def _client_ip(peer: Address) -> str:
    host = str(peer[0])
    return host[7:] if host.startswith("::ffff:") else host


def _peer_text(peer: Address) -> str:
    host = str(peer[0])
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


class TftpServer:
    def __init__(self, config: Config, metrics: Metrics, workers: int = 1) -> None:
        self.metrics = metrics
        self.workers = workers
        self.loop = asyncio.get_running_loop()
        self.sessions: dict[Address, Session] = {}
        self.draining = False
        self._listener: socket.socket | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.cache = ContentCache(0, 0, 0)
        self.session_limiter = SessionLimiter(0, 0)
        self.rate_limiter: RateLimiter | None = None
        self.transfer_log = TransferLog(json_lines=False)
        # Every datagram is received into this one buffer; only non-ACKs are copied out.
        self._recv_buffer = bytearray(RECV_SIZE)
        self._recv_view = memoryview(self._recv_buffer)
        # Windows whose datagrams are larger than this are sent one datagram at a time.
        self._gso_limit = GSO_MAX_BYTES if sys.platform == "linux" else 0
        self._gso_ancillary: dict[int, list[tuple[int, int, bytes]]] = {}
        self._cache_bytes_reported = -1
        self._tally = Tally()
        self._tally_timer: asyncio.TimerHandle | None = None
        # Single-port mode on the compiled path: the listener's reader finds pumps here.
        self._pumps: dict[Address, ReadPump] = {}
        self._compiled_listener: Listener | None = None
        self.apply(config)

    # -- configuration --------------------------------------------------------------------

    def apply(self, config: Config) -> None:
        """Take a (re)loaded config: policy, limits and cache change; sockets stay.

        With N worker processes each worker holds 1/N of the shared budgets (sessions,
        cache bytes, per-client rate and burst): the kernel spreads clients over workers,
        so the sum is close to what the config says without shared state on the hot path.
        """
        self.config = config
        share = self.workers
        tftp, ddos = config.tftp, config.security.network.ddos_protection
        cache = config.performance.cache
        self.limits = Limits(
            max_blksize=tftp.max_blksize,
            max_windowsize=tftp.max_windowsize,
            timeout=tftp.timeout,
            retries=tftp.retries,
            unverified_retries=ddos.unverified_retries if ddos.enabled else tftp.retries,
            max_upload_bytes=tftp.write.max_size_mb << 20,
        )
        mib = 1 << 20
        if cache.enabled:
            self.cache.reconfigure(
                cache.max_size_mb * mib // share, cache.ttl_seconds, cache.max_file_size_mb * mib
            )
        else:
            self.cache.reconfigure(0, 0, 0)
        self.store = ContentStore.from_config(config, self.cache)
        firewall = config.security.network.firewall
        rules = [
            AclRule(rule.action, tuple(rule.sources))
            for rule in firewall.rules
            if firewall.enabled and rule.protocol == "udp" and rule.covers_port(tftp.port)
        ]
        self.acl = AccessList(rules, firewall.default_action if firewall.enabled else "allow")
        rate, burst = ddos.rate_limit / share, -(-ddos.burst // share)
        if not ddos.enabled:
            self.rate_limiter = None
        elif self.rate_limiter is None:
            self.rate_limiter = RateLimiter(rate, burst)
        else:
            self.rate_limiter.reconfigure(rate, burst)  # keeps the buckets across SIGHUP
        per_client = -(-ddos.max_sessions_per_client // share) if ddos.enabled else 0
        max_sessions = -(-config.performance.connection_pool.max_connections // share)
        self.session_limiter.reconfigure(max_sessions, per_client)
        self.transfer_log.json_lines = config.logging.format == "json"
        self.log_transfers = config.logging.transfer_log
        self.fast_path = FASTPATH if config.performance.fast_path else None
        if self._listener is not None:
            self._read_listener()  # a reload may turn the compiled path on or off

    # -- sockets --------------------------------------------------------------------------

    def _new_socket(self, bind: str, port: int, reuse_port: bool = False) -> socket.socket:
        family = _family_for(bind)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if reuse_port:
                # Worker processes share the port; the kernel hashes each client ip:port to
                # one of them, so a session's packets always reach the worker that owns it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and bind == "::":
                # "::" serves IPv4 too (clients appear as ::ffff:a.b.c.d).
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setblocking(False)
            sock.bind((bind, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self) -> None:
        tftp = self.config.tftp
        self._listener = self._new_socket(tftp.bind, tftp.port, reuse_port=self.workers > 1)
        # Bigger buffers absorb boot-storm bursts of requests and ACKs.
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self._listener.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        self._read_listener()
        self.metrics.up.set(1)
        log.info(
            "serving %s on %s port %d (%s mode, %s)",
            tftp.root,
            tftp.bind,
            self.port,
            "single-port" if tftp.single_port else "standard",
            self.fast_path_state,
        )

    @property
    def fast_path_state(self) -> str:
        if self.fast_path is not None:
            return "compiled per-block path"
        if FASTPATH is None:
            return "pure-Python path: simple_tftpd._fastpath is not built"
        return "pure-Python path: performance.fast_path is false"

    def _read_listener(self) -> None:
        # In single-port mode on the compiled path, a compiled reader serves transfers' ACKs
        # from the listening socket and hands everything else to _on_listener_datagram.
        sock = self._listener
        assert sock is not None
        self.loop.remove_reader(sock.fileno())
        if self._compiled_listener is not None:
            self._compiled_listener.close()
            self._compiled_listener = None
        if self.fast_path is not None and self.config.tftp.single_port:
            self._compiled_listener = self.fast_path.Listener(
                sock=sock.fileno(),
                recv_buffer=self._recv_buffer,
                pumps=self._pumps,
                sessions=self.sessions,
                fallback=self._on_listener_datagram,
            )
            self.loop.add_reader(sock.fileno(), self._compiled_listener)
        else:
            self.loop.add_reader(sock.fileno(), self._on_listener_readable)

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def _session_socket(self) -> socket.socket:
        tftp = self.config.tftp
        if tftp.port_range is None:
            return self._new_socket(tftp.bind, 0)
        low, high = tftp.port_range.low, tftp.port_range.high
        # Random probes, then a bounded scan: ports in use by other transfers are skipped.
        candidates = [random.randint(low, high) for _ in range(16)]
        candidates += range(low, min(high, low + 4096) + 1)
        for port in candidates:
            try:
                return self._new_socket(tftp.bind, port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, "no free port in tftp.port_range")

    def _send(self, sock: socket.socket, datagrams: list[bytes], peer: Address) -> None:
        if (
            len(datagrams) > 1
            and len(datagrams[0]) <= self._gso_limit
            and len(self.sessions) >= GSO_MIN_SESSIONS
        ):
            datagrams = self._send_segmented(sock, datagrams, peer)
        for datagram in datagrams:
            try:
                sock.sendto(datagram, peer)
            except (BlockingIOError, InterruptedError):
                return  # dropped; the retransmit timer recovers
            except OSError as exc:
                log.debug("send to %s failed: %s", _peer_text(peer), exc)
                return

    def _send_segmented(
        self, sock: socket.socket, datagrams: list[bytes], peer: Address
    ) -> list[bytes]:
        """Send runs of equal-sized datagrams (a read window) with UDP GSO, a run per call.

        Returns what is left to send one by one: a lone last datagram, or everything from
        the first run the kernel refused (no checksum offload on the route, segments above
        the MTU); segments of that size or larger then no longer use GSO.
        """
        size = len(datagrams[0])
        per_call = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
        if per_call < 2:
            return datagrams
        ancillary = self._gso_ancillary.get(size)
        if ancillary is None:
            ancillary = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
            self._gso_ancillary[size] = ancillary
        start, count = 0, len(datagrams)
        while count - start > 1:
            run = datagrams[start : start + per_call]
            # Only the last segment of a call may be shorter than the others.
            if set(map(len, run[:-1])) != {size} or len(run[-1]) > size:
                break
            try:
                sock.sendmsg([b"".join(run)], ancillary, 0, peer)
            except (BlockingIOError, InterruptedError):
                return []  # dropped; the retransmit timer recovers
            except OSError as exc:
                self._gso_limit = min(self._gso_limit, size - 1)
                log.info("UDP segmentation refused for %d-byte datagrams (%s)", size, exc)
                break
            start += len(run)
        return datagrams[start:]

    def _send_error(self, sock: socket.socket, peer: Address, code: ErrorCode, msg: str) -> None:
        self.metrics.errors.labels(str(int(code))).inc()
        self._send(sock, [encode_error(code, msg)], peer)

    # -- receiving ------------------------------------------------------------------------

    def _on_listener_readable(self) -> None:
        sock = self._listener
        assert sock is not None
        buffer = self._recv_buffer
        for _ in range(RECV_BATCH):
            try:
                size, peer = sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("listener receive error: %s", exc)
                continue
            if self._on_listener_datagram(size, peer):
                return

    def _on_listener_datagram(self, size: int, peer: Address) -> bool:
        """A datagram on the listening socket, `size` bytes in the receive buffer.

        True if there is no point reading on: the only peer was just answered."""
        sock = self._listener
        assert sock is not None
        buffer, sessions = self._recv_buffer, self.sessions
        session = sessions.get(peer)
        if session is None:
            self._on_new_datagram(sock, bytes(self._recv_view[:size]), peer)
            return False
        if size >= 2 and buffer[0] == 0 and buffer[1] in _REQUESTS:
            if self._ended_by_new_request(session):
                self._on_new_datagram(sock, bytes(self._recv_view[:size]), peer)
            # Otherwise a retried request while the transfer runs: its own timer resends,
            # so a second transfer is never started.
            return False
        if session.sock is not sock:
            return False  # standard mode: the transfer's traffic goes to its own port
        if session.pump is None:
            answered = self._on_session_datagram(session, size)
        else:
            self._pull(session)
            answered = self._on_session_datagram(session, size)
            self._push(session)
        return answered and len(sessions) == 1

    def _ended_by_new_request(self, session: Session) -> bool:
        """A request from the peer of an open transfer: True if that transfer is now over.

        Not by reading the transfer's own socket first: a retried request queued on the
        listener cannot be told from a new one that way (the final ACK may be queued on the
        transfer's socket either way), and a retry must never start a second transfer."""
        self._pull(session)
        transfer = session.transfer
        if type(transfer) is ReadTransfer and transfer.on_repeated_request():
            self._close(session)
            return True
        return False

    def _on_session_readable(self, session: Session) -> None:
        sock = session.sock
        buffer = self._recv_buffer
        for _ in range(RECV_BATCH):
            try:
                size, peer = sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("session receive error: %s", exc)
                continue
            if peer != session.peer:
                self._on_stranger(sock, peer)
                continue
            if self._on_session_datagram(session, size):
                # Answered (or ended): the peer's next packet cannot have arrived yet, and
                # looking for it would cost a failed recvfrom. The loop calls back for it.
                return

    def _on_stranger(self, sock: socket.socket, peer: Address) -> None:
        # A stranger on a transfer's port: tell it, leave the transfer alone.
        if self._admit(_client_ip(peer)):
            self._send_error(sock, peer, ErrorCode.UNKNOWN_TID, "Unknown transfer ID")

    def _on_pumped_datagram(self, session: Session, size: int, stranger: Address | None) -> bool:
        """A datagram the session's ReadPump leaves to Python, `size` bytes in the receive
        buffer (`stranger`: from another address). True if answered or the transfer ended."""
        if stranger is not None:
            self._on_stranger(session.sock, stranger)
            return False
        self._pull(session)
        answered = self._on_session_datagram(session, size)
        self._push(session)
        return answered

    def _admit(self, ip: str) -> bool:
        """Per-client rate limit for anything that makes the daemon answer a stranger."""
        if self.rate_limiter is None or self.rate_limiter.allow(ip, self.loop.time()):
            return True
        self.metrics.rate_limited.inc()
        return False

    def _on_new_datagram(self, sock: socket.socket, data: bytes, peer: Address) -> None:
        ip = _client_ip(peer)
        if not self._admit(ip):
            return  # silent: an answer is what a reflection attack wants
        try:
            packet = parse(data)
        except MalformedPacket as exc:
            self.metrics.malformed.inc()
            self._send_error(sock, peer, exc.code, exc.message)
            return
        if not isinstance(packet, Request):
            if not isinstance(packet, Error):  # never answer an ERROR (no loops)
                self._send_error(sock, peer, ErrorCode.UNKNOWN_TID, "Unknown transfer ID")
            return
        if not self.acl.allows(ip):
            self.metrics.acl_denied.inc()
            self._send_error(sock, peer, ErrorCode.ACCESS_VIOLATION, "Access denied")
            return
        if self.draining:
            self._send_error(sock, peer, ErrorCode.NOT_DEFINED, "Server shutting down")
            return
        self._start_session(sock, packet, peer, ip)

    # -- sessions -------------------------------------------------------------------------

    def _start_session(
        self, listener: socket.socket, request: Request, peer: Address, ip: str
    ) -> None:
        now = self.loop.time()
        if not self.session_limiter.try_acquire(ip):
            self._send_error(listener, peer, ErrorCode.NOT_DEFINED, "Server busy, try later")
            return
        source: Source | None = None
        generated: Rendered | None = None
        try:
            transfer: ReadTransfer | WriteTransfer
            if request.opcode is Opcode.RRQ:
                opened = self.store.open_read(
                    request.filename, request.mode == "netascii", now, client_ip=ip
                )
                source, generated = opened.source, opened.generated
                if generated is None:  # rendered files never go through the cache
                    hit = opened.cache_hit
                    self._count(self.metrics.cache_hits if hit else self.metrics.cache_misses)
                params, oack = negotiate(request, self.limits, source.size)
                transfer = ReadTransfer(source, self.limits, params, oack)
            else:
                if not self.config.tftp.write.enabled:
                    raise ResolveError(ErrorCode.ACCESS_VIOLATION, "Uploads are disabled")
                params, oack = negotiate(request, self.limits, None)
                sink = self.store.open_write(request.filename)
                transfer = WriteTransfer(
                    sink, self.limits, params, oack, request.mode == "netascii"
                )
        except (ResolveError, NegotiationError) as exc:
            self.session_limiter.release(ip)
            if source is not None:
                source.close()
            code = exc.code if isinstance(exc, ResolveError) else ErrorCode.OPTION_NEGOTIATION
            self._send_error(listener, peer, ErrorCode(code), exc.message)
            failed = exc if isinstance(exc, GenerateError) else None
            machine = generated.machine if generated else failed.machine if failed else None
            template = generated.template if generated else failed.template if failed else None
            kind = "file" if template is None else "generated"
            # A template that fails to render is the server's fault, not a refused request.
            outcome = "error" if failed and failed.code == ErrorCode.NOT_DEFINED else "refused"
            if not request.is_write:
                self.metrics.fetches.labels("tftp", kind, outcome).inc()
            self._log_transfer(peer, request, None, 0.0, outcome, exc.message, machine, template)
            return
        except OSError as exc:
            self.session_limiter.release(ip)
            if source is not None:
                source.close()
            log.error("cannot start transfer of %r: %s", request.filename, exc)
            self._send_error(listener, peer, ErrorCode.NOT_DEFINED, "Server error")
            return
        if self.config.tftp.single_port:
            sock, own = listener, False
        else:
            try:
                sock, own = self._session_socket(), True
            except OSError as exc:
                self.session_limiter.release(ip)
                if source is not None:
                    source.close()
                transfer.cancel()
                log.error("no socket for a new transfer: %s", exc)
                self._send_error(listener, peer, ErrorCode.NOT_DEFINED, "Server busy, try later")
                return
        session = Session(peer, sock, transfer, request, now, own, source, generated=generated)
        self.sessions[peer] = session
        self._idle.clear()
        # The active-sessions gauge is written with the tally: at once when this worker
        # leaves idle (a lone transfer shows immediately), else with the next batch.
        if len(self.sessions) == 1:
            self.write_tally()
        else:
            self._count(None)
        self._send(sock, transfer.start(now), peer)
        session.pump = self._new_pump(session)
        if own:
            reader = session.pump or functools.partial(self._on_session_readable, session)
            self.loop.add_reader(sock.fileno(), reader)
        elif session.pump is not None:
            self._pumps[peer] = session.pump
        self._after_event(session)

    def _new_pump(self, session: Session) -> ReadPump | None:
        """The compiled path for a lockstep read with enough blocks to go, if built."""
        transfer = session.transfer
        if self.fast_path is None or type(transfer) is not ReadTransfer:
            return None
        acked, sent = transfer.position()
        if transfer.params.windowsize != 1 or transfer.last_block - sent < PUMP_MIN_BLOCKS:
            return None
        source, peer = transfer.source, session.peer
        pump: ReadPump = self.fast_path.ReadPump(
            sock=session.sock.fileno(),
            family=session.sock.family,
            host=peer[0],
            port=peer[1],
            flowinfo=peer[2] if len(peer) > 2 else 0,
            scope_id=peer[3] if len(peer) > 3 else 0,
            content=source.view if isinstance(source, BytesSource) else b"",
            file=source.fd if isinstance(source, FileSource) else -1,
            size=source.size,
            blksize=transfer.params.blksize,
            last_block=transfer.last_block,
            acked=acked,
            sent=sent,
            recv_buffer=self._recv_buffer,
            fallback=functools.partial(self._on_pumped_datagram, session),
        )
        return pump

    def _pull(self, session: Session) -> None:
        # The pump's position into the transfer, before the pure path decides anything.
        pump = session.pump
        if pump is not None and type(session.transfer) is ReadTransfer:
            session.transfer.resume(pump.acked, pump.sent, pump.progressed_at)

    def _push(self, session: Session) -> None:
        pump = session.pump
        if pump is not None and type(session.transfer) is ReadTransfer:
            pump.acked, pump.sent = session.transfer.position()

    def _on_session_datagram(self, session: Session, size: int) -> bool:
        """One datagram from the session's peer, `size` bytes in the receive buffer.

        True if the session sent something or ended, i.e. it now waits for the peer.
        """
        transfer = session.transfer
        buffer = self._recv_buffer
        if size >= 4 and buffer[1] == _ACK and buffer[0] == 0 and type(transfer) is ReadTransfer:
            # The per-block hot path: an ACK during a read, read from the buffer in place.
            out = transfer.on_ack((buffer[2] << 8) | buffer[3], self.loop.time())
            if out:
                self._send(session.sock, out, session.peer)
            if transfer.outcome is not None or session.timer is None:
                self._after_event(session)
            # An ACK only ever moves the deadline later: the armed timer stays (when it
            # fires early, _on_timer re-arms it for the current deadline).
            return bool(out) or transfer.outcome is not None
        try:
            packet = parse(bytes(self._recv_view[:size]))
        except MalformedPacket as exc:
            self.metrics.malformed.inc()
            # Garbage from the real peer ends nothing: its next good packet still counts.
            log.debug("malformed packet from %s: %s", _peer_text(session.peer), exc.message)
            return False
        out = transfer.receive(packet, self.loop.time())
        if out:
            self._send(session.sock, out, session.peer)
        self._after_event(session)
        return bool(out) or transfer.finished

    def _after_event(self, session: Session) -> None:
        transfer = session.transfer
        if transfer.finished:
            self._close(session)
            return
        deadline = transfer.deadline
        # Timers are moved only when the deadline comes earlier; a later deadline is
        # picked up when the old timer fires, which keeps the per-packet cost low.
        if deadline is not None and (session.timer is None or deadline < session.timer.when()):
            if session.timer is not None:
                session.timer.cancel()
            session.timer = self.loop.call_at(deadline, self._on_timer, session)

    def _on_timer(self, session: Session) -> None:
        session.timer = None
        transfer = session.transfer
        if transfer.finished:
            return
        self._pull(session)
        now = self.loop.time()
        if transfer.deadline is not None and transfer.deadline > now:
            session.timer = self.loop.call_at(transfer.deadline, self._on_timer, session)
            return
        before = transfer.retransmits
        out = transfer.on_timer(now)
        self.metrics.retransmits.inc(transfer.retransmits - before)
        if out:
            self._send(session.sock, out, session.peer)
        self._push(session)
        self._after_event(session)

    def _close(self, session: Session) -> None:
        if self.sessions.get(session.peer) is not session:
            return
        del self.sessions[session.peer]
        if session.timer is not None:
            session.timer.cancel()
        if session.own_socket:
            self.loop.remove_reader(session.sock.fileno())
            session.sock.close()
        if session.pump is not None:
            self._pumps.pop(session.peer, None)
            session.pump.close()  # before the source's file is closed below
        if session.source is not None:
            session.source.close()
        self.session_limiter.release(_client_ip(session.peer))
        transfer = session.transfer
        outcome = transfer.outcome.value if transfer.outcome else "unknown"
        direction = "write" if session.request.is_write else "read"
        duration = self.loop.time() - session.started
        metrics, count = self.metrics, self._count
        count(metrics.labelled(metrics.transfers, direction, outcome))
        metrics.labelled(metrics.duration, direction).observe(duration)
        generated = session.generated
        kind = "file" if generated is None else "generated"
        if direction == "read":
            count(metrics.bytes_sent, transfer.bytes)
            count(metrics.labelled(metrics.fetches, "tftp", kind, outcome))
            count(metrics.labelled(metrics.fetched_bytes, "tftp", kind), transfer.bytes)
        else:
            count(metrics.bytes_received, transfer.bytes)
        if self.cache.current_bytes != self._cache_bytes_reported:
            self._cache_bytes_reported = self.cache.current_bytes
            metrics.cache_bytes.set(self._cache_bytes_reported)
        self._log_transfer(
            session.peer,
            session.request,
            transfer,
            duration,
            outcome,
            transfer.error,
            generated.machine if generated else None,
            generated.template if generated else None,
        )
        if not self.sessions:
            self._idle.set()
            self.write_tally()

    def _count(self, child: Any, amount: float = 1.0) -> None:
        """Add to a per-transfer counter (None: only the session count changed); written
        when this worker goes idle, or TALLY_SECONDS after the first count if it stays busy."""
        if child is not None:
            self._tally.add(child, amount)
        if self._tally_timer is None:
            self._tally_timer = self.loop.call_later(TALLY_SECONDS, self.write_tally)

    def write_tally(self) -> None:
        """Write the batched counts and the session count to the metrics."""
        if self._tally_timer is not None:
            self._tally_timer.cancel()
            self._tally_timer = None
        self._tally.flush()
        self.metrics.active_sessions.set(len(self.sessions))

    def _log_transfer(
        self,
        peer: Address,
        request: Request,
        transfer: ReadTransfer | WriteTransfer | None,
        duration: float,
        outcome: str,
        error: str | None,
        machine: Machine | None = None,
        template: str | None = None,
    ) -> None:
        if not self.log_transfers:
            return
        record: dict[str, object] = {
            "event": "transfer",
            "protocol": "tftp",
            "client": _peer_text(peer),
            **(machine.log_fields() if machine else {}),
            "file": request.filename,
            "direction": "write" if request.is_write else "read",
            "mode": request.mode,
            "bytes": transfer.bytes if transfer else 0,
            "duration_s": round(duration, 6),
            "outcome": outcome,
        }
        if template is not None:
            record["generated"] = template
        if transfer is not None:
            record["blksize"] = transfer.params.blksize
            record["windowsize"] = transfer.params.windowsize
            record["retransmits"] = transfer.retransmits
        if error:
            record["error"] = error
        self.transfer_log.record(record)

    # -- lifecycle ------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Refuse new transfers, let running ones finish for up to `timeout`, then cancel."""
        self.draining = True
        self.metrics.up.set(0)
        log.info("draining %d transfer(s) for up to %.0fs", len(self.sessions), timeout)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("drain timeout: cancelling %d transfer(s)", len(self.sessions))
        for session in list(self.sessions.values()):
            self._pull(session)
            self._send(session.sock, session.transfer.cancel(), session.peer)
            self._close(session)

    def close(self) -> None:
        self.transfer_log.flush()
        self.write_tally()
        if self._compiled_listener is not None:
            self._compiled_listener.close()
            self._compiled_listener = None
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
