"""Downloads with real clients, in both serving modes, over IPv4 and IPv6, checked by sha256."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from tests.interop.conftest import FILES, needs_clients
from tests.support.clients import (
    Fetch,
    fetch_atftp,
    fetch_curl,
    fetch_tftp_hpa,
    fetch_tftpy,
    sha256,
)
from tests.support.daemon import Daemon

pytestmark = [pytest.mark.interop, needs_clients]

CLIENTS: dict[str, Fetch] = {
    "tftp-hpa": fetch_tftp_hpa,
    "atftp": fetch_atftp,
    "atftp-blksize-tsize": partial(fetch_atftp, options={"blksize": 1468, "tsize": 0}),
    "atftp-windowsize": partial(fetch_atftp, options={"blksize": 1468, "windowsize": 16}),
    "curl": fetch_curl,
    "curl-blksize": partial(fetch_curl, blksize=1468),
    "tftpy": fetch_tftpy,
    "tftpy-blksize": partial(fetch_tftpy, blksize=1468),
}
EDGE_FILES = [name for name in FILES if name != "rollover.bin"]


# tftpy's client is IPv4 only.
CLIENT_HOSTS = [
    (client, host)
    for client in CLIENTS
    for host in ("127.0.0.1", "::1")
    if not (client.startswith("tftpy") and ":" in host)
]


@pytest.mark.parametrize(("client", "host"), CLIENT_HOSTS)
@pytest.mark.parametrize("name", EDGE_FILES)
def test_download_matches(
    daemon: Daemon, content_root: Path, tmp_path: Path, client: str, host: str, name: str
) -> None:
    local = tmp_path / "out"
    CLIENTS[client](host, daemon.port, name, local)
    assert local.exists(), f"{client} fetched nothing; daemon log:\n{daemon.log()[-2000:]}"
    assert sha256(local) == sha256(content_root / name)


@pytest.mark.parametrize(
    ("client", "host"),
    [
        ("tftp-hpa", "127.0.0.1"),
        ("curl", "::1"),
        ("atftp-windowsize", "127.0.0.1"),
    ],
)
def test_rollover_past_65535_blocks(
    daemon: Daemon, content_root: Path, tmp_path: Path, client: str, host: str
) -> None:
    fetch = CLIENTS[client]
    if client == "atftp-windowsize":
        # blksize 512 with a window: still more than 65535 blocks, but quick.
        fetch = partial(fetch_atftp, options={"blksize": 512, "windowsize": 16})
    local = tmp_path / "out"
    fetch(host, daemon.port, "rollover.bin", local)
    assert sha256(local) == sha256(content_root / "rollover.bin")


def test_netascii_converts_line_endings(daemon: Daemon, tmp_path: Path) -> None:
    local = tmp_path / "grub.cfg"
    fetch_tftp_hpa("127.0.0.1", daemon.port, "boot/grub.cfg", local, mode="netascii")
    # tftp-hpa converts back to local line endings: the file arrives unchanged.
    assert local.read_bytes() == b"set timeout=1\nmenuentry x {\r\n}\n"


def test_leading_slash_and_nested_path(daemon: Daemon, content_root: Path, tmp_path: Path) -> None:
    local = tmp_path / "cfg"
    fetch_curl("127.0.0.1", daemon.port, "/boot/grub.cfg", local)
    assert local.read_bytes() == (content_root / "boot" / "grub.cfg").read_bytes()


def test_upload_then_download(daemon: Daemon, content_root: Path, tmp_path: Path) -> None:
    import os
    import subprocess

    payload = tmp_path / "firmware.bin"
    payload.write_bytes(os.urandom(1468 * 7 + 11))
    name = f"uploads/fw-{daemon.port}.bin"
    subprocess.run(
        [
            "atftp",
            "--put",
            "-l",
            str(payload),
            "-r",
            name,
            "--option",
            "blksize 1468",
            "127.0.0.1",
            str(daemon.port),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert sha256(content_root / name) == sha256(payload)
    back = tmp_path / "back.bin"
    fetch_curl("::1", daemon.port, name, back)
    assert sha256(back) == sha256(payload)
    # No temporary upload file is left behind.
    assert not [p for p in (content_root / "uploads").iterdir() if p.name.startswith(".")]
