"""Packet codec: round trips, strictness, and totality on hostile bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simple_tftpd.protocol import netascii
from simple_tftpd.protocol.packets import (
    MAX_REQUEST_SIZE,
    Ack,
    Data,
    Error,
    ErrorCode,
    MalformedPacket,
    OAck,
    Opcode,
    Request,
    encode,
    parse,
)

option_names = st.sampled_from(["blksize", "tsize", "timeout", "windowsize", "x-vendor"])
option_values = st.text(alphabet="0123456789", min_size=1, max_size=8)
requests = st.builds(
    Request,
    opcode=st.sampled_from([Opcode.RRQ, Opcode.WRQ]),
    filename=st.text(
        alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=100,
    ),
    mode=st.sampled_from(["octet", "netascii"]),
    options=st.dictionaries(option_names, option_values, max_size=4),
)
packets = st.one_of(
    requests,
    st.builds(Data, block=st.integers(0, 0xFFFF), payload=st.binary(max_size=1468)),
    st.builds(Ack, block=st.integers(0, 0xFFFF)),
    st.builds(
        Error,
        code=st.integers(0, 8),
        message=st.text(
            alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
            max_size=50,
        ),
    ),
    st.builds(OAck, options=st.dictionaries(option_names, option_values, min_size=1, max_size=4)),
)


@given(packets)
def test_round_trip(packet: object) -> None:
    assert parse(encode(packet)) == packet  # type: ignore[arg-type]


@given(st.binary(max_size=2000))
def test_parse_is_total(data: bytes) -> None:
    """Any bytes decode or raise MalformedPacket with a valid error code: never anything else."""
    try:
        parse(data)
    except MalformedPacket as exc:
        assert exc.code in ErrorCode


@given(requests, st.integers(min_value=0, max_value=60))
def test_truncated_requests_never_crash(request: Request, cut: int) -> None:
    data = encode(request)
    with contextlib.suppress(MalformedPacket):
        parse(data[: max(0, len(data) - cut)])


def test_request_fields() -> None:
    packet = parse(b"\x00\x01pxelinux.0\x00OCTET\x00BLKSIZE\x001468\x00tsize\x000\x00")
    assert packet == Request(Opcode.RRQ, "pxelinux.0", "octet", {"blksize": "1468", "tsize": "0"})


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.ILLEGAL_OPERATION),
        (b"\x00", ErrorCode.ILLEGAL_OPERATION),
        (b"\x00\x09abc", ErrorCode.ILLEGAL_OPERATION),  # unknown opcode
        (b"\x00\x01file\x00octet", ErrorCode.ILLEGAL_OPERATION),  # missing NUL
        (b"\x00\x01file", ErrorCode.ILLEGAL_OPERATION),  # no mode
        (b"\x00\x01\x00octet\x00", ErrorCode.ILLEGAL_OPERATION),  # empty name
        (b"\x00\x01f\x00mail\x00", ErrorCode.ILLEGAL_OPERATION),
        (b"\x00\x01f\x00garbage\x00", ErrorCode.ILLEGAL_OPERATION),
        (b"\x00\x01f\x00octet\x00blksize\x00", ErrorCode.OPTION_NEGOTIATION),  # no value
        (b"\x00\x01f\x00octet\x00\x001\x00", ErrorCode.OPTION_NEGOTIATION),  # empty name
        (b"\x00\x01" + b"a" * 2000 + b"\x00octet\x00", ErrorCode.ILLEGAL_OPERATION),
        (b"\x00\x03\x00", ErrorCode.ILLEGAL_OPERATION),  # truncated DATA
        (b"\x00\x04\x00", ErrorCode.ILLEGAL_OPERATION),  # truncated ACK
        (b"\x00\x03\x00\x01" + b"x" * 70000, ErrorCode.ILLEGAL_OPERATION),  # huge DATA
    ],
)
def test_malformed(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(MalformedPacket) as info:
        parse(data)
    assert info.value.code == code


def test_option_bounds() -> None:
    long_value = b"\x00\x01f\x00octet\x00blksize\x00" + b"9" * 100 + b"\x00"
    with pytest.raises(MalformedPacket):
        parse(long_value)
    many = b"\x00\x01f\x00octet\x00" + b"".join(b"o%d\x001\x00" % i for i in range(40))
    assert len(many) < MAX_REQUEST_SIZE
    with pytest.raises(MalformedPacket):
        parse(many)


def test_first_duplicate_option_wins() -> None:
    packet = parse(b"\x00\x01f\x00octet\x00blksize\x00512\x00BLKSIZE\x0065464\x00")
    assert isinstance(packet, Request)
    assert packet.options == {"blksize": "512"}


def test_non_utf8_filename_round_trips() -> None:
    raw = b"\x00\x01boot\xff\xfe.bin\x00octet\x00"
    packet = parse(raw)
    assert isinstance(packet, Request)
    assert packet.filename.encode("utf-8", "surrogateescape") == b"boot\xff\xfe.bin"
    assert encode(packet) == raw


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=600))
def test_netascii_round_trip(data: bytes, chunk: int) -> None:
    wire = netascii.encode(data)
    decoder = netascii.Decoder()
    out = b"".join(decoder.feed(wire[i : i + chunk]) for i in range(0, len(wire), chunk))
    assert out + decoder.finish() == data


def test_netascii_encoding() -> None:
    assert netascii.encode(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"
