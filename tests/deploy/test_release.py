"""Release archives: what goes in, how they are named, and build errors worth reading."""

from __future__ import annotations

import json
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from deploy import PROJECT_ROOT
from deploy import release as release_module
from deploy.inventory import ReleaseTarget
from deploy.release import (
    BuildError,
    build_release,
    check_wheel_target,
    has_compiled_fast_path,
    platform_tags,
    wheel_version,
)

REQUIREMENTS = "click==8.1.7 \\\n    --hash=sha256:abc\n"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No uv, no index: the lock export and the dependency download are faked."""
    deps = tmp_path / "deps"
    deps.mkdir()
    (deps / "click-8.1.7-py3-none-any.whl").write_bytes(b"click wheel")
    monkeypatch.setattr(release_module, "locked_requirements", lambda root: REQUIREMENTS)
    monkeypatch.setattr(release_module, "dependency_wheels", lambda req, target, cache: deps)
    return tmp_path


def make_wheel(directory: Path, version: str, content: bytes = b"wheel") -> Path:
    wheel = directory / f"simple_tftpd-{version}-py3-none-any.whl"
    wheel.write_bytes(content)
    return wheel


def test_archive_holds_wheels_requirements_probe_and_manifest(offline: Path) -> None:
    wheel = make_wheel(offline, "0.2.0")
    release = build_release(offline / "work", ReleaseTarget(), wheel=wheel)
    assert release.version == "0.2.0"
    assert release.release_id.startswith("0.2.0-")
    with tarfile.open(release.archive) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("release.json"))  # type: ignore[arg-type]
        requirements = tar.extractfile("requirements.txt").read().decode()  # type: ignore[union-attr]
    assert names == {
        "release.json",
        "requirements.txt",
        "probe.py",
        "wheels/simple_tftpd-0.2.0-py3-none-any.whl",
        "wheels/click-8.1.7-py3-none-any.whl",
    }
    assert manifest["release_id"] == release.release_id
    assert "--hash=sha256:abc" in requirements  # pip on the host checks the lock's hashes


def test_release_id_follows_the_content(offline: Path) -> None:
    first = build_release(offline / "work", ReleaseTarget(), wheel=make_wheel(offline, "0.2.0"))
    again = build_release(offline / "work", ReleaseTarget(), wheel=make_wheel(offline, "0.2.0"))
    assert again == first
    changed = make_wheel(offline, "0.2.0", b"patched wheel")
    assert (
        build_release(offline / "work", ReleaseTarget(), wheel=changed).release_id
        != first.release_id
    )


def test_wheel_names_are_checked(tmp_path: Path) -> None:
    assert wheel_version(Path("simple_tftpd-1.2.3+local-py3-none-any.whl")) == "1.2.3+local"
    with pytest.raises(BuildError, match="not a wheel file name"):
        wheel_version(Path("simple_tftpd.tar.gz"))
    with pytest.raises(BuildError, match="not a simple-tftpd wheel"):
        wheel_version(Path("click-8.1.7-py3-none-any.whl"))
    with pytest.raises(BuildError, match="no such wheel"):
        build_release(tmp_path, ReleaseTarget(), wheel=tmp_path / "simple_tftpd-1-py3-none-any.whl")


def test_platform_tags_cover_every_glibc_up_to_the_hosts() -> None:
    tags = platform_tags(ReleaseTarget(glibc="2.36", arch="x86_64"))
    assert tags[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux_2_37_x86_64" not in tags
    assert tags[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def test_build_tools_missing_on_the_controller() -> None:
    with pytest.raises(BuildError, match="no-such-tool is not installed on the controller"):
        release_module._run(["no-such-tool", "--version"], "checking")


def test_only_the_newest_archives_are_kept(offline: Path) -> None:
    for number in range(release_module.KEEP_ARCHIVES + 2):
        wheel = make_wheel(offline, "0.2.0", f"build {number}".encode())
        latest = build_release(offline / "work", ReleaseTarget(), wheel=wheel)
    archives = list((offline / "work/releases").glob("*.tar"))
    assert len(archives) == release_module.KEEP_ARCHIVES
    assert latest.archive in archives


ABI3_X86 = "simple_tftpd-0.2.0-cp311-abi3-linux_x86_64.whl"


@pytest.mark.parametrize(
    ("name", "target"),
    [
        (
            "simple_tftpd-0.2.0-py3-none-any.whl",
            ReleaseTarget(python_version="3.9", arch="aarch64"),
        ),
        (ABI3_X86, ReleaseTarget()),
        (ABI3_X86, ReleaseTarget(python_version="3.13")),
        ("simple_tftpd-0.2.0-cp311-abi3-linux_aarch64.whl", ReleaseTarget(arch="aarch64")),
        (
            "simple_tftpd-0.2.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            ReleaseTarget(python_version="3.12"),
        ),
    ],
)
def test_wheels_the_hosts_install(name: str, target: ReleaseTarget) -> None:
    check_wheel_target(Path(name), target)


@pytest.mark.parametrize(
    ("name", "target", "problem"),
    [
        (
            ABI3_X86,
            ReleaseTarget(arch="aarch64"),
            "built for linux_x86_64, which the hosts \\(aarch64",
        ),
        (
            "simple_tftpd-0.2.0-cp311-abi3-manylinux_2_39_x86_64.whl",
            ReleaseTarget(glibc="2.36"),
            "built for manylinux_2_39_x86_64, which the hosts \\(x86_64, glibc 2.36",
        ),
        (
            ABI3_X86,
            ReleaseTarget(python_version="3.10"),
            "does not install on the hosts' Python 3.10",
        ),
        (
            "simple_tftpd-0.2.0-cp312-cp312-linux_x86_64.whl",
            ReleaseTarget(python_version="3.11"),
            "does not install on the hosts' Python 3.11",
        ),
    ],
)
def test_wheels_the_hosts_cannot_install(name: str, target: ReleaseTarget, problem: str) -> None:
    with pytest.raises(BuildError, match=problem):
        check_wheel_target(Path(name), target)


def test_release_for_hosts_of_another_arch_is_refused_before_packing(offline: Path) -> None:
    wheel = offline / ABI3_X86
    wheel.write_bytes(b"compiled wheel")
    with pytest.raises(BuildError, match="build the wheel on an aarch64 machine"):
        build_release(offline / "work", ReleaseTarget(arch="aarch64"), wheel=wheel)
    assert not (offline / "work/releases").exists()


def test_the_same_tree_builds_the_same_wheel(tmp_path: Path) -> None:
    """setuptools stamps build times into the wheel: only a fixed SOURCE_DATE_EPOCH keeps the
    release id, and so a second deploy of an unchanged tree, the same."""
    first = release_module.build_wheel(PROJECT_ROOT, tmp_path / "first")
    time.sleep(2)  # zip times have a 2 s resolution
    second = release_module.build_wheel(PROJECT_ROOT, tmp_path / "second")
    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("compiled", [True, False])
def test_release_says_whether_the_wheel_has_the_compiled_path(
    offline: Path, compiled: bool
) -> None:
    wheel = offline / ABI3_X86
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("simple_tftpd/server.py", "")
        if compiled:
            archive.writestr("simple_tftpd/_fastpath.abi3.so", b"\x7fELF")
    assert build_release(offline / "work", ReleaseTarget(), wheel=wheel).compiled is compiled


def test_the_wheel_built_from_the_tree_has_the_compiled_path(tmp_path: Path) -> None:
    # `make test` installs gcc before anything is built.
    assert has_compiled_fast_path(release_module.build_wheel(PROJECT_ROOT, tmp_path / "dist"))
