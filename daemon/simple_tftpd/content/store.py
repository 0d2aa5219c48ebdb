"""The local content tree: open files for reading (through the hot-file cache) and for
atomic uploads (temporary file, then rename), and generated files answered in their place."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simple_tftpd.config import Config, NetbootConfig
from simple_tftpd.content.cache import ContentCache, FileKey
from simple_tftpd.content.generated import GeneratedFiles, Protocol, Rendered
from simple_tftpd.content.resolve import PathResolver, ResolveError
from simple_tftpd.protocol import netascii
from simple_tftpd.protocol.packets import ErrorCode
from simple_tftpd.protocol.transfer import SinkError

# Uploads in progress live beside their target under this prefix and are never served.
UPLOAD_PREFIX = ".simple-tftpd-upload-"
# netascii is converted in memory; cap it so a request cannot make the daemon hold a huge file.
MAX_NETASCII_BYTES = 64 << 20
# Resolved names are reused for this long: a boot storm asks for the same few names thousands
# of times, and realpath is the costliest step of a small request. The window is no wider in
# kind than the one between any realpath and open; the open itself refuses a final symlink.
RESOLVE_TTL = 1.0
RESOLVE_CACHE_ENTRIES = 4096


class BytesSource:
    """Content already in memory (cache hit, small file or netascii conversion)."""

    __slots__ = ("size", "view")

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.size = len(data)

    def read(self, offset: int, length: int) -> memoryview:
        return self.view[offset : offset + length]

    def close(self) -> None:
        pass


class FileSource:
    """A large file read block by block with pread: no mmap, so a file truncated while
    being served cannot crash the daemon with SIGBUS; the client gets short blocks instead."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


Source = BytesSource | FileSource


class UploadSink:
    """Writes to a temporary file beside the target; `commit` fsyncs and renames it into
    place, so readers see either the old file or the complete new one."""

    def __init__(self, target: Path, overwrite: bool) -> None:
        self.target = target
        self._overwrite = overwrite
        fd, tmp = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=target.parent)
        self._fd: int | None = fd
        self._tmp = tmp

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise SinkError(ErrorCode.NOT_DEFINED, "upload already closed")
        try:
            os.write(self._fd, data)
        except OSError as exc:
            self.abort()
            raise SinkError(ErrorCode.DISK_FULL, "cannot write upload") from exc

    def commit(self) -> None:
        if self._fd is None:
            raise SinkError(ErrorCode.NOT_DEFINED, "upload already closed")
        try:
            os.fchmod(self._fd, 0o644)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            if not self._overwrite and self.target.exists():
                raise SinkError(ErrorCode.FILE_EXISTS, "File already exists")
            os.replace(self._tmp, self.target)
        except OSError as exc:
            self.abort()
            raise SinkError(ErrorCode.DISK_FULL, "cannot store upload") from exc
        except SinkError:
            self.abort()
            raise

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


@dataclass(frozen=True, slots=True)
class Opened:
    source: Source
    path: str
    cache_hit: bool
    # The version of the file served (HTTP ETag, Last-Modified); None for a generated file.
    key: FileKey | None = None
    # Set when the answer was rendered for a machine instead of read from disk.
    generated: Rendered | None = None


class ContentStore:
    def __init__(
        self,
        root: Path,
        remap: Sequence[tuple[str, str]],
        cache: ContentCache,
        upload_prefixes: Sequence[str],
        overwrite: bool,
        netboot: NetbootConfig | None = None,
    ) -> None:
        self.resolver = PathResolver(root, remap)
        self.cache = cache
        self.upload_prefixes = tuple(upload_prefixes)
        self.overwrite = overwrite
        self._resolved: dict[str, tuple[float, str]] = {}
        self.generated: GeneratedFiles | None = None
        if netboot is not None and netboot.enabled:
            self.generated = GeneratedFiles(self.resolver, netboot)

    @classmethod
    def from_config(cls, config: Config, cache: ContentCache) -> ContentStore:
        tftp = config.tftp
        return cls(
            tftp.root,
            [(rule.pattern, rule.replacement) for rule in tftp.remap],
            cache,
            tftp.write.prefixes,
            tftp.write.overwrite,
            config.netboot,
        )

    def _resolve(self, filename: str, now: float) -> str:
        hit = self._resolved.get(filename)
        if hit is not None and now - hit[0] < RESOLVE_TTL:
            return hit[1]
        path = str(self.resolver.resolve_read(filename))
        if os.path.basename(path).startswith(UPLOAD_PREFIX):
            raise ResolveError(ErrorCode.FILE_NOT_FOUND, "File not found")
        if self.generated is not None and self.generated.is_private(path):
            raise ResolveError(ErrorCode.ACCESS_VIOLATION, "Access violation")
        if len(self._resolved) >= RESOLVE_CACHE_ENTRIES:
            self._resolved.clear()
        self._resolved[filename] = (now, path)
        return path

    def open_read(
        self,
        filename: str,
        netascii_mode: bool,
        now: float,
        client_ip: str | None = None,
        protocol: Protocol = "tftp",
    ) -> Opened:
        """Open a name for reading: a generated file if a netboot pattern matches it (rendered
        for `client_ip`), else the file under the root. Raises ResolveError."""
        if self.generated is not None:
            rendered = self.generated.render(filename, client_ip, protocol)
            if rendered is not None:
                source = self._convert(rendered.data, netascii_mode)
                return Opened(source, rendered.name, False, None, rendered)
        path = self._resolve(filename, now)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError as exc:
            self._resolved.pop(filename, None)
            raise ResolveError(ErrorCode.FILE_NOT_FOUND, "File not found") from exc
        except OSError as exc:
            self._resolved.pop(filename, None)
            raise ResolveError(ErrorCode.ACCESS_VIOLATION, "Access violation") from exc
        try:
            st = os.fstat(fd)
            # Re-checked on the open descriptor: the path may have been swapped since.
            if not stat.S_ISREG(st.st_mode):
                raise ResolveError(ErrorCode.ACCESS_VIOLATION, "Access violation")
            key = FileKey.from_stat(path, st)
            data = self.cache.get(key, now)
            if data is not None:
                os.close(fd)
                return Opened(self._convert(data, netascii_mode), path, True, key)
            if st.st_size <= self.cache.max_file_bytes or netascii_mode:
                if netascii_mode and st.st_size > MAX_NETASCII_BYTES:
                    raise ResolveError(ErrorCode.ACCESS_VIOLATION, "File too large for netascii")
                data = _read_all(fd, st.st_size)
                os.close(fd)
                self.cache.put(key, data, now)
                return Opened(self._convert(data, netascii_mode), path, False, key)
            return Opened(FileSource(fd, st.st_size), path, False, key)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    @staticmethod
    def _convert(data: bytes, netascii_mode: bool) -> BytesSource:
        return BytesSource(netascii.encode(data) if netascii_mode else data)

    def open_write(self, filename: str) -> UploadSink:
        path = self.resolver.resolve_write(filename, self.upload_prefixes)
        if path.name.startswith(UPLOAD_PREFIX):
            raise ResolveError(ErrorCode.ACCESS_VIOLATION, "Access violation")
        # Checked on the real path, so a symlinked alias of the templates is refused too.
        if self.generated is not None and self.generated.is_private(os.path.realpath(path)):
            raise ResolveError(ErrorCode.ACCESS_VIOLATION, "Access violation")
        if not self.overwrite and path.exists():
            raise ResolveError(ErrorCode.FILE_EXISTS, "File already exists")
        try:
            return UploadSink(path, self.overwrite)
        except OSError as exc:
            raise ResolveError(ErrorCode.ACCESS_VIOLATION, "Access violation") from exc


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
        if not chunk:
            break  # truncated meanwhile: serve what exists
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
