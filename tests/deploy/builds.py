"""Daemon wheels for the end-to-end test: the tree's build with a bumped local version, and a
broken one whose entry point cannot even be imported."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from deploy import PROJECT_ROOT
from deploy.release import uv, wheel_version


def build_variant(work: Path, suffix: str, *, broken: bool = False) -> Path:
    """Build a wheel from a copy of the tree whose version is `<version>+<suffix>`."""
    source = work / f"src-{suffix}"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, source / name)
    # Not the editable install's build output (its in-place extension, its egg-info).
    shutil.copytree(
        PROJECT_ROOT / "daemon",
        source / "daemon",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info"),
    )
    pyproject = source / "pyproject.toml"
    text = pyproject.read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.M)
    assert version, "pyproject.toml has no static version"
    new = f"{version.group(1)}+{suffix}"
    text = text.replace(version.group(0), f'version = "{new}"', 1)
    if broken:
        # The installed console script then fails at import: the daemon never starts.
        text = text.replace('"simple_tftpd.cli:main"', '"simple_tftpd.missing:main"')
    # The one version: __version__ reads it from the installed metadata.
    pyproject.write_text(text)
    out = work / f"dist-{suffix}"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [uv(), "build", "--wheel", "--out-dir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("simple_tftpd-*.whl")
    assert wheel_version(wheel) == new
    return wheel
