"""A netboot content tree for tests (templates, hosts file, static files) and small clients
that show exactly what the daemon sent: a raw TFTP read with options, a raw HTTP request."""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path
from typing import Any

from simple_tftpd.protocol.packets import (
    Data,
    Error,
    OAck,
    Opcode,
    Request,
    encode_ack,
    encode_error,
    encode_request,
)
from tests.support.daemon import Daemon
from tests.support.udp import Peer

MAC = "52:54:00:12:34:56"
MAC_DASH = MAC.replace(":", "-")
UNKNOWN_MAC_DASH = "02-00-00-00-00-99"

HOSTS = """\
# Per-machine data, keyed by MAC (any spelling) or IP.
52:54:00:12:34:56:
  hostname: web1
  ip: 10.0.0.5
  role: web
  kernel_args: console=ttyS0 quiet
"AA-BB-CC-DD-EE-FF":
  hostname: db1
  role: db
10.0.0.9:
  hostname: api1
  mac: 02:00:00:00:00:09
  role: api
# Hostile entries: each is left out, the rest are served.
02:00:00:00:00:01: {hostname: ../../etc/passwd, role: x}
02:00:00:00:00:02: {hostname: [not, a, string], role: x}
02:00:00:00:00:03: "not a mapping"
"{{ 7 * 7 }}": {hostname: injected, role: x}
"""

TEMPLATES = {
    "pxelinux.j2": (
        "DEFAULT linux\n"
        "LABEL linux\n"
        "  KERNEL http://boot.example/vmlinuz\n"
        "  APPEND {{ host.kernel_args | default('') }} hostname={{ hostname }} "
        "BOOTIF=01-{{ mac | replace(':', '-') }}\n"
    ),
    "ipxe-host.j2": "#!ipxe\necho host {{ hostname }} {{ mac }} {{ ip }} role={{ host.role }}\n",
    "default.j2": "#!ipxe\necho default for {{ client_ip }} via {{ protocol }}\n",
    "big.j2": "{% for i in range(6000) %}line {{ i }} of {{ mac }}\n{% endfor %}",
    "broken.j2": "#!ipxe\necho {{ host.no_such_key }}\n",
    "evil.j2": "{{ ''.__class__.__mro__[1].__subclasses__() }}\n",
    "slow.j2": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "live.j2": "version 1 for {{ mac }}\n",
}

RULES: list[dict[str, Any]] = [
    {"pattern": "pxelinux.cfg/01-{mac}", "template": "pxelinux.j2"},
    {"pattern": "ipxe/{mac}.ipxe", "template": "ipxe-host.j2"},
    {"pattern": "{ip}.ipxe", "template": "ipxe-host.j2"},
    {"pattern": "default.ipxe", "template": "default.j2"},
    {"pattern": "big/{mac}", "template": "big.j2", "unknown_host": "render"},
    {"pattern": "broken/{mac}", "template": "broken.j2"},
    {"pattern": "evil", "template": "evil.j2"},
    {"pattern": "slow", "template": "slow.j2"},
    {"pattern": "live/{mac}", "template": "live.j2", "unknown_host": "render"},
]

SECRET = b"outside the root: never served\n"


def expected_pxelinux(mac: str = MAC) -> bytes:
    return (
        "DEFAULT linux\nLABEL linux\n  KERNEL http://boot.example/vmlinuz\n"
        f"  APPEND console=ttyS0 quiet hostname=web1 BOOTIF=01-{mac.replace(':', '-')}\n"
    ).encode()


def expected_big(mac: str) -> bytes:
    return "".join(f"line {i} of {mac}\n" for i in range(6000)).encode()


def make_tree(root: Path) -> Path:
    """The netboot tree under `root` (created), plus a secret beside it and links out."""
    templates = root / "netboot" / "templates"
    templates.mkdir(parents=True)
    for name, text in TEMPLATES.items():
        (templates / name).write_text(text)
    (root / "netboot" / "hosts.yaml").write_text(HOSTS)
    # Over the 256 KiB HTTP chunk, so ranges and whole reads cross a chunk boundary.
    (root / "vmlinuz").write_bytes(os.urandom(300_000))
    (root / "empty.bin").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "initrd.img").write_bytes(os.urandom(5000))
    (root.parent / "secret.txt").write_bytes(SECRET)
    (root / "link-out").symlink_to(root.parent / "secret.txt")
    (root / "templates-alias").symlink_to(templates)
    return root


def netboot_config(http: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "netboot": {
            "enabled": True,
            "generated": RULES,
            "http": {"enabled": True, **(http or {})},
        },
        "logging": {"format": "json"},
    }


def set_file(path: Path, text: str) -> None:
    """Rewrite a file so that its new version is visible even on coarse timestamps."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# --- TFTP ----------------------------------------------------------------------------------------


def tftp_read(
    port: int, name: str, options: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> tuple[bytes, dict[str, str]] | Error:
    """Read `name` in lockstep; the bytes and the OACK options, or the ERROR sent instead."""
    with Peer(host) as peer:
        peer.send(encode_request(Request(Opcode.RRQ, name, "octet", options or {})), port)
        reply = peer.receive(5.0)
        assert reply is not None, f"no answer for {name}"
        packet, tid = reply
        if isinstance(packet, Error):
            return packet
        oack: dict[str, str] = {}
        blksize = 512
        if isinstance(packet, OAck):
            oack = packet.options
            blksize = int(oack.get("blksize", "512"))
            peer.send(encode_ack(0), tid)
            reply = peer.receive(5.0)
            assert reply is not None
            packet, tid = reply
        received = bytearray()
        block = 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if isinstance(packet, Error):
                return packet
            assert isinstance(packet, Data), packet
            if packet.block == block:
                received += packet.payload
                peer.send(encode_ack(block), tid)
                if len(packet.payload) < blksize:
                    return bytes(received), oack
                block = (block + 1) & 0xFFFF
            reply = peer.receive(5.0)
            assert reply is not None, f"transfer of {name} stalled at block {block}"
            packet, tid = reply
        peer.send(encode_error(0, "test gave up"), tid)
        raise AssertionError(f"transfer of {name} did not finish")


def transfer_records(daemon: Daemon, **match: object) -> list[dict[str, Any]]:
    """JSON transfer-log records of `daemon` whose fields equal `match`."""
    records = []
    for line in daemon.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("event") != "transfer":
            continue
        if all(record.get(key) == value for key, value in match.items()):
            records.append(record)
    return records


# --- HTTP ----------------------------------------------------------------------------------------


def http_request(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    source: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with the path sent exactly as given (no client-side normalisation)."""
    connection = http.client.HTTPConnection(
        host, port, timeout=10, source_address=(source, 0) if source else None
    )
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()
