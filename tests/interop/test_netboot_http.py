"""HTTP boot from a real daemon: the content tree and the generated files over HTTP, with
Range and HEAD, the TFTP path rules and access list, on the API server (supervisor with
workers) and on a port of its own (one process)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simple_tftpd.protocol.packets import Error, ErrorCode
from tests.interop.conftest import needs_clients
from tests.support.daemon import Daemon, free_port, wait_for
from tests.support.netboot import (
    MAC,
    MAC_DASH,
    SECRET,
    UNKNOWN_MAC_DASH,
    expected_big,
    expected_pxelinux,
    http_request,
    make_tree,
    netboot_config,
    tftp_read,
    transfer_records,
)

pytestmark = [pytest.mark.interop, needs_clients]

HTTP_OK_FILE = 'simple_tftpd_fetches_total{kind="file",outcome="ok",protocol="http"}'
HTTP_OK_GENERATED = 'simple_tftpd_fetches_total{kind="generated",outcome="ok",protocol="http"}'
HTTP_DENIED = 'simple_tftpd_fetches_total{kind="file",outcome="denied",protocol="http"}'
HTTP_BYTES = 'simple_tftpd_fetched_bytes_total{kind="file",protocol="http"}'


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("netboot-http") / "root")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[Daemon]:
    """Two workers: TFTP in the workers, the API and HTTP boot in the supervisor."""
    config = netboot_config()
    config["performance"] = {"thread_pool": {"workers": 2}}
    with Daemon(tmp_path_factory.mktemp("http-daemon"), root, config) as running:
        yield running


def get(daemon: Daemon, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    return http_request(daemon.api_port, "/boot/" + path, **kwargs)


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


# --- whole files and HEAD ----------------------------------------------------------------------


def test_static_file(daemon: Daemon, root: Path) -> None:
    status, headers, body = get(daemon, "vmlinuz")
    assert status == 200
    assert body == (root / "vmlinuz").read_bytes()
    assert headers["content-length"] == str(len(body))
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"].startswith('"') and "last-modified" in headers


def test_nested_file_and_leading_slashes(daemon: Daemon, root: Path) -> None:
    expected = (root / "sub" / "initrd.img").read_bytes()
    assert get(daemon, "sub/initrd.img")[2] == expected
    assert get(daemon, "/sub//initrd.img")[2] == expected


def test_generated_file_for_the_machine(daemon: Daemon) -> None:
    status, headers, body = get(daemon, f"pxelinux.cfg/01-{MAC_DASH}")
    assert (status, body) == (200, expected_pxelinux())
    assert headers["cache-control"] == "no-store"
    assert headers["content-length"] == str(len(body))
    status, _, body = get(daemon, "default.ipxe")
    assert body == b"#!ipxe\necho default for 127.0.0.1 via http\n"


def test_head_matches_get_without_a_body(daemon: Daemon) -> None:
    for path in ("vmlinuz", "empty.bin", f"big/{MAC_DASH}"):
        get_status, get_headers, get_body = get(daemon, path)
        status, headers, body = get(daemon, path, method="HEAD")
        assert (status, body) == (get_status, b"")
        assert headers["content-length"] == str(len(get_body)), path
        for name in ("etag", "content-type", "accept-ranges"):
            assert headers.get(name) == get_headers.get(name), (path, name)


def test_empty_file(daemon: Daemon) -> None:
    assert get(daemon, "empty.bin")[0::2] == (200, b"")
    # A Range on an empty file cannot be satisfied by any byte: the whole (empty) file.
    status, headers, body = get(daemon, "empty.bin", headers={"Range": "bytes=0-"})
    assert (status, body, headers["content-length"]) == (200, b"", "0")


def test_curl_fetches_and_resumes(daemon: Daemon, root: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{daemon.api_port}/boot/vmlinuz"
    full = (root / "vmlinuz").read_bytes()
    partial = tmp_path / "vmlinuz"
    partial.write_bytes(full[:123_457])
    subprocess.run(
        ["curl", "-sSf", "--max-time", "30", "-C", "-", "-o", str(partial), url],
        check=True,
        timeout=60,
    )
    assert hashlib.sha256(partial.read_bytes()).digest() == hashlib.sha256(full).digest()
    head = subprocess.run(
        ["curl", "-sSfI", "--max-time", "30", url], capture_output=True, check=True, timeout=60
    )
    assert f"content-length: {len(full)}".encode() in head.stdout.lower()


# --- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("0-0", 0, 0),
        ("-1", 299_999, 299_999),
        ("299999-", 299_999, 299_999),
        ("-300000", 0, 299_999),
        ("-999999", 0, 299_999),
        ("0-", 0, 299_999),
        ("100-199", 100, 199),
        ("262143-262144", 262_143, 262_144),  # across the 256 KiB send chunk
        ("200000-999999", 200_000, 299_999),  # clamped at the end
    ],
)
def test_single_ranges(daemon: Daemon, root: Path, spec: str, first: int, last: int) -> None:
    data = (root / "vmlinuz").read_bytes()
    status, headers, body = get(daemon, "vmlinuz", headers={"Range": f"bytes={spec}"})
    assert status == 206
    assert headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    assert body == data[first : last + 1]
    assert headers["content-length"] == str(last - first + 1)


@pytest.mark.parametrize("spec", ["300000-", "300000-300001", "-0", "999999-"])
def test_unsatisfiable_ranges(daemon: Daemon, spec: str) -> None:
    status, headers, _ = get(daemon, "vmlinuz", headers={"Range": f"bytes={spec}"})
    assert status == 416
    assert headers["content-range"] == "bytes */300000"


@pytest.mark.parametrize("spec", ["bytes=5-1", "bytes=x-y", "lines=0-1", "bytes=0-299999,0-1"])
def test_ignored_ranges_send_the_whole_file(daemon: Daemon, root: Path, spec: str) -> None:
    status, headers, body = get(daemon, "vmlinuz", headers={"Range": spec})
    assert status == 200 and "content-range" not in headers
    assert body == (root / "vmlinuz").read_bytes()


def test_multiple_ranges_are_multipart(daemon: Daemon, root: Path) -> None:
    data = (root / "vmlinuz").read_bytes()
    spec = "bytes=0-0, 262140-262150, -2"
    status, headers, body = get(daemon, "vmlinuz", headers={"Range": spec})
    assert status == 206
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"].startswith("multipart/byteranges; boundary=")
    boundary = headers["content-type"].split("boundary=", 1)[1]
    # The exact multipart/byteranges framing of RFC 9110 section 14.6.
    expected = b""
    for first, last in ((0, 0), (262140, 262150), (299998, 299999)):
        expected += (
            (
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {first}-{last}/300000\r\n\r\n"
            ).encode()
            + data[first : last + 1]
            + b"\r\n"
        )
    assert body == expected + f"--{boundary}--\r\n".encode()


def test_ranges_of_a_generated_file(daemon: Daemon) -> None:
    expected = expected_big(MAC)
    status, headers, body = get(daemon, f"big/{MAC_DASH}", headers={"Range": "bytes=-20"})
    assert (status, body) == (206, expected[-20:])
    assert headers["content-range"] == f"bytes {len(expected) - 20}-{len(expected) - 1}/" + str(
        len(expected)
    )


def test_if_range(daemon: Daemon, root: Path) -> None:
    data = (root / "vmlinuz").read_bytes()
    _, headers, _ = get(daemon, "vmlinuz", method="HEAD")
    for validator in (headers["etag"], headers["last-modified"]):
        status, _, body = get(
            daemon, "vmlinuz", headers={"Range": "bytes=10-19", "If-Range": validator}
        )
        assert (status, body) == (206, data[10:20])
    status, _, body = get(
        daemon, "vmlinuz", headers={"Range": "bytes=10-19", "If-Range": '"another-version"'}
    )
    assert (status, body) == (200, data)


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/boot/../secret.txt",
        "/boot/../../secret.txt",
        "/boot/%2e%2e/secret.txt",
        "/boot/sub/..%2f..%2fsecret.txt",
        "/boot/sub/%2e%2e/%2e%2e/secret.txt",
        "/boot/..%5csecret.txt",
        "/boot/link-out",
        "/boot/netboot/hosts.yaml",
        "/boot/netboot/templates/pxelinux.j2",
        "/boot/templates-alias/pxelinux.j2",
        "/boot/sub/",
        "/boot/sub",
        "/boot/%00",
    ],
)
def test_traversal_links_and_private_files_are_refused(daemon: Daemon, path: str) -> None:
    status, _, body = http_request(daemon.api_port, path)
    assert status in (400, 403, 404), (path, status)
    assert SECRET not in body and b"hostname:" not in body and b"{{" not in body


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/boot/netboot/hosts.yaml", 403),
        ("/boot/link-out", 403),
        ("/boot/sub/..%2f..%2fsecret.txt", 403),
        ("/boot/no-such-file", 404),
        ("/boot/", 404),
        (f"/boot/pxelinux.cfg/01-{UNKNOWN_MAC_DASH}", 404),
        ("/boot/evil", 500),
        ("/boot/slow", 500),  # stopped by the render time limit in the API process
        (f"/boot/broken/{MAC_DASH}", 500),
    ],
)
def test_status_codes(daemon: Daemon, path: str, status: int) -> None:
    assert http_request(daemon.api_port, path)[0] == status


def test_only_get_and_head(daemon: Daemon) -> None:
    for method in ("PUT", "POST", "DELETE"):
        assert get(daemon, "vmlinuz", method=method)[0] == 405


def test_api_routes_still_answer(daemon: Daemon) -> None:
    assert daemon.get_json("/api/v1/health") == (200, {"status": "ok"})


# --- who fetched what ----------------------------------------------------------------------------


def test_log_and_metrics(daemon: Daemon, root: Path) -> None:
    before = daemon.metrics()
    size = (root / "sub" / "initrd.img").stat().st_size
    assert get(daemon, "sub/initrd.img", headers={"Range": "bytes=0-99"})[0] == 206
    assert get(daemon, f"ipxe/{MAC_DASH}.ipxe")[0] == 200
    assert wait_for(lambda: delta(before, daemon.metrics(), HTTP_OK_GENERATED) == 1, 5)
    after = daemon.metrics()
    assert delta(before, after, HTTP_OK_FILE) == 1
    assert delta(before, after, HTTP_BYTES) == 100
    match = {"protocol": "http", "file": "sub/initrd.img", "range": "bytes=0-99"}
    assert wait_for(lambda: transfer_records(daemon, **match), 5)
    [ranged] = transfer_records(daemon, **match)
    assert ranged["status"] == 206 and ranged["bytes"] == 100 and ranged["outcome"] == "ok"
    assert size > 100 and "mac" not in ranged and ranged["method"] == "GET"
    name = f"ipxe/{MAC_DASH}.ipxe"
    assert wait_for(lambda: transfer_records(daemon, protocol="http", file=name), 5)
    record = transfer_records(daemon, protocol="http", file=name)[-1]
    assert record["mac"] == MAC and record["hostname"] == "web1"
    assert record["generated"] == "ipxe-host.j2" and record["client"].startswith("127.0.0.1:")


# --- its own port, one process, and the access list --------------------------------------------


@dataclass
class BootPort:
    daemon: Daemon
    http_port: int


@pytest.fixture(scope="module")
def own_port(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[BootPort]:
    """HTTP boot on its own port in a single process, with rules for TFTP and for HTTP."""
    http_port = free_port(socket.SOCK_STREAM)
    running = Daemon(tmp_path_factory.mktemp("own-port-daemon"), root, {})
    rules = [
        # A UDP rule for the TFTP port: keeps ::1 from TFTP and so from HTTP boot too.
        {
            "name": "no-v6",
            "action": "deny",
            "protocol": "udp",
            "ports": [running.port],
            "sources": ["::1/128"],
        },
        # A TCP rule for the HTTP port only.
        {
            "name": "no-http",
            "action": "deny",
            "protocol": "tcp",
            "ports": [http_port],
            "sources": ["127.0.0.1/32"],
        },
    ]
    running.config.update(netboot_config({"port": http_port, "bind": "::", "path_prefix": "/"}))
    running.config["security"] = {"network": {"firewall": {"rules": rules}}}
    running.start()
    try:
        yield BootPort(running, http_port)
    finally:
        running.stop()


def test_own_port_serves_boot_files_and_nothing_of_the_api(own_port: BootPort, root: Path) -> None:
    port, api_port = own_port.http_port, own_port.daemon.api_port
    status, _, body = http_request(port, "/vmlinuz", source="127.0.0.2")
    assert (status, body) == (200, (root / "vmlinuz").read_bytes())
    assert http_request(port, f"/pxelinux.cfg/01-{MAC_DASH}", source="127.0.0.2")[2] == (
        expected_pxelinux()
    )
    assert http_request(port, "/api/v1/health", source="127.0.0.2")[0] == 404
    # ... and the API server has no boot routes.
    assert http_request(api_port, "/boot/vmlinuz")[0] == 404
    assert http_request(api_port, "/vmlinuz")[0] == 404


def test_access_list_is_shared_with_tftp(own_port: BootPort) -> None:
    acl_daemon, port = own_port.daemon, own_port.http_port
    before = acl_daemon.metrics()
    # ::1 is denied by the TFTP rule: no TFTP, and no HTTP boot either.
    tftp = tftp_read(acl_daemon.port, "sub/initrd.img", host="::1")
    assert isinstance(tftp, Error) and tftp.code == ErrorCode.ACCESS_VIOLATION
    assert http_request(port, "/sub/initrd.img", host="::1")[0] == 403
    # 127.0.0.1 may use TFTP, but a TCP rule keeps it from the HTTP port.
    assert not isinstance(tftp_read(acl_daemon.port, "sub/initrd.img"), Error)
    status, _, body = http_request(port, "/sub/initrd.img")
    assert status == 403 and b"\x00" not in body
    assert http_request(port, f"/pxelinux.cfg/01-{MAC_DASH}")[0] == 403
    # Everyone else gets the file.
    assert http_request(port, "/sub/initrd.img", source="127.0.0.2")[0] == 200
    assert wait_for(lambda: delta(before, acl_daemon.metrics(), HTTP_DENIED) == 3, 5)
    assert wait_for(
        lambda: any(
            r.get("outcome") == "denied" for r in transfer_records(acl_daemon, protocol="http")
        ),
        5,
    )
