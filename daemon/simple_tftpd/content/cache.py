"""Byte-budgeted in-memory cache of hot files (boot loaders, kernels, initrds)."""

import os
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class FileKey:
    """Identity of one version of a file; any change to the file changes the key."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    # ctime catches rewrites that restore the old mtime (cp -p, rsync -t, touch -r).
    ctime_ns: int

    @classmethod
    def from_stat(cls, path: str, st: os.stat_result) -> "FileKey":
        return cls(
            path=path,
            device=st.st_dev,
            inode=st.st_ino,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
        )


@dataclass(frozen=True)
class _Entry:
    key: FileKey
    data: bytes
    stored_at: float


class ContentCache:
    """LRU cache keyed by path whose entries are valid only for an identical FileKey.

    ``evictions`` counts entries dropped to respect the byte budget (including on reconfigure);
    entries dropped because the file changed or the TTL expired count as misses instead.
    """

    def __init__(self, max_bytes: int, ttl: float, max_file_bytes: int) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.max_file_bytes = max_file_bytes
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.current_bytes = 0

    @property
    def entries(self) -> int:
        return len(self._entries)

    def get(self, key: FileKey, now: float) -> bytes | None:
        entry = self._entries.get(key.path)
        if entry is None:
            self.misses += 1
            return None
        if entry.key != key or now - entry.stored_at > self.ttl:
            self._drop(key.path)
            self.misses += 1
            return None
        self._entries.move_to_end(key.path)
        self.hits += 1
        return entry.data

    def put(self, key: FileKey, data: bytes, now: float) -> None:
        # Any previous version is stale once a new one is offered, even if this one is not kept.
        self._drop(key.path)
        # max_bytes <= 0 disables the cache, including for empty files.
        if self.max_bytes <= 0 or len(data) > min(self.max_file_bytes, self.max_bytes):
            return
        self._entries[key.path] = _Entry(key, data, now)
        self.current_bytes += len(data)
        self._evict_to_budget()

    def reconfigure(self, max_bytes: int, ttl: float, max_file_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.max_file_bytes = max_file_bytes
        limit = min(max_file_bytes, max_bytes) if max_bytes > 0 else -1
        for path in [p for p, e in self._entries.items() if len(e.data) > limit]:
            self._drop(path)
            self.evictions += 1
        self._evict_to_budget()

    def clear(self) -> None:
        self._entries.clear()
        self.current_bytes = 0

    def _drop(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self.current_bytes -= len(entry.data)

    def _evict_to_budget(self) -> None:
        while self.current_bytes > self.max_bytes and self._entries:
            _, entry = self._entries.popitem(last=False)
            self.current_bytes -= len(entry.data)
            self.evictions += 1
