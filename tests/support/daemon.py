"""Run a real simple-tftpd process for tests: free ports, a config file, bounded waits,
and a stop by PID. A daemon whose config enables `security.tls` is spoken to over https with
`client_ssl` (the CA, and a client certificate when the daemon requires one)."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

START_TIMEOUT = 20.0


_handed_out: set[int] = set()


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port free right now and never handed out before in this test process: tests start
    many servers, and the kernel happily returns a just-closed port twice."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, kind) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh port found")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll until predicate() is true or timeout passes; True if it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Daemon:
    """One daemon process. `config` is merged over a loopback test config."""

    def __init__(
        self,
        workdir: Path,
        root: Path,
        config: dict[str, Any] | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.workdir = workdir
        self.root = root
        self.client_ssl = client_ssl
        self.port = free_port()
        self.api_port = free_port(socket.SOCK_STREAM)
        base = {
            "tftp": {"bind": "::", "port": self.port, "root": str(root), "timeout": 0.5},
            "api": {"bind": "127.0.0.1", "port": self.api_port},
            # One process unless a test asks for workers: policy counts stay exact.
            "performance": {"thread_pool": {"workers": 1}},
        }
        self.config = deep_merge(base, config or {})
        self.config_path = workdir / f"daemon-{self.port}.json"
        self.log_path = workdir / f"daemon-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        self.config_path.write_text(json.dumps(self.config, indent=2))

    def start(self) -> Daemon:
        self.write_config()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simple_tftpd", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited at start:\n{self.log()}")
            try:
                status, _ = self.get("/api/v1/ready")
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"daemon not ready in {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def scheme(self) -> str:
        tls = self.config.get("security", {}).get("tls", {})
        return "https" if tls.get("enabled") else "http"

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.api_port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                self.url(path), timeout=5, context=self.client_ssl
            ) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.get(path)
        return status, json.loads(body)

    def metrics(self) -> dict[str, float]:
        """Samples keyed like `name{label="v"}` (labels sorted), or plain `name`."""
        status, body = self.get("/api/v1/metrics/prometheus")
        assert status == 200
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, no drain, no goodbye to the cluster."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> Daemon:
        """`with Daemon(...) as running:` starts it and always stops it, even when a test fails."""
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; only our own PID."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            return self.process.wait(5)
