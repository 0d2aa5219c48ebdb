"""Fixtures shared by the interop suites: a content root with the edge-case files and one
real daemon per serving mode, shared by every test of a module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.files import random_files

# Sizes that hit the protocol's edges at blksize 512 and 1468.
FILES = {
    "small.bin": 1000,
    "empty.bin": 0,
    "multiple-512.bin": 512 * 4,
    "multiple-1468.bin": 1468 * 3,
    # long enough for the compiled per-block path (server.PUMP_MIN_BLOCKS), ending on an
    # empty block at 1468 and on a short one at 512
    "pumped-1468.bin": 1468 * 24,
    "pumped.bin": 512 * 40 + 77,
    # more than 65535 blocks of 512: the block number rolls over to 0
    "rollover.bin": 512 * 65536 + 300,
}

needs_clients = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("tftp", "atftp", "curl")),
    reason="tftp-hpa, atftp and curl are installed by `make test`",
)


@pytest.fixture(scope="session")
def content_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    random_files(root, FILES)
    (root / "boot").mkdir()
    (root / "boot" / "grub.cfg").write_bytes(b"set timeout=1\nmenuentry x {\r\n}\n")
    (root / "uploads").mkdir()
    return root


# Each serving mode on the compiled per-block path (simple_tftpd._fastpath, which `make test`
# builds) and on the pure-Python one (`performance.fast_path: false`).
@pytest.fixture(
    scope="module", params=["standard", "single-port", "standard-pure", "single-port-pure"]
)
def daemon(
    request: pytest.FixtureRequest, content_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    mode = request.param.removesuffix("-pure")
    with Daemon(
        tmp_path_factory.mktemp("daemon"),
        content_root,
        {
            "tftp": {
                "single_port": mode == "single-port",
                "write": {"enabled": True, "prefixes": ["uploads/"]},
            },
            # Two workers sharing the port, as on a production node.
            "performance": {
                "thread_pool": {"workers": 2},
                "fast_path": not request.param.endswith("-pure"),
            },
        },
    ) as running:
        path = "pure-Python path" if request.param.endswith("-pure") else "compiled per-block path"
        assert path in running.log(), running.log()
        yield running
