"""Certificate renewal under load: new files and SIGHUP while HTTPS clients (fresh and
kept-alive connections) and TFTP transfers run, with a supervisor and two workers."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.clients import fetch_curl
from tests.support.daemon import Daemon, wait_for
from tests.support.pki import Issued, Pki

CONTENT = os.urandom(64 * 1024)
RENEWALS = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[Daemon, Issued]]:
    workdir = tmp_path_factory.mktemp("renewal")
    root = workdir / "root"
    root.mkdir()
    (root / "image.bin").write_bytes(CONTENT)
    node = pki.issue("renewal-node")
    reader = pki.issue("renewal-reader")
    roles = [{"name": name, "role": "read_only"} for name in ("renewal-reader", "renewal-doomed")]
    config = {
        "security": {"tls": pki.tls_config(node), "access": {"certificates": roles}},
        "performance": {"thread_pool": {"workers": 2}},
    }
    daemon = Daemon(workdir, root, config, client_ssl=pki.client_context(reader))
    daemon.start()
    try:
        yield daemon, node
    finally:
        daemon.stop()


class Load:
    """Clients that run until stopped and record every failure."""

    def __init__(self, daemon: Daemon, workdir: Path) -> None:
        self.daemon = daemon
        self.workdir = workdir
        self.failures: list[str] = []
        self.counts = {"fresh": 0, "kept-alive": 0, "tftp": 0}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(name, step), daemon=True)
            for name, step in (
                ("fresh", self._fresh_connection),
                ("kept-alive", self._kept_alive()),
                ("tftp", self._tftp),
            )
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self, name: str, step: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                step()
                self.counts[name] += 1
            except Exception as exc:  # every failure is the test's business
                self.failures.append(f"{name}: {type(exc).__name__}: {exc}")

    def _fresh_connection(self) -> None:
        status, _ = self.daemon.get("/api/v1/status")
        assert status == 200, status

    def _kept_alive(self) -> Callable[[], None]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.daemon.api_port, timeout=10, context=self.daemon.client_ssl
        )

        def step() -> None:
            # One TLS connection for the whole run: a reload must not cut it.
            connection.request("GET", "/api/v1/status")
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            assert not response.will_close

        return step

    def _tftp(self) -> None:
        local = self.workdir / f"fetch-{uuid.uuid4().hex}"
        try:
            code = fetch_curl("127.0.0.1", self.daemon.port, "image.bin", local)
            assert code == 0, f"curl exit {code}"
            assert local.read_bytes() == CONTENT, "wrong bytes"
        finally:
            local.unlink(missing_ok=True)


def served_serial(daemon: Daemon) -> int:
    """The serial of the certificate a new connection is served."""
    assert daemon.client_ssl is not None
    with daemon.client_ssl.wrap_socket(
        socket.create_connection(("127.0.0.1", daemon.api_port), timeout=5),
        server_hostname="127.0.0.1",
    ) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def file_serial(issued: Issued) -> int:
    return int(x509.load_pem_x509_certificate(issued.cert_file.read_bytes()).serial_number)


def reload_count(daemon: Daemon, outcome: str) -> float:
    return daemon.metrics().get(f'simple_tftpd_tls_reloads_total{{outcome="{outcome}"}}', 0.0)


def test_renewal_under_load_drops_nothing(
    served: tuple[Daemon, Issued], pki: Pki, tmp_path: Path
) -> None:
    daemon, node = served
    before = served_serial(daemon)
    with Load(daemon, tmp_path) as load:
        for round_ in range(RENEWALS):
            time.sleep(0.7)
            pki.issue(node.name)  # a new key and certificate from the same CA
            daemon.signal(signal.SIGHUP)
            assert wait_for(lambda: served_serial(daemon) == file_serial(node), 10), round_
        time.sleep(0.7)
    assert load.failures == [], load.failures[:5]
    assert all(count >= 5 for count in load.counts.values()), load.counts
    assert served_serial(daemon) != before
    assert wait_for(lambda: reload_count(daemon, "ok") == RENEWALS, 5), daemon.metrics()


def test_revocation_takes_effect_on_sighup(served: tuple[Daemon, Issued], pki: Pki) -> None:
    daemon, _ = served
    doomed = pki.issue("renewal-doomed")
    context = pki.client_context(doomed)

    def answered() -> bool:
        try:
            with urllib.request.urlopen(
                daemon.url("/api/v1/status"), timeout=5, context=context
            ) as r:
                return bool(r.status == 200)
        except (OSError, http.client.HTTPException):
            return False

    assert answered()
    pki.revoke(doomed)  # a new CRL in the same file
    daemon.signal(signal.SIGHUP)
    assert wait_for(lambda: not answered(), 10)
    assert daemon.get("/api/v1/status")[0] == 200  # everyone else still gets in


def test_unusable_files_keep_the_running_certificate(
    served: tuple[Daemon, Issued], pki: Pki
) -> None:
    daemon, node = served
    good = node.cert_file.read_bytes()
    serial = served_serial(daemon)
    failed = reload_count(daemon, "failed")
    try:
        node.cert_file.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
        daemon.signal(signal.SIGHUP)
        assert wait_for(lambda: reload_count(daemon, "failed") == failed + 1, 10)
        assert served_serial(daemon) == serial
        assert daemon.get("/api/v1/status")[0] == 200
        assert "TLS files not reloaded" in daemon.log()
    finally:
        node.cert_file.write_bytes(good)


def test_roles_reload_on_sighup(served: tuple[Daemon, Issued], pki: Pki) -> None:
    daemon, _ = served
    late = pki.client_context(pki.issue("renewal-late"))

    def status() -> int:
        try:
            with urllib.request.urlopen(daemon.url("/api/v1/status"), timeout=5, context=late) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    assert status() == 401  # a certificate of the CA, but no role yet
    access = daemon.config["security"]["access"]
    access["certificates"].append({"name": "renewal-late", "role": "read_only"})
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    assert wait_for(lambda: status() == 200, 10)
