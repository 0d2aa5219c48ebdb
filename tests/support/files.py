"""Content trees for tests: files of random bytes, so a wrong byte anywhere changes the sha256."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def random_files(root: Path, sizes: Mapping[str, int]) -> Path:
    """Write each name with `size` random bytes under root (made if missing); return root."""
    root.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return root
