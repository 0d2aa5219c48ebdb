"""HTTP boot: the content tree and the generated files, read-only over HTTP.

iPXE `chain http://...` and UEFI HTTP boot fetch kernels and images over HTTP, which is far
faster than TFTP. This serves the same content as TFTP, through the same ContentStore: the same
name rules (PathResolver, remap), the same generated files (rendered for the requesting
machine), the same access list. GET and HEAD only, with byte ranges (RFC 9110): one range, or
several as multipart/byteranges.

It runs where the management API runs (the supervisor when there are worker processes): on
the API server under `netboot.http.path_prefix`, or on a port of its own. Each request is one
transfer-log line with `protocol=http` and the machine it was for, and moves
`simple_tftpd_fetches_total{protocol="http"}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import re
import secrets
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import TYPE_CHECKING

from aiohttp import web

from simple_tftpd.config import Config, HttpBootConfig
from simple_tftpd.content.cache import ContentCache
from simple_tftpd.content.generated import GenerateError, Machine, normalize_ip
from simple_tftpd.content.resolve import ResolveError
from simple_tftpd.content.store import ContentStore, Opened
from simple_tftpd.policy import AccessList, AclRule
from simple_tftpd.transfer_log import TransferLog

if TYPE_CHECKING:
    from simple_tftpd.daemon import ApiHost

log = logging.getLogger("simple_tftpd.http_boot")

CHUNK = 256 << 10
# More ranges than this, or ranges adding up to more than the file, are answered with the whole
# file (RFC 9110 lets a server ignore Range): a request must not multiply what it costs.
MAX_RANGES = 16
# 19 digits reach past any file size; longer numbers are refused before int() sees them.
_RANGE_SPEC_RE = re.compile(r"\s*(\d{0,19})\s*-\s*(\d{0,19})\s*")
_STATUS_BY_CODE = {1: 404, 2: 403}
_REASON = {403: "Forbidden", 404: "Not Found", 416: "Range Not Satisfiable", 500: "Server Error"}

Range = tuple[int, int]  # first and last byte, inclusive


def boot_access_list(config: Config, http_port: int) -> AccessList:
    """The TFTP access list, extended by TCP rules for the HTTP port.

    HTTP boot serves the same files as TFTP, so a network kept away from TFTP by a UDP rule
    must not get them over HTTP just because nobody wrote the matching TCP rule.
    """
    firewall = config.security.network.firewall
    if not firewall.enabled:
        return AccessList([], "allow")
    rules = [
        AclRule(rule.action, tuple(rule.sources))
        for rule in firewall.rules
        if (rule.protocol == "udp" and rule.covers_port(config.tftp.port))
        or (rule.protocol == "tcp" and rule.covers_port(http_port))
    ]
    return AccessList(rules, firewall.default_action)


def parse_range(header: str, size: int) -> list[Range] | None:
    """The satisfiable ranges of a Range header, [] if none is, None to serve the whole file.

    None also covers what RFC 9110 lets a server ignore: a malformed header, another unit, an
    empty file, too many ranges or ranges adding up to more than the file.
    """
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or size == 0:
        return None
    ranges: list[Range] = []
    items = specs.split(",")
    if len(items) > MAX_RANGES:
        return None
    for item in items:
        match = _RANGE_SPEC_RE.fullmatch(item)
        if match is None:
            return None
        first_text, last_text = match.groups()
        if first_text:
            first = int(first_text)
            last = int(last_text) if last_text else size - 1
            if last_text and last < first:
                return None  # syntactically invalid: the whole header is ignored
            if first < size:
                ranges.append((first, min(last, size - 1)))
        elif last_text:
            suffix = int(last_text)
            if suffix > 0:
                ranges.append((max(0, size - suffix), size - 1))
        else:
            return None
    if sum(last - first + 1 for first, last in ranges) > size:
        return None
    return ranges


@dataclass
class _State:
    """What requests need from one version of the config."""

    config: Config
    store: ContentStore
    acl: AccessList


class BootService:
    """Answers boot requests of one listener from the current config of its host process."""

    def __init__(self, host: ApiHost, http: HttpBootConfig, port: int) -> None:
        self.host = host
        self.http = http  # the listener settings it started with; they change on restart only
        self.port = port
        self.transfer_log = TransferLog(json_lines=False)
        self._state: _State | None = None

    def _current(self) -> _State:
        config = self.host.config
        if self._state is None or self._state.config is not config:
            # Built again after SIGHUP: new rules, ACL and generated-file patterns apply at once.
            if config.netboot.http != self.http:
                log.warning("netboot.http changed; the HTTP boot listener changes on restart")
            # No hot-file cache here: big images stream from the page cache, small files are
            # cheap to read, generated files are never cached, and the TFTP workers keep theirs.
            store = ContentStore.from_config(config, ContentCache(0, 0, 0))
            self._state = _State(config, store, boot_access_list(config, self.port))
            self.transfer_log.json_lines = config.logging.format == "json"
        return self._state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        state = self._current()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        client_ip = normalize_ip(request.remote or "") or (request.remote or "")
        name = request.match_info["path"]
        outcome, sent, status = "refused", 0, 500
        machine: Machine | None = None
        template: str | None = None
        try:
            if not state.acl.allows(client_ip):
                outcome, status = "denied", 403
                return _error(status)
            try:
                opened = state.store.open_read(name, False, started, client_ip, "http")
            except ResolveError as exc:
                if isinstance(exc, GenerateError):
                    machine, template = exc.machine, exc.template
                status = _STATUS_BY_CODE.get(exc.code, 500)
                outcome = "error" if status == 500 else "refused"
                return _error(status)
            except OSError as exc:
                log.error("cannot open %r for HTTP: %s", name, exc)
                outcome, status = "error", 500
                return _error(status)
            if opened.generated is not None:
                machine, template = opened.generated.machine, opened.generated.template
            try:
                response, spans = _prepare(request, opened)
                status = response.status
                if status == 416:
                    return response
                await response.prepare(request)
                if request.method != "HEAD":
                    sent = await _send_body(response, opened, spans)
                await response.write_eof()
                outcome = "ok"
                return response
            except ConnectionError:
                outcome = "aborted"  # the client went away
                return response
            except _Truncated:
                outcome = "error"
                log.error("%s changed size while being sent over HTTP", opened.path)
                if request.transport is not None:
                    # Fewer bytes than Content-Length promised: only a cut connection tells
                    # the client that this response is not the file.
                    request.transport.abort()
                return response
            finally:
                opened.source.close()
        finally:
            self._record(request, peer, name, machine, template, status, sent, outcome, started)

    def _record(
        self,
        request: web.Request,
        peer: object,
        name: str,
        machine: Machine | None,
        template: str | None,
        status: int,
        sent: int,
        outcome: str,
        started: float,
    ) -> None:
        kind = "file" if template is None else "generated"
        metrics = self.host.metrics
        metrics.fetches.labels("http", kind, outcome).inc()
        metrics.fetched_bytes.labels("http", kind).inc(sent)
        if not self.host.config.logging.transfer_log:
            return
        record: dict[str, object] = {
            "event": "transfer",
            "protocol": "http",
            "client": _peer_text(peer, request.remote),
            **(machine.log_fields() if machine else {}),
            "file": name,
            "direction": "read",
            "method": request.method,
            "status": status,
        }
        if "Range" in request.headers:
            record["range"] = request.headers["Range"][:200]
        record["bytes"] = sent
        record["duration_s"] = round(asyncio.get_running_loop().time() - started, 6)
        record["outcome"] = outcome
        if template is not None:
            record["generated"] = template
        self.transfer_log.record(record)

    async def close(self, app: web.Application) -> None:
        self.transfer_log.flush()


class _Truncated(Exception):
    pass


def _peer_text(peer: object, remote: str | None) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return remote or "-"


def _error(status: int) -> web.Response:
    # HEAD answers carry no body; aiohttp drops it, the status and length still tell.
    return web.Response(status=status, text=_REASON[status] + "\n")


@dataclass(frozen=True, slots=True)
class _Span:
    """Bytes first..last of the file, framed by `head` and `tail` (multipart headers)."""

    first: int
    last: int
    head: bytes = b""
    tail: bytes = b""


def _prepare(request: web.Request, opened: Opened) -> tuple[web.StreamResponse, list[_Span]]:
    """The response head for `opened` and what its body is made of."""
    size = opened.source.size
    headers = {"Accept-Ranges": "bytes"}
    if opened.generated is not None:
        headers["ETag"] = '"g' + hashlib.sha256(opened.generated.data).hexdigest()[:32] + '"'
        # Rendered for the asking machine and at this moment: no cache may hand it to another.
        headers["Cache-Control"] = "no-store"
        content_type = "text/plain; charset=utf-8"
    else:
        key = opened.key
        if key is not None:
            headers["ETag"] = f'"{key.inode:x}-{key.size:x}-{key.mtime_ns:x}"'
            headers["Last-Modified"] = formatdate(key.mtime_ns / 1e9, usegmt=True)
        content_type = mimetypes.guess_type(opened.path)[0] or "application/octet-stream"
    ranges: list[Range] | None = None
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    # If-Range: the ranges only hold for the version the client has, else the whole file.
    if range_header is not None and (
        if_range is None or if_range in (headers.get("ETag"), headers.get("Last-Modified"))
    ):
        ranges = parse_range(range_header, size)
    if ranges == []:
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers, text=_REASON[416] + "\n"), []
    if ranges is None:
        status, spans = 200, [_Span(0, size - 1)]
    elif len(ranges) == 1:
        status, spans = 206, [_Span(*ranges[0])]
        headers["Content-Range"] = f"bytes {ranges[0][0]}-{ranges[0][1]}/{size}"
    else:
        status, boundary = 206, secrets.token_hex(16)
        spans = [
            _Span(
                first,
                last,
                f"--{boundary}\r\nContent-Type: {content_type}\r\n"
                f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n".encode(),
                b"\r\n",
            )
            for first, last in ranges
        ]
        spans[-1] = replace(spans[-1], tail=f"\r\n--{boundary}--\r\n".encode())
        content_type = f"multipart/byteranges; boundary={boundary}"
    response = web.StreamResponse(status=status, headers=headers)
    response.headers["Content-Type"] = content_type
    response.content_length = sum(
        len(span.head) + span.last - span.first + 1 + len(span.tail) for span in spans
    )
    return response, spans


async def _send_body(response: web.StreamResponse, opened: Opened, spans: list[_Span]) -> int:
    """Write the spans; the number of file bytes sent. A read that comes up short (the file
    was truncated meanwhile) raises _Truncated."""
    source, sent = opened.source, 0
    for span in spans:
        if span.head:
            await response.write(span.head)
        offset = span.first
        while offset <= span.last:
            want = min(CHUNK, span.last + 1 - offset)
            chunk = source.read(offset, want)
            if len(chunk) < want:
                raise _Truncated
            await response.write(chunk)
            offset += want
            sent += want
        if span.tail:
            await response.write(span.tail)
    return sent


def add_routes(app: web.Application, host: ApiHost) -> None:
    """HTTP boot on the API server, or on its own port started and stopped with the API."""
    http = host.config.netboot.http
    if not http.enabled:
        return
    if http.port is None:
        service = BootService(host, http, host.config.api.port)
        _add_boot_routes(app, service, http.path_prefix)
        app.on_cleanup.append(service.close)
        return
    service = BootService(host, http, http.port)
    boot_app = web.Application()
    _add_boot_routes(boot_app, service, http.path_prefix)
    boot_app.on_cleanup.append(service.close)
    runner = web.AppRunner(boot_app, access_log=None)

    async def start(app: web.Application) -> None:
        await runner.setup()
        # asyncio makes a "::" socket IPv6-only; None listens on every IPv4 and IPv6 address,
        # which is what "::" means for the TFTP socket.
        bind = None if http.bind == "::" else http.bind
        await web.TCPSite(runner, bind, http.port, reuse_address=True).start()
        log.info("HTTP boot on %s port %d", http.bind, http.port)

    async def stop(app: web.Application) -> None:
        await runner.cleanup()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def _add_boot_routes(app: web.Application, service: BootService, prefix: str) -> None:
    # add_get answers HEAD too; nothing here writes, lists directories or redirects.
    app.router.add_get(prefix.rstrip("/") + "/{path:.+}", service.handle)
