"""TFTP packet codec (RFC 1350, option extension RFC 2347).

Parsing is strict and total: any byte string either decodes to a packet or raises
`MalformedPacket` carrying the TFTP error code to answer with, so the I/O layer never
sees an unexpected exception from hostile input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_NEGOTIATION = 8


# Bounds that keep a hostile request from costing more than a small, fixed amount.
MAX_REQUEST_SIZE = 1024
MAX_FILENAME_BYTES = 1024
MAX_OPTIONS = 16
MAX_OPTION_BYTES = 64
MAX_ERROR_MESSAGE = 255
MAX_BLKSIZE = 65464

_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")


class MalformedPacket(Exception):
    """The datagram is not a valid TFTP packet; `code` is the error to answer with."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.ILLEGAL_OPERATION) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    """RRQ or WRQ. Option names are lower-cased; values are kept as sent."""

    opcode: Opcode
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def is_write(self) -> bool:
        return self.opcode is Opcode.WRQ


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OAck:
    options: dict[str, str]


Packet = Request | Data | Ack | Error | OAck


def _split_strings(body: bytes, what: str) -> list[bytes]:
    if not body.endswith(b"\0"):
        raise MalformedPacket(f"{what} is not NUL-terminated")
    return body[:-1].split(b"\0")


def _decode(raw: bytes) -> str:
    # surrogateescape round-trips any byte sequence to the file system unchanged.
    return raw.decode("utf-8", "surrogateescape")


def _parse_request(opcode: Opcode, body: bytes) -> Request:
    parts = _split_strings(body, "request")
    if len(parts) < 2:
        raise MalformedPacket("request lacks filename or mode")
    raw_name, raw_mode, *raw_options = parts
    if not raw_name:
        raise MalformedPacket("empty filename")
    if len(raw_name) > MAX_FILENAME_BYTES:
        raise MalformedPacket("filename too long", ErrorCode.ACCESS_VIOLATION)
    mode = raw_mode.decode("ascii", "replace").lower()
    if mode not in ("octet", "netascii"):
        if mode == "mail":
            raise MalformedPacket("mail mode is not supported")
        raise MalformedPacket("unknown transfer mode")
    if len(raw_options) % 2:
        raise MalformedPacket("option without a value", ErrorCode.OPTION_NEGOTIATION)
    if len(raw_options) > 2 * MAX_OPTIONS:
        raise MalformedPacket("too many options", ErrorCode.OPTION_NEGOTIATION)
    options: dict[str, str] = {}
    for i in range(0, len(raw_options), 2):
        name, value = raw_options[i], raw_options[i + 1]
        if not name or len(name) > MAX_OPTION_BYTES or len(value) > MAX_OPTION_BYTES:
            raise MalformedPacket("malformed option", ErrorCode.OPTION_NEGOTIATION)
        # First occurrence wins; a repeated option cannot override a checked one.
        options.setdefault(
            name.decode("ascii", "replace").lower(), value.decode("ascii", "replace")
        )
    return Request(opcode, _decode(raw_name), mode, options)


def parse(datagram: bytes) -> Packet:
    """Decode one datagram. Raises MalformedPacket for anything that is not TFTP."""
    if len(datagram) < 2:
        raise MalformedPacket("truncated packet")
    (raw_opcode,) = _OPCODE.unpack_from(datagram)
    try:
        opcode = Opcode(raw_opcode)
    except ValueError:
        raise MalformedPacket("unknown opcode") from None
    if opcode is Opcode.DATA:
        if len(datagram) < 4:
            raise MalformedPacket("truncated DATA")
        if len(datagram) > 4 + MAX_BLKSIZE:
            raise MalformedPacket("oversized DATA")
        return Data(_HEADER.unpack_from(datagram)[1], datagram[4:])
    if opcode is Opcode.ACK:
        if len(datagram) < 4:
            raise MalformedPacket("truncated ACK")
        # Trailing bytes after an ACK are tolerated: some firmware pads small frames.
        return Ack(_HEADER.unpack_from(datagram)[1])
    if opcode is Opcode.ERROR:
        if len(datagram) < 4:
            raise MalformedPacket("truncated ERROR")
        message = datagram[4:].split(b"\0", 1)[0][:MAX_ERROR_MESSAGE]
        return Error(_HEADER.unpack_from(datagram)[1], message.decode("utf-8", "replace"))
    if len(datagram) > MAX_REQUEST_SIZE:
        raise MalformedPacket("oversized request")
    if opcode is Opcode.OACK:
        parts = _split_strings(datagram[2:], "OACK")
        if len(parts) % 2:
            raise MalformedPacket("OACK option without a value")
        return OAck(
            {
                parts[i].decode("ascii", "replace").lower(): parts[i + 1].decode("ascii", "replace")
                for i in range(0, len(parts), 2)
            }
        )
    return _parse_request(opcode, datagram[2:])


def encode_request(request: Request) -> bytes:
    out = bytearray(_OPCODE.pack(request.opcode))
    out += request.filename.encode("utf-8", "surrogateescape") + b"\0"
    out += request.mode.encode("ascii") + b"\0"
    for name, value in request.options.items():
        out += name.encode("ascii") + b"\0" + value.encode("ascii") + b"\0"
    return bytes(out)


def encode_data_header(block: int) -> bytes:
    return _HEADER.pack(Opcode.DATA, block & 0xFFFF)


def encode_data(block: int, payload: bytes | memoryview) -> bytes:
    return _HEADER.pack(Opcode.DATA, block & 0xFFFF) + payload


def encode_ack(block: int) -> bytes:
    return _HEADER.pack(Opcode.ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    text = message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE]
    return _HEADER.pack(Opcode.ERROR, code) + text + b"\0"


def encode_oack(options: dict[str, str]) -> bytes:
    out = bytearray(_OPCODE.pack(Opcode.OACK))
    for name, value in options.items():
        out += name.encode("ascii") + b"\0" + value.encode("ascii") + b"\0"
    return bytes(out)


def encode(packet: Packet) -> bytes:
    """Encode any packet; the inverse of `parse` for well-formed packets."""
    match packet:
        case Request():
            return encode_request(packet)
        case Data(block, payload):
            return encode_data(block, payload)
        case Ack(block):
            return encode_ack(block)
        case Error(code, message):
            return encode_error(code, message)
        case OAck(options):
            return encode_oack(options)
