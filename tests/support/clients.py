"""Real TFTP clients as tests use them: tftp-hpa, atftp, curl (Debian) and tftpy (PyPI).

Each `fetch_*` downloads `remote` into `local` and returns the client's exit code; callers
check the bytes by sha256, not the exit code alone (tftp-hpa exits 0 on some failures).
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import tftpy

CLIENT_TIMEOUT = 120


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(argv: list[str], cwd: Path | None = None) -> int:
    return subprocess.run(
        argv, capture_output=True, timeout=CLIENT_TIMEOUT, cwd=cwd, check=False
    ).returncode


def fetch_tftp_hpa(host: str, port: int, remote: str, local: Path, mode: str = "binary") -> int:
    family = "-6" if ":" in host else "-4"
    return _run(["tftp", family, host, str(port), "-m", mode, "-c", "get", remote, str(local)])


def fetch_atftp(
    host: str, port: int, remote: str, local: Path, options: dict[str, int] | None = None
) -> int:
    argv = ["atftp", "--get", "-r", remote, "-l", str(local), "--tftp-timeout", "1"]
    for name, value in (options or {}).items():
        argv += ["--option", f"{name} {value}"]
    return _run([*argv, host, str(port)])


def fetch_curl(host: str, port: int, remote: str, local: Path, blksize: int | None = None) -> int:
    url_host = f"[{host}]" if ":" in host else host
    argv = ["curl", "-sS", "--max-time", str(CLIENT_TIMEOUT), "-o", str(local)]
    if blksize:
        argv += ["--tftp-blksize", str(blksize)]
    code = _run([*argv, f"tftp://{url_host}:{port}/{remote}"])
    if code == 0 and not local.exists():
        local.touch()  # curl writes no file for an empty download
    return code


def fetch_tftpy(host: str, port: int, remote: str, local: Path, blksize: int | None = None) -> int:
    options = {"blksize": blksize} if blksize else {}
    try:
        tftpy.TftpClient(host, port, options).download(remote, str(local), timeout=2, retries=5)
    except (tftpy.TftpException, OSError):
        return 1
    return 0


Fetch = Callable[[str, int, str, Path], int]
