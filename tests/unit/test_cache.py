import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from simple_tftpd.content.cache import ContentCache, FileKey


def key(
    path: str = "/srv/a",
    size: int = 4,
    device: int = 1,
    inode: int = 10,
    mtime_ns: int = 100,
    ctime_ns: int = 200,
) -> FileKey:
    return FileKey(path, device, inode, size, mtime_ns, ctime_ns)


def test_from_stat(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    st = os.stat(f)
    k = FileKey.from_stat(str(f), st)
    assert k == FileKey(str(f), st.st_dev, st.st_ino, 5, st.st_mtime_ns, st.st_ctime_ns)


def test_hit_and_miss() -> None:
    cache = ContentCache(max_bytes=100, ttl=10, max_file_bytes=100)
    assert cache.get(key(), now=0) is None
    cache.put(key(), b"abcd", now=0)
    assert cache.get(key(), now=1) == b"abcd"
    assert cache.get(key("/srv/b"), now=1) is None
    assert (cache.hits, cache.misses) == (1, 2)
    assert cache.entries == 1
    assert cache.current_bytes == 4


def test_ttl_expiry() -> None:
    cache = ContentCache(max_bytes=100, ttl=10, max_file_bytes=100)
    cache.put(key(), b"abcd", now=100)
    assert cache.get(key(), now=110) == b"abcd"
    assert cache.get(key(), now=110.001) is None
    assert cache.entries == 0
    assert cache.current_bytes == 0


def test_changed_file_invalidates() -> None:
    for changed in (key(mtime_ns=101), key(size=5), key(inode=11), key(device=2), key(ctime_ns=1)):
        cache = ContentCache(max_bytes=100, ttl=10, max_file_bytes=100)
        cache.put(key(), b"abcd", now=0)
        assert cache.get(changed, now=0) is None
        assert cache.entries == 0
        # The stale entry is gone, so even the old key now misses.
        assert cache.get(key(), now=0) is None


def test_put_replaces_previous_version() -> None:
    cache = ContentCache(max_bytes=100, ttl=10, max_file_bytes=100)
    cache.put(key(), b"abcd", now=0)
    cache.put(key(size=6, mtime_ns=101), b"abcdef", now=1)
    assert cache.entries == 1
    assert cache.current_bytes == 6
    assert cache.get(key(size=6, mtime_ns=101), now=1) == b"abcdef"


def test_lru_eviction_order() -> None:
    cache = ContentCache(max_bytes=12, ttl=100, max_file_bytes=12)
    cache.put(key("/a"), b"aaaa", now=0)
    cache.put(key("/b"), b"bbbb", now=0)
    cache.put(key("/c"), b"cccc", now=0)
    assert cache.get(key("/a"), now=1) == b"aaaa"  # /b is now least recently used
    cache.put(key("/d"), b"dddd", now=2)
    assert cache.evictions == 1
    assert cache.get(key("/b"), now=3) is None
    assert cache.get(key("/a"), now=3) == b"aaaa"
    assert cache.get(key("/c"), now=3) == b"cccc"
    assert cache.get(key("/d"), now=3) == b"dddd"
    assert cache.current_bytes == 12


def test_too_large_file_not_cached() -> None:
    cache = ContentCache(max_bytes=100, ttl=10, max_file_bytes=8)
    cache.put(key(size=9), b"x" * 9, now=0)
    assert cache.entries == 0
    small = ContentCache(max_bytes=8, ttl=10, max_file_bytes=100)
    small.put(key(size=9), b"x" * 9, now=0)
    assert small.entries == 0


def test_too_large_new_version_drops_old_one() -> None:
    cache = ContentCache(max_bytes=100, ttl=10, max_file_bytes=8)
    cache.put(key(), b"abcd", now=0)
    cache.put(key(size=9, mtime_ns=101), b"x" * 9, now=1)
    assert cache.entries == 0
    assert cache.current_bytes == 0


def test_reconfigure_shrinks() -> None:
    cache = ContentCache(max_bytes=100, ttl=10, max_file_bytes=100)
    for name in ("/a", "/b", "/c"):
        cache.put(key(name), b"1234", now=0)
    cache.put(key("/big", size=20), b"x" * 20, now=0)
    cache.reconfigure(max_bytes=8, ttl=5, max_file_bytes=10)
    assert cache.current_bytes == 8
    assert cache.entries == 2
    assert cache.get(key("/a"), now=1) is None
    assert cache.get(key("/big", size=20), now=1) is None
    assert cache.get(key("/c"), now=5) == b"1234"
    assert cache.get(key("/b"), now=5.5) is None  # new ttl applies


def test_max_bytes_zero_disables() -> None:
    cache = ContentCache(max_bytes=0, ttl=10, max_file_bytes=100)
    cache.put(key(size=0), b"", now=0)
    cache.put(key("/b"), b"abcd", now=0)
    assert cache.entries == 0
    assert cache.get(key(size=0), now=0) is None
    enabled = ContentCache(max_bytes=100, ttl=10, max_file_bytes=100)
    enabled.put(key(), b"abcd", now=0)
    enabled.reconfigure(max_bytes=0, ttl=10, max_file_bytes=100)
    assert enabled.entries == 0
    assert enabled.current_bytes == 0


def test_clear() -> None:
    cache = ContentCache(max_bytes=100, ttl=10, max_file_bytes=100)
    cache.put(key(), b"abcd", now=0)
    cache.clear()
    assert (cache.entries, cache.current_bytes) == (0, 0)
    assert cache.get(key(), now=0) is None


OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "get"]),
        st.sampled_from(["/a", "/b", "/c", "/d", "/e"]),
        st.integers(min_value=0, max_value=40),
        st.integers(min_value=0, max_value=2),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(ops=OPS, max_bytes=st.integers(0, 64), max_file_bytes=st.integers(0, 64))
def test_budget_never_exceeded(
    ops: list[tuple[str, str, int, int]], max_bytes: int, max_file_bytes: int
) -> None:
    cache = ContentCache(max_bytes=max_bytes, ttl=3, max_file_bytes=max_file_bytes)
    for now, (op, path, size, version) in enumerate(ops):
        k = key(path, size=size, mtime_ns=version)
        if op == "put":
            cache.put(k, bytes(size), now=now)
        else:
            data = cache.get(k, now=now)
            assert data is None or len(data) == size
        assert cache.current_bytes <= max_bytes
        assert cache.current_bytes == sum(len(e.data) for e in cache._entries.values())
        if now == len(ops) // 2:
            cache.reconfigure(max_bytes // 2, 3, max_file_bytes)
            max_bytes //= 2
            assert cache.current_bytes <= max_bytes
