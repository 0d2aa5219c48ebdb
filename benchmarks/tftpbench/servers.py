"""The servers under test: how to start each in the foreground on loopback, know it is ready,
and stop it by PID."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tftpbench import cgroup
from tftpbench.cgroup import CpuCgroup
from tftpbench.procfs import tree_cpu_seconds
from tftpbench.system import python_server_env, simple_tftpd_command

HOST = "127.0.0.1"
BLKSIZE = 1468
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
PROBE_FILE = "probe.txt"
PROBE_BYTES = b"ready\n"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    windowsize: bool  # negotiates RFC 7440 windowsize; scenarios that need it skip it otherwise
    peer: bool  # unpacked from a Debian package by the harness
    about: str  # one line for the report
    workers: int = 0  # simple-tftpd and the epoll reference: worker processes
    single_port: bool = False  # simple-tftpd only
    fast_path: bool = True  # simple-tftpd only: `performance.fast_path`
    compiled: bool = False  # built from benchmarks/reference by the harness


def _simple(
    name: str, workers: int, single_port: bool = False, fast_path: bool = True
) -> ServerSpec:
    mode = "single-port" if single_port else "standard (port per transfer)"
    path = "" if fast_path else ", `performance.fast_path: false` (pure Python per block)"
    return ServerSpec(
        name=name,
        windowsize=True,
        peer=False,
        about=f"simple-tftpd, {mode}, `performance.thread_pool.workers: {workers}`{path}",
        workers=workers,
        single_port=single_port,
        fast_path=fast_path,
    )


_CORES = os.cpu_count() or 1
REFERENCE = "epoll-reference"
SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        _simple("simple-tftpd", workers=_CORES),
        _simple("simple-tftpd-pure", workers=_CORES, fast_path=False),
        _simple("simple-tftpd-1w", workers=1),
        _simple("simple-tftpd-single-port", workers=_CORES, single_port=True),
        ServerSpec(
            "tftpd-hpa", False, True, "tftpd-hpa `in.tftpd -L -s -B 1468` (fork per transfer)"
        ),
        ServerSpec("atftpd", True, True, "atftpd `--daemon --no-fork --maxthread 300` (threads)"),
        ServerSpec("tftpy", False, False, "tftpy `TftpServer.listen` (pure Python, one thread)"),
        ServerSpec(
            REFERENCE,
            windowsize=False,
            peer=False,
            about="not a TFTP server to use: simple-tftpd's architecture (forked epoll workers "
            "on one SO_REUSEPORT port, a socket per transfer) in ~200 lines of C without timers, "
            "windows, limits, metrics or logging; a floor for what that architecture costs "
            f"(benchmarks/reference/epoll_server.c), {_CORES} workers",
            workers=_CORES,
            compiled=True,
        ),
    )
}


@dataclass
class LaunchContext:
    """What every server start needs: the content root, a scratch dir and peer binaries."""

    root: Path
    workdir: Path
    binaries: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningServer:
    name: str
    port: int
    pid: int
    cgroup: CpuCgroup | None

    @property
    def cpu_method(self) -> str:
        return self.cgroup.method if self.cgroup else "/proc process tree"

    def cpu_seconds(self) -> float:
        """CPU used so far by the server and everything it forked."""
        if self.cgroup is not None:
            return self.cgroup.seconds()
        return tree_cpu_seconds(self.pid)


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _simple_tftpd_config(spec: ServerSpec, ctx: LaunchContext, port: int) -> Path:
    config = {
        "tftp": {
            "bind": HOST,
            "port": port,
            "root": str(ctx.root),
            "single_port": spec.single_port,
            "max_blksize": BLKSIZE,
            "max_windowsize": 64,
            "drain_timeout": 1,
        },
        "api": {"bind": HOST, "port": free_port(socket.SOCK_STREAM)},
        # tftpd-hpa logs nothing per transfer by default; do the same so logging is not measured.
        "logging": {"level": "warning", "transfer_log": False},
        # Every benchmark client is 127.0.0.1: per-client limits would measure the limiter.
        "security": {
            "network": {
                "ddos_protection": {
                    "rate_limit": 1_000_000,
                    "burst": 1_000_000,
                    "max_sessions_per_client": 65535,
                }
            }
        },
        "performance": {
            "thread_pool": {"workers": spec.workers},
            "connection_pool": {"max_connections": 100_000},
            "fast_path": spec.fast_path,
        },
    }
    path = ctx.workdir / f"{spec.name}-{port}.json"
    path.write_text(json.dumps(config, indent=2))
    return path


_TFTPY_SERVER = (
    "import sys, tftpy; tftpy.TftpServer(sys.argv[1]).listen(sys.argv[2], int(sys.argv[3]))"
)


def server_argv(spec: ServerSpec, ctx: LaunchContext, port: int) -> list[str]:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    if spec.name == "tftpd-hpa":
        binary = str(ctx.binaries["tftpd-hpa"])
        listen = ["-L", "-s", "-a", f"{HOST}:{port}", "-B", str(BLKSIZE)]
        return [binary, *listen, "-u", user, str(ctx.root)]
    if spec.name == "atftpd":
        binary = str(ctx.binaries["atftpd"])
        listen = ["--daemon", "--no-fork", "--port", str(port), "--bind-address", HOST]
        # --verbose=3 (LOG_ERR) keeps per-transfer notices out, like the other servers.
        quiet = ["--logfile", "/dev/null", "--verbose=3"]
        return [
            binary,
            *listen,
            "--user",
            f"{user}.{group}",
            "--maxthread",
            "300",
            *quiet,
            str(ctx.root),
        ]
    if spec.name == REFERENCE:
        return [str(ctx.binaries[REFERENCE]), str(port), str(ctx.root), str(spec.workers)]
    if spec.name == "tftpy":
        return [sys.executable, "-c", _TFTPY_SERVER, str(ctx.root), HOST, str(port)]
    config = _simple_tftpd_config(spec, ctx, port)
    return [*simple_tftpd_command(), "serve", "--config", str(config)]


def probe(port: int, timeout: float = 0.3) -> bool:
    """One real read of PROBE_FILE: a server that answers it is ready to serve files."""
    request = b"\x00\x01" + PROBE_FILE.encode() + b"\x00octet\x00"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request, (HOST, port))
        try:
            data, peer = sock.recvfrom(2048)
        except OSError:
            return False
        if data[:2] != b"\x00\x03" or data[4:] != PROBE_BYTES:
            return False
        # ACK the only (short, so final) block so the server finishes the transfer cleanly.
        sock.sendto(b"\x00\x04" + data[2:4], peer)
        return True


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited at start ({proc.returncode}): {_log_tail(log)}")
        if probe(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"not answering TFTP after {START_TIMEOUT:.0f}s: {_log_tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM our own PID, SIGKILL if it lingers, then SIGKILL anything left in its group.

    The server was started as its own session and process group leader, so the group holds
    exactly what it forked (tftpd-hpa's per-transfer children, simple-tftpd's workers).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):  # the group is already empty
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def running(spec: ServerSpec, ctx: LaunchContext) -> Iterator[RunningServer]:
    port = free_port(socket.SOCK_DGRAM)
    argv = server_argv(spec, ctx, port)
    group = cgroup.create(f"{spec.name}-{port}")
    log = ctx.workdir / f"{spec.name}-{port}.log"
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                group.wrap(argv) if group else argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ctx.workdir,
                env=None if spec.peer or spec.compiled else python_server_env(),
                start_new_session=True,
            )
        try:
            _wait_ready(proc, port, log)
            yield RunningServer(spec.name, port, proc.pid, group)
        finally:
            stop(proc)
    finally:
        if group is not None:
            group.remove()
