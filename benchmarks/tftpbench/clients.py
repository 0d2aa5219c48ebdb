"""The C clients that generate load (atftp, curl) and the check of every downloaded byte."""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tftpbench.servers import BLKSIZE, HOST

# Client-side retransmit timeout: one second for every server, whatever the server's own is.
CLIENT_RETRY_SECONDS = 1
KILL_GRACE = 5.0
CURL_TRANSFER_TIMEOUT = 10.0


@dataclass(frozen=True)
class Expected:
    """Size and sha256 of a served file; every download is checked against both."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Fetch:
    ok: bool
    seconds: float


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_and_remove(path: Path, expected: Expected) -> bool:
    """True if path holds exactly the expected bytes; removes it either way to free space."""
    try:
        ok = path.stat().st_size == expected.size and sha256_of(path) == expected.sha256
    except OSError:
        return False
    path.unlink()
    return ok


def atftp_argv(port: int, remote: str, local: Path, windowsize: int | None) -> list[str]:
    argv = ["atftp", "--get", "-r", remote, "-l", str(local)]
    argv += ["--tftp-timeout", str(CLIENT_RETRY_SECONDS), "--option", f"blksize {BLKSIZE}"]
    if windowsize:
        argv += ["--option", f"windowsize {windowsize}"]
    return [*argv, HOST, str(port)]


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _reap(proc: subprocess.Popen[bytes]) -> int:
    """Exit code, killing our own client by PID if it is still running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    try:
        return proc.wait(KILL_GRACE)
    except subprocess.TimeoutExpired:
        return -1


def fetch_atftp(
    port: int, remote: str, local: Path, expected: Expected, windowsize: int | None, timeout: float
) -> Fetch:
    started = time.monotonic()
    proc = _spawn(atftp_argv(port, remote, local, windowsize))
    # Not proc.wait(timeout): it polls with sleeps of up to 50 ms, which quantised every
    # sub-second transfer (a windowed 64 MiB fetch) to 50 ms steps. A pidfd wakes on exit.
    try:
        (ended,) = _wait_all([proc], started + timeout)
    finally:
        code = _reap(proc)
    seconds = (ended or time.monotonic()) - started
    ok = ended is not None and code == 0
    return Fetch(ok=verify_and_remove(local, expected) and ok, seconds=seconds)


def _wait_all(procs: list[subprocess.Popen[bytes]], deadline: float) -> list[float | None]:
    """Monotonic exit time of each process (None if still running at deadline).

    pidfds make one poll() wake up for whichever client ends first, so each end time is
    taken when it happens rather than when a sequential wait() gets round to it.
    """
    ends: list[float | None] = [None] * len(procs)
    poller = select.poll()
    pending: dict[int, int] = {}
    for index, proc in enumerate(procs):
        fd = os.pidfd_open(proc.pid)
        pending[fd] = index
        poller.register(fd, select.POLLIN)
    try:
        while pending and (remaining := deadline - time.monotonic()) > 0:
            for fd, _event in poller.poll(remaining * 1000):
                ends[pending[fd]] = time.monotonic()
                poller.unregister(fd)
                os.close(fd)
                del pending[fd]
    finally:
        for fd in pending:
            os.close(fd)
    return ends


# Each storm client's shell waits for one line on a shared pipe (fd N), then becomes atftp.
_GATED = 'read _ <&{fd}; exec {fd}<&-; exec "$@"'
# Bound on waiting for every gated client to sit in its read before the release.
GATE_TIMEOUT = 30.0


def _waiting_on_pipe(pid: int) -> bool:
    try:
        return "pipe" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def storm(
    port: int,
    remote: str,
    outdir: Path,
    clients: int,
    expected: Expected,
    timeout: float,
    windowsize: int | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> tuple[list[Fetch], float]:
    """`clients` atftp processes released at once, as machines powered on together; their
    fetches (timed from the release) and the wall time from the release to the last finish.

    Every client is started first, blocked reading a pipe, and all are released with one
    write: started back to back instead, the clients' start times spread with how much CPU
    the server left the harness (against tftpd-hpa's hundreds of processes, the 200th began
    4-5 s after the first), which made per-transfer times incomparable. `wrap` rewrites
    each argv (to start the client in a cgroup)."""
    procs: list[subprocess.Popen[bytes]] = []
    gate_read, gate_write = os.pipe()
    try:
        for index in range(clients):
            argv = atftp_argv(port, remote, outdir / f"storm-{index}", windowsize)
            gated = ["/bin/sh", "-c", _GATED.format(fd=gate_read), "sh", *argv]
            procs.append(
                subprocess.Popen(
                    wrap(gated) if wrap else gated,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(gate_read,),
                )
            )
        os.close(gate_read)
        gate_read = -1
        deadline = time.monotonic() + GATE_TIMEOUT
        while time.monotonic() < deadline and not all(_waiting_on_pipe(p.pid) for p in procs):
            time.sleep(0.05)
        released = time.monotonic()
        os.write(gate_write, b"\n" * clients)
        ends = _wait_all(procs, released + timeout)
    finally:
        if gate_read >= 0:
            os.close(gate_read)
        os.close(gate_write)
        codes = [_reap(proc) for proc in procs]
    starts = [released] * clients
    fetches = []
    for index, (start, end, code) in enumerate(zip(starts, ends, codes, strict=True)):
        ok = end is not None and code == 0
        ok = verify_and_remove(outdir / f"storm-{index}", expected) and ok
        fetches.append(Fetch(ok=ok, seconds=(end or time.monotonic()) - start))
    finished = [end for end in ends if end is not None]
    wall = (max(finished) if finished else time.monotonic()) - starts[0]
    return fetches, wall


def _curl_argv(port: int, remote: str, outputs: list[Path], timeout: float) -> list[str]:
    argv = ["curl", "-s", "--tftp-blksize", str(BLKSIZE), "--max-time", str(timeout)]
    for local in outputs:
        argv += ["-o", str(local), f"tftp://{HOST}:{port}/{remote}"]
    return argv


def curl_batch(
    port: int,
    remote: str,
    outdir: Path,
    fetches: int,
    workers: int,
    expected: Expected,
    total_timeout: float,
) -> tuple[int, float]:
    """`fetches` downloads split over `workers` curl processes (several URLs per process, so
    process start-up is not what is measured); returns (verified downloads, wall seconds)."""
    outputs = [outdir / f"small-{index}" for index in range(fetches)]
    shares = [outputs[worker::workers] for worker in range(workers)]
    started = time.monotonic()
    # A lost final ACK can stall one transfer; bound each so the batch still ends in time.
    per_transfer = CURL_TRANSFER_TIMEOUT
    procs = [_spawn(_curl_argv(port, remote, share, per_transfer)) for share in shares if share]
    try:
        ends = _wait_all(procs, started + total_timeout)
    finally:
        for proc in procs:
            _reap(proc)
    finished = [end for end in ends if end is not None]
    wall = (max(finished) if finished else time.monotonic()) - started
    # curl goes on after a failed URL, so each output is checked rather than the exit code.
    verified = sum(verify_and_remove(local, expected) for local in outputs)
    return verified, wall
