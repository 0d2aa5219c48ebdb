"""Peer servers and tools the harness needs, fetched by the harness itself.

tftpd-hpa and atftpd are unpacked from their .debs instead of installed: installing them runs
maintainer scripts that start a system daemon on port 69, and the two packages conflict.
Only the shared libraries they link against are installed with apt, and only if missing.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

APT_TIMEOUT = 600
QUICK_TIMEOUT = 30

# Binary inside each peer's .deb.
PEER_BINARIES = {"tftpd-hpa": "usr/sbin/in.tftpd", "atftpd": "usr/sbin/atftpd"}


class SetupError(RuntimeError):
    """A peer or tool could not be made available; the message says what to do."""


def _run(argv: list[str], cwd: Path | None = None, timeout: float = APT_TIMEOUT) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result.stdout


def _download_deb(package: str, cache: Path) -> Path:
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if debs:
        return debs[-1]
    try:
        _run(["apt-get", "download", "-q", package], cwd=cache)
    except SetupError:
        # A fresh machine may have no package lists yet.
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "download", "-q", package], cwd=cache)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        raise SetupError(f"apt-get download {package} produced no .deb in {cache}")
    return debs[-1]


def _missing_libraries(binary: Path) -> list[str]:
    output = _run(["ldd", str(binary)], timeout=QUICK_TIMEOUT)
    return [line.split()[0] for line in output.splitlines() if "not found" in line]


def _missing_lib_packages(deb: Path) -> list[str]:
    """Library packages (lib*) from the .deb's Depends that dpkg does not have installed."""
    depends = _run(["dpkg-deb", "-f", str(deb), "Depends"], timeout=QUICK_TIMEOUT)
    names = [re.split(r"[\s(:]", alt.strip())[0] for alt in depends.split(",")]
    missing = []
    for name in names:
        if not name.startswith("lib"):
            continue  # debconf, adduser, ...: only the maintainer scripts need those
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name],
            capture_output=True,
            text=True,
            timeout=QUICK_TIMEOUT,
            check=False,
        )
        if "install ok installed" not in status.stdout:
            missing.append(name)
    return missing


def ensure_peer(name: str, cache: Path) -> tuple[Path, str]:
    """Path of the peer's server binary (unpacked under cache) and the package version."""
    cache.mkdir(parents=True, exist_ok=True)
    deb = _download_deb(name, cache)
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], timeout=QUICK_TIMEOUT).strip()
    unpacked = cache / f"{name}-{version}"
    binary = unpacked / PEER_BINARIES[name]
    if not binary.exists():
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], timeout=QUICK_TIMEOUT)
    if _missing_libraries(binary):
        packages = _missing_lib_packages(deb)
        if packages:
            _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages])
        still = _missing_libraries(binary)
        if still:
            raise SetupError(f"{binary} still misses libraries: {', '.join(still)}")
    return binary, version


REFERENCE_SOURCE = Path(__file__).resolve().parent.parent / "reference" / "epoll_server.c"


def build_reference(cache: Path) -> tuple[Path, str]:
    """Compile the epoll reference server (benchmarks/reference) into cache; (path, compiler)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SetupError("no C compiler for the epoll reference; install gcc (apt-get install gcc)")
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / "epoll-reference"
    if not binary.exists() or binary.stat().st_mtime < REFERENCE_SOURCE.stat().st_mtime:
        _run([compiler, "-O2", "-o", str(binary), str(REFERENCE_SOURCE)], timeout=QUICK_TIMEOUT)
    version = _run([compiler, "--version"], timeout=QUICK_TIMEOUT).splitlines()[0]
    return binary, version


def require_clients() -> None:
    missing = [tool for tool in ("atftp", "curl") if shutil.which(tool) is None]
    if missing:
        raise SetupError(f"missing client(s): {', '.join(missing)}; run `make system-deps`")


def simple_tftpd_command() -> list[str]:
    """The daemon's console script in the venv running this harness (`uv run`)."""
    script = Path(sys.executable).parent / "simple-tftpd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "simple_tftpd"]


# What `simple-tftpd serve` and the tftpy server import (the rest is compiled on first use).
_PYTHON_SERVER_MODULES = (
    "simple_tftpd.cli",
    "simple_tftpd.daemon",
    "simple_tftpd.server",
    "simple_tftpd.api",
    "aiohttp.web",
    "prometheus_client.multiprocess",
    "uvloop",
    "tftpy",
)


def python_server_env() -> dict[str, str]:
    """Environment for the Python servers: bytecode caches on, as after a pip install (pip
    compiles on install; the fabfile deploys that way). Without them every start compiles
    its imports from source (measured: ~2 MiB more PSS per daemon process)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_python_servers() -> None:
    """Write the bytecode caches once, before anything is measured."""
    imports = "; ".join(f"import {module}" for module in _PYTHON_SERVER_MODULES)
    subprocess.run(
        [sys.executable, "-c", imports],
        env=python_server_env(),
        check=True,
        timeout=QUICK_TIMEOUT * 10,
        stdin=subprocess.DEVNULL,
    )


def tool_version(argv: list[str]) -> str:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=QUICK_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def source_revision(repo: Path) -> str:
    """Commit of the daemon under test, and whether its sources differ from it.

    Read-only git: GIT_OPTIONAL_LOCKS=0 stops `git status` from rewriting the index.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(repo), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=QUICK_TIMEOUT,
            check=False,
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "daemon")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return f"{commit} + uncommitted changes in daemon/" if dirty else commit


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, str]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores (nproc)": str(os.cpu_count()),
        "CPU": cpu_model(),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        # Other work on the machine shows up as noise; the load before the run hints at it.
        # (Read at the start only: during the run the benchmark's own clients dominate it.)
        "load average before the run (1/5/15 min)": _loadavg(),
    }


def cpu_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(value) for value in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def after_run_facts(busy_before: float | None, seconds: float) -> dict[str, str]:
    """How busy the machine was during the run: the benchmark's own servers and clients and
    anything else that ran meanwhile (which the harness cannot tell apart)."""
    facts = {"load average after the run (1/5/15 min)": _loadavg()}
    busy_after = cpu_busy_seconds()
    if busy_before is not None and busy_after is not None and seconds > 0:
        cores = os.cpu_count() or 1
        share = (busy_after - busy_before) / (seconds * cores)
        facts["machine CPU busy during the run (all processes)"] = f"{share:.0%}"
    return facts


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
