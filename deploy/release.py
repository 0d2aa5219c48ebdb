"""Build a release on the controller: the daemon's wheel plus every dependency as a wheel for
the hosts' platform, packed in one archive that hosts install from without any network.

Dependencies are exactly those of `uv.lock` (`uv export --frozen`), downloaded as binary wheels
with their locked hashes checked (`pip download --require-hashes`), and cached per lock and
target platform so later releases only rebuild the daemon's own wheel.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deploy import PROJECT_ROOT, DeployError
from deploy.inventory import ReleaseTarget

PROBE = Path(__file__).with_name("probe.py")
BUILD_TIMEOUT = 600
# Release archives kept on the controller (each holds the whole wheelhouse, tens of MB).
KEEP_ARCHIVES = 5
# The wheel's file times unless SOURCE_DATE_EPOCH is set (hatchling's fixed default).
REPRODUCIBLE_WHEEL_EPOCH = "1580601600"
WHEELHOUSE_CACHE = Path(
    os.environ.get("SIMPLE_TFTPD_WHEELHOUSE_CACHE", Path.home() / ".cache/simple-tftpd/wheelhouse")
)


class BuildError(DeployError):
    pass


def uv() -> str:
    # `uv run` tells its children where it is; otherwise take the one on PATH.
    return os.environ.get("UV") or shutil.which("uv") or "uv"


@dataclass(frozen=True)
class Release:
    """One installable release: `release_id` names its directory on every host."""

    release_id: str
    version: str
    wheel: str
    archive: Path
    sha256: str
    # The wheel carries the compiled per-block path (simple_tftpd._fastpath); without it the
    # nodes serve everything on the pure-Python path.
    compiled: bool = False


def _run(
    argv: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise BuildError(f"{what}: {argv[0]} is not installed on the controller") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: no result after {BUILD_TIMEOUT}s") from None
    if done.returncode != 0:
        raise BuildError(f"{what} failed:\n{done.stderr.strip()[-3000:]}")
    return done.stdout


def wheel_version(wheel: Path) -> str:
    parts = wheel.name.split("-")
    if len(parts) < 5 or not wheel.name.endswith(".whl"):
        raise BuildError(f"{wheel}: not a wheel file name (name-version-python-abi-platform.whl)")
    if parts[0] != "simple_tftpd":
        raise BuildError(f"{wheel}: not a simple-tftpd wheel")
    return parts[1]


def check_wheel_target(wheel: Path, target: ReleaseTarget) -> None:
    """Refuse a daemon wheel that pip on the hosts would not install. With its compiled
    extension the daemon's wheel is tagged for the machine that built it (cp311-abi3-linux_x86_64
    from `uv build` on the controller); a pure py3-none-any wheel installs anywhere."""
    pythons, abis, platforms = (
        part.split(".") for part in wheel.name.removesuffix(".whl").split("-")[-3:]
    )
    if not {"any", f"linux_{target.arch}", *platform_tags(target)} & set(platforms):
        raise BuildError(
            f"{wheel.name} is built for {'.'.join(platforms)}, which the hosts ({target.arch},"
            f" glibc {target.glibc}: release.arch and release.glibc in the inventory) cannot"
            f" install: build the wheel on an {target.arch} machine and pass it with --wheel,"
            " or correct release.arch"
        )
    minor = int(target.python_version.split(".")[1])
    accepted = {
        f"cp3{minor}-cp3{minor}",
        f"cp3{minor}-none",
        "py3-none",
        *(f"py3{older}-none" for older in range(minor + 1)),
        *(f"cp3{older}-abi3" for older in range(2, minor + 1)),
    }
    if not accepted & {f"{python}-{abi}" for python in pythons for abi in abis}:
        raise BuildError(
            f"{wheel.name} does not install on the hosts' Python {target.python_version}"
            " (release.python_version in the inventory): a cp3N-abi3 wheel needs Python >= 3.N,"
            " a cp3N-cp3N wheel exactly 3.N. Correct release.python_version, or build the wheel"
            " for the hosts' Python and pass it with --wheel (the daemon needs Python >= 3.11)"
        )


def has_compiled_fast_path(wheel: Path) -> bool:
    """Whether the wheel holds the extension (a build without a C compiler goes on without)."""
    if not zipfile.is_zipfile(wheel):
        return False
    with zipfile.ZipFile(wheel) as archive:
        return any(
            name.startswith("simple_tftpd/_fastpath.") and name.endswith(".so")
            for name in archive.namelist()
        )


def build_wheel(project_root: Path, out_dir: Path) -> Path:
    # A fresh directory: a stale wheel of the same version must never be picked up instead.
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    _run(
        [uv(), "build", "--wheel", "--out-dir", str(out_dir), str(project_root)],
        "building the daemon wheel (uv build)",
        # The same tree gives the same wheel, and so the same release id: a second deploy of
        # it changes nothing. setuptools stamps each file's build time into the wheel otherwise.
        env={"SOURCE_DATE_EPOCH": REPRODUCIBLE_WHEEL_EPOCH, **os.environ},
    )
    built = sorted(out_dir.glob("simple_tftpd-*.whl"))
    if len(built) != 1:
        raise BuildError(f"uv build made {len(built)} simple_tftpd wheels in {out_dir}, not 1")
    return built[0]


def locked_requirements(project_root: Path) -> str:
    """The daemon's runtime dependencies pinned by uv.lock, with their hashes."""
    return _run(
        [
            uv(),
            "export",
            "--frozen",
            "--no-default-groups",
            "--no-emit-project",
            "--format",
            "requirements-txt",
            "--no-header",
            "--project",
            str(project_root),
        ],
        "exporting the locked requirements (uv export)",
    )


def platform_tags(target: ReleaseTarget) -> list[str]:
    """Every manylinux tag the hosts' glibc accepts (pip does not widen perennial tags)."""
    minor = int(target.glibc.split(".")[1])
    arch = target.arch
    tags = [f"manylinux_2_{v}_{arch}" for v in range(minor, 4, -1)]
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def dependency_wheels(requirements: str, target: ReleaseTarget, cache: Path) -> Path:
    """A directory of binary wheels for `requirements`, downloaded once per lock and target."""
    key = hashlib.sha256((requirements + target.model_dump_json()).encode()).hexdigest()[:16]
    wheels = cache / key
    if (wheels / ".complete").is_file():
        return wheels
    partial = cache / f"{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "requirements.txt").write_text(requirements)
    tags = [arg for tag in platform_tags(target) for arg in ("--platform", tag)]
    version = target.python_version
    _run(
        [
            uv(),
            "tool",
            "run",
            "--from",
            "pip",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--no-deps",
            "--require-hashes",
            "--python-version",
            version,
            "--implementation",
            "cp",
            "--abi",
            f"cp{version.replace('.', '')}",
            *tags,
            "--dest",
            str(partial),
            "--requirement",
            str(partial / "requirements.txt"),
        ],
        f"downloading dependency wheels for Python {version} {target.arch} (pip download)",
    )
    (partial / ".complete").write_text(f"{time.time():.0f}\n")
    shutil.rmtree(wheels, ignore_errors=True)
    partial.rename(wheels)
    # One directory per lock and target: older locks' wheels are of no further use.
    cached = sorted(
        (path for path in cache.iterdir() if (path / ".complete").is_file()),
        key=lambda path: path.stat().st_mtime,
    )
    for stale in cached[:-KEEP_ARCHIVES]:
        shutil.rmtree(stale, ignore_errors=True)
    return wheels


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_release(
    work_dir: Path,
    target: ReleaseTarget,
    *,
    wheel: Path | None = None,
    project_root: Path = PROJECT_ROOT,
    cache: Path = WHEELHOUSE_CACHE,
) -> Release:
    """Build (or reuse) the release archive for `wheel`, or for a wheel built from the tree."""
    wheel = wheel or build_wheel(project_root, work_dir / "dist")
    if not wheel.is_file():
        raise BuildError(f"{wheel}: no such wheel")
    version = wheel_version(wheel)
    check_wheel_target(wheel, target)
    requirements = locked_requirements(project_root)
    deps = dependency_wheels(requirements, target, cache)
    identity = hashlib.sha256()
    for part in (_sha256(wheel), requirements, PROBE.read_text()):
        identity.update(part.encode())
    release_id = f"{version}-{identity.hexdigest()[:10]}"
    archive = work_dir / "releases" / f"simple-tftpd-{release_id}.tar"
    if not archive.is_file():
        archive.parent.mkdir(parents=True, exist_ok=True)
        manifest = {
            "release_id": release_id,
            "version": version,
            "wheel": wheel.name,
            "python": target.python_version,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        partial = archive.with_suffix(".partial")
        # Uncompressed: the wheels are zip files already.
        with tarfile.open(partial, "w") as tar:
            _add_bytes(tar, "release.json", json.dumps(manifest, indent=2).encode())
            # With the locked hashes: pip on the host checks every wheel against the lock again.
            _add_bytes(tar, "requirements.txt", requirements.encode())
            tar.add(PROBE, arcname="probe.py")
            tar.add(wheel, arcname=f"wheels/{wheel.name}")
            for dep in sorted(deps.glob("*.whl")):
                tar.add(dep, arcname=f"wheels/{dep.name}")
        partial.rename(archive)
    archive.touch()  # newest first below, also when an existing archive is reused
    older = sorted(archive.parent.glob("simple-tftpd-*.tar"), key=lambda p: p.stat().st_mtime)
    for stale in older[:-KEEP_ARCHIVES]:
        stale.unlink()
    return Release(
        release_id, version, wheel.name, archive, _sha256(archive), has_compiled_fast_path(wheel)
    )


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
