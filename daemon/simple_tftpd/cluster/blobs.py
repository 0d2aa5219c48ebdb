"""Content-addressed blobs on one node (sha256), and the atomic switch of served files.

A blob is written to a temporary file, its digest checked, then renamed to its digest: a blob
under its final name is always complete and correct. Served files under the TFTP root are
hard links to blobs (a copy where links are impossible), swapped in with one rename, so a
client reads either the old version or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from simple_tftpd.content.store import UPLOAD_PREFIX

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


class DigestMismatch(Exception):
    pass


class BlobWriter:
    """Receives one blob in chunks; `finish` verifies and stores it under its digest."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        fd, self._tmp = tempfile.mkstemp(prefix=".incoming-", dir=store.directory)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self, expected: str | None = None) -> str:
        digest = self._hash.hexdigest()
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if expected is not None and digest != expected:
                raise DigestMismatch(f"content has sha256 {digest}, expected {expected}")
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self._store.path(digest))
        except BaseException:
            self.abort()
            raise
        return digest

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class BlobStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # Leftovers of writes interrupted by a crash.
        for stale in directory.glob(".incoming-*"):
            stale.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise ValueError("not a sha256 hex digest")
        return self.directory / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def digests(self) -> list[str]:
        return [p.name for p in self.directory.iterdir() if DIGEST_RE.match(p.name)]

    def collect(self, referenced: set[str], grace: float) -> list[str]:
        """Delete blobs no manifest entry uses that are older than `grace` seconds."""
        removed = []
        cutoff = time.time() - grace
        for digest in self.digests():
            if digest in referenced:
                continue
            path = self.path(digest)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(digest)
        return removed


def publish(blob: Path, target: Path, mode: int) -> None:
    """Make `target` serve `blob`'s bytes, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(blob, tmp)
        except OSError:
            shutil.copyfile(blob, tmp)
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
