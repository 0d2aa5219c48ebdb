"""Clients that fetch through the load balancer without pause, checking every transfer."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import tftpy


@dataclass
class LoadReport:
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.ok} good, {len(self.failed)} failed, {len(self.corrupt)} corrupt; "
            f"first problems: {(self.failed + self.corrupt)[:5]}"
        )


class FetchLoad:
    """`with FetchLoad(address, port, files) as load:` fetches round-robin over `files`
    (name -> sha256) from `clients` threads until the block ends; `load.report` counts."""

    def __init__(self, address: str, port: int, files: dict[str, str], clients: int = 2) -> None:
        self.address = address
        self.port = port
        self.files = list(files.items())
        self.clients = clients
        self.report = LoadReport()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        logging.getLogger("tftpy").setLevel(logging.CRITICAL)

    def __enter__(self) -> FetchLoad:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            # A fetch in flight gives up after tftpy's own timeouts (2 s x 5 retries).
            thread.join(30)

    def wait_for(self, good: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.report.ok < good and time.monotonic() < deadline:
            time.sleep(0.1)

    def _client(self, index: int) -> None:
        with tempfile.TemporaryDirectory(prefix="e2e-load-") as tmp:
            local = Path(tmp) / "fetched"
            turn = index
            while not self._stop.is_set():
                name, digest = self.files[turn % len(self.files)]
                turn += 1
                try:
                    client = tftpy.TftpClient(self.address, self.port, {"blksize": 1468})
                    client.download(name, str(local), timeout=2, retries=5)
                except Exception as exc:  # every tftpy failure counts, whatever its type
                    with self._lock:
                        stamp = time.strftime("%H:%M:%S")
                        self.report.failed.append(f"{stamp} {name}: {type(exc).__name__}: {exc}")
                    continue
                good = hashlib.sha256(local.read_bytes()).hexdigest() == digest
                with self._lock:
                    if good:
                        self.report.ok += 1
                    else:
                        self.report.corrupt.append(name)


def fetch_sha256(address: str, port: int, name: str) -> str | None:
    """One fetch of `name`; the sha256 of what arrived, or None when the transfer failed."""
    logging.getLogger("tftpy").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="e2e-fetch-") as tmp:
        local = Path(tmp) / "fetched"
        try:
            client = tftpy.TftpClient(address, port, {"blksize": 1468})
            client.download(name, str(local), timeout=2, retries=3)
        except Exception:  # any tftpy failure (not found yet, timeout): the caller retries
            return None
        return hashlib.sha256(local.read_bytes()).hexdigest()
