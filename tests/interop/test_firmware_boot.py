"""A real network boot: QEMU's iPXE firmware (software emulation, no KVM) boots from the daemon.

The firmware gets `boot.ipxe` over TFTP (the boot URL names the port: iPXE ignores DHCP option
66), which chains to the per-MAC script `ipxe/${mac:hexhyp}.ipxe`, generated over TFTP from a
template and the hosts file; that one chains to a second generated file over HTTP boot. The last
script prints a marker made from per-machine data and reboots; with -no-reboot QEMU then exits 0.

QEMU's user-mode network forwards the guest's 10.0.2.2:PORT to this machine's 127.0.0.1:PORT,
so the daemon is reached on loopback only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_for
from tests.support.netboot import transfer_records

QEMU = shutil.which("qemu-system-x86_64")
IPXE_ROM = Path("/usr/lib/ipxe/qemu/pxe-virtio.rom")
BOOT_TIMEOUT = 90.0
MAC = "52:54:00:12:34:56"
MAC_DASH = MAC.replace(":", "-")
# Per-machine data that only the rendered files carry: seeing it on the console proves that
# the firmware ran what the daemon generated.
TOKEN = secrets.token_hex(8)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        QEMU is None or not IPXE_ROM.exists(),
        reason="qemu-system-x86 and ipxe-qemu are installed by `make system-deps`",
    ),
]

STAGE1 = """\
#!ipxe
echo STAGE1 {{ hostname }} {{ mac }} via {{ protocol }}
chain http://10.0.2.2:{{ host.http_port }}/boot/ipxe/{{ mac | replace(':', '-') }}/stage2.ipxe
"""
STAGE2 = """\
#!ipxe
echo MARKER-{{ host.token }} {{ hostname }} via {{ protocol }}
sleep 1
reboot
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    root = tmp_path / "root"
    templates = root / "netboot" / "templates"
    templates.mkdir(parents=True)
    (templates / "stage1.j2").write_text(STAGE1)
    (templates / "stage2.j2").write_text(STAGE2)
    # Two workers, as in production: TFTP is rendered in a worker, HTTP in the supervisor.
    running = Daemon(
        tmp_path,
        root,
        {
            "performance": {"thread_pool": {"workers": 2}},
            "logging": {"format": "json"},
            "netboot": {
                "enabled": True,
                "generated": [
                    {"pattern": "ipxe/{mac}.ipxe", "template": "stage1.j2"},
                    {"pattern": "ipxe/{mac}/stage2.ipxe", "template": "stage2.j2"},
                ],
                "http": {"enabled": True},
            },
        },
    )
    # A static, generic first script: the firmware fills in its own MAC.
    (root / "boot.ipxe").write_text(
        f"#!ipxe\nchain tftp://10.0.2.2:{running.port}/ipxe/${{mac:hexhyp}}.ipxe\n"
    )
    (root / "netboot" / "hosts.yaml").write_text(
        f"{MAC}:\n  hostname: qemu-node\n  token: {TOKEN}\n  http_port: {running.api_port}\n"
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_ipxe_firmware_boots_from_generated_files(daemon: Daemon, tmp_path: Path) -> None:
    assert QEMU is not None
    serial = tmp_path / "serial.log"
    argv = [
        QEMU,
        "-machine",
        "accel=tcg",
        "-m",
        "256",
        "-netdev",
        f"user,id=n0,bootfile=tftp://10.0.2.2:{daemon.port}/boot.ipxe",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={MAC}",
        "-boot",
        "order=n,strict=on",
        "-no-reboot",
        "-nographic",
        "-serial",
        "mon:stdio",
    ]
    with serial.open("wb") as out:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            code = qemu.wait(timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(qemu.pid, signal.SIGKILL)
            qemu.wait(10)
            code = None
    console = serial.read_bytes().decode("utf-8", "replace")
    context = f"serial console:\n{console[-3000:]}\ndaemon log:\n{daemon.log()[-3000:]}"
    assert code == 0, f"QEMU exit {code} (None: killed after {BOOT_TIMEOUT}s)\n{context}"
    assert f"STAGE1 qemu-node {MAC} via tftp" in console, context
    assert f"MARKER-{TOKEN} qemu-node via http" in console, context

    # The transfer log says which machine got which file over which protocol.
    stage1 = f"ipxe/{MAC_DASH}.ipxe"
    stage2 = f"ipxe/{MAC_DASH}/stage2.ipxe"  # the name under the /boot prefix
    assert wait_for(lambda: transfer_records(daemon, file=stage2) != [], 5), context
    [tftp] = transfer_records(daemon, file=stage1, outcome="ok")
    assert tftp["protocol"] == "tftp" and tftp["mac"] == MAC and tftp["generated"] == "stage1.j2"
    assert tftp["hostname"] == "qemu-node" and tftp["blksize"] == 1432  # what iPXE asks for
    [http] = transfer_records(daemon, file=stage2, outcome="ok")
    assert http["protocol"] == "http" and http["mac"] == MAC and http["status"] == 200
    assert transfer_records(daemon, file="boot.ipxe", protocol="tftp", outcome="ok")
