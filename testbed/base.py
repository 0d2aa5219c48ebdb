"""The shared Debian root that every test host boots from, built once with debootstrap.

The root lives outside the repository (default /var/cache/simple-tftpd-testbed) under a name
derived from its recipe, so it is reused across runs and rebuilt only when the recipe changes or
the directory is missing. A build goes to a temporary directory first and is renamed into place,
so an interrupted build never leaves a half root that a later run would boot.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_DIR = Path(os.environ.get("SIMPLE_TFTPD_TESTBED_CACHE", "/var/cache/simple-tftpd-testbed"))
SUITE = "bookworm"
# What every host carries: the hosts have no outside network, so anything a deployment needs
# (venv support for offline wheel installs, nginx stream for the load balancer, nftables and
# conntrack for the handoff, etcd for clustering) has to be in the base.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "python3",
    "python3-venv",
    "iproute2",
    "procps",
    "nftables",
    "conntrack",
    "nginx",
    "libnginx-mod-stream",
    "etcd-server",
)
# Raise when _customise changes, so cached roots built by the old recipe are not reused.
RECIPE_VERSION = 1
BUILD_TIMEOUT = 900.0
LOCK_TIMEOUT = 900.0

Log = Callable[[str], None]


def base_key(packages: tuple[str, ...] = BASE_PACKAGES) -> str:
    recipe = f"{SUITE}|{RECIPE_VERSION}|{','.join(sorted(packages))}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def find_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt on this machine already uses for SUITE (never a hard-coded host)."""
    override = os.environ.get("SIMPLE_TFTPD_TESTBED_MIRROR")
    if override:
        return override
    candidates: list[Path] = []
    if (apt_dir / "sources.list").is_file():
        candidates.append(apt_dir / "sources.list")
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        candidates += sorted(parts.glob("*.list")) + sorted(parts.glob("*.sources"))
    for path in candidates:
        text = path.read_text(errors="replace")
        found = _deb822_mirror(text) if path.suffix == ".sources" else _one_line_mirror(text)
        if found:
            return found
    raise RuntimeError(
        f"no apt source for Debian {SUITE} found under {apt_dir}; "
        "set SIMPLE_TFTPD_TESTBED_MIRROR to a Debian mirror URL"
    )


def _one_line_mirror(text: str) -> str | None:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 3 and words[1] == SUITE and "main" in words[2:]:
            return words[0]
    return None


def _deb822_mirror(text: str) -> str | None:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if (
            "deb" in fields.get("types", "").split()
            and SUITE in fields.get("suites", "").split()
            and "main" in fields.get("components", "").split()
            and fields.get("uris")
        ):
            return fields["uris"].split()[0]
    return None


@contextmanager
def file_lock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """An exclusive flock, waited for at most `timeout` seconds (released on process death)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise TimeoutError(
                        f"{what}: {path} stayed locked by another run (pid {holder}) "
                        f"for {timeout:.0f}s"
                    ) from None
                time.sleep(1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_base(cache_dir: Path = CACHE_DIR, log: Log = print) -> Path:
    """The path of a complete base root, building it first if it is missing."""
    root = cache_dir / f"base-{base_key()}"
    with file_lock(cache_dir / ".build.lock", LOCK_TIMEOUT, "base root build"):
        if (root / ".complete").is_file():
            return root
        _remove_stale_builds(cache_dir, keep=root)
        building = cache_dir / f"{root.name}.building"
        mirror = find_mirror()
        log(f"testbed: building the {SUITE} base root with debootstrap from {mirror} (once)")
        started = time.monotonic()
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(building),
                mirror,
            ],
            check=True,
            timeout=BUILD_TIMEOUT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _customise(building)
        (building / ".complete").write_text(f"{time.time():.0f}\n")
        building.rename(root)
        log(f"testbed: base root ready in {time.monotonic() - started:.0f}s at {root}")
        return root


def _customise(root: Path) -> None:
    """Make the root a neutral template: per-host identity and keys are added per host."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")  # no DNS: hosts reach nothing outside the bridge
    (root / "etc/ssh/sshd_config.d/testbed.conf").write_text(
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n"
    )
    journald = root / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    (journald / "testbed.conf").write_text("[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n")
    # Installed for the roles that need them; a deployment enables what its host runs.
    _systemctl(root, "disable", "nginx.service", "etcd.service")
    # Periodic jobs only cost CPU on short-lived hosts.
    _systemctl(
        root,
        "mask",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
        "e2scrub_reap.service",
        "fstrim.timer",
        "systemd-tmpfiles-clean.timer",
    )


def _systemctl(root: Path, *args: str) -> None:
    subprocess.run(
        ["systemctl", f"--root={root}", "--quiet", *args],
        check=True,
        timeout=60,
        capture_output=True,
    )


def mounts_below(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first (so they can be unmounted in order)."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == prefix or target.startswith(prefix + "/"):
            found.append(Path(target))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts anything left mounted below (a killed debootstrap leaves
    /proc and /sys mounted in its target) and never crosses into another file system."""
    if not path.exists():
        return
    for mount in mounts_below(path):
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30, capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True, timeout=300)


def _remove_stale_builds(cache_dir: Path, keep: Path) -> None:
    for entry in cache_dir.glob("base-*"):
        if entry == keep:
            continue
        # An older recipe's root may still be the lower layer of a running testbed.
        if any("lowerdir=" + str(entry) in line for line in _mount_options()):
            continue
        remove_tree(entry)


def _mount_options() -> list[str]:
    lines = Path("/proc/self/mounts").read_text().splitlines()
    return [line for line in lines if "overlay" in line]
