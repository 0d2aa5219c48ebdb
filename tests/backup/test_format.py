"""The backup format without a cluster: sealing, keys, stores by URL, point in time,
verification and retention on a local location built by hand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from obstore.store import AzureStore, GCSStore, LocalStore, S3Store

from simple_tftpd.backup.crypto import (
    HEADER_SIZE,
    SEGMENT,
    TAG_SIZE,
    IntegrityError,
    KeyProblem,
    Sealer,
    WrongKey,
    load_key,
    parse_key,
)
from simple_tftpd.backup.recovery import (
    NotRecoverable,
    parse_time,
    prune,
    rebuild_index,
    restore_to_dir,
    retention,
    state_at,
    verify,
)
from simple_tftpd.backup.repository import (
    Index,
    JournalTail,
    MissingObject,
    Record,
    Repository,
    Segment,
    Snapshot,
    SnapshotInfo,
    open_store,
    snapshot_name,
)
from simple_tftpd.cluster.node import Entry

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SIZES = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT + 5]


def _in_pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


@pytest.mark.parametrize("key", [KEY, None], ids=["aes", "none"])
@pytest.mark.parametrize("size", SIZES)
def test_seal_and_open_round_trip_in_any_pieces(key: bytes | None, size: int) -> None:
    sealer, data = Sealer(key), os.urandom(size)
    sealed = sealer.seal("blobs/ab/x", data)
    assert len(sealed) == Sealer.sealed_size(size)
    if size >= 32:  # shorter content could turn up in ciphertext by chance
        assert (data[:SEGMENT] in sealed) == (key is None)  # no clear content when encrypted
    stream = sealer.opening("blobs/ab/x")
    out = b"".join(stream.feed(piece) for piece in _in_pieces(sealed, 7777)) + stream.finish()
    assert out == data


@pytest.mark.parametrize("key", [KEY, None], ids=["aes", "none"])
def test_any_flipped_byte_is_detected(key: bytes | None) -> None:
    sealer = Sealer(key)
    sealed = sealer.seal("snapshots/x", os.urandom(SEGMENT + 100))
    for position in (0, 5, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + SEGMENT + 3, -1):
        damaged = bytearray(sealed)
        damaged[position] ^= 0x40
        with pytest.raises(IntegrityError, match="snapshots/x"):
            sealer.open("snapshots/x", bytes(damaged))


@pytest.mark.parametrize("key", [KEY, None], ids=["aes", "none"])
def test_truncation_extension_and_renaming_are_detected(key: bytes | None) -> None:
    sealer = Sealer(key)
    sealed = sealer.seal("journal/x", os.urandom(2 * SEGMENT + 10))
    at_boundary = sealed[: HEADER_SIZE + 2 * (SEGMENT + TAG_SIZE)]  # two whole segments
    for bad in (at_boundary, sealed[:-1], sealed[:10], sealed + b"\x00", b""):
        with pytest.raises(IntegrityError, match="journal/x"):
            sealer.open("journal/x", bad)
    with pytest.raises(IntegrityError, match="journal/y"):
        sealer.open("journal/y", sealed)


def test_wrong_key_and_downgrade_are_refused() -> None:
    sealed = Sealer(KEY).seal("index", b"{}")
    with pytest.raises(WrongKey, match="wrong key"):
        Sealer(OTHER_KEY).open("index", sealed)
    with pytest.raises(IntegrityError, match="algorithm aes-256-gcm, expected none"):
        Sealer(None).open("index", sealed)
    with pytest.raises(IntegrityError, match="algorithm none, expected aes-256-gcm"):
        Sealer(KEY).open("index", Sealer(None).seal("index", b"{}"))


def test_blob_names_hide_digests_only_when_encrypting() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert Sealer(None).blob_name(digest) == digest
    named = Sealer(KEY).blob_name(digest)
    assert named != digest and len(named) == 64 and named == Sealer(KEY).blob_name(digest)


def test_keys_from_hex_base64_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_key(KEY.hex() + "\n", "x") == KEY
    assert parse_key(base64.b64encode(KEY).decode(), "x") == KEY
    for bad in ("", "abc", KEY.hex()[:-2], base64.b64encode(KEY[:16]).decode()):
        with pytest.raises(KeyProblem, match="32 bytes"):
            parse_key(bad, "x")
    key_file = tmp_path / "backup.key"
    key_file.write_text(KEY.hex())
    assert load_key(key_file, None) == KEY
    monkeypatch.setenv("TEST_BACKUP_KEY", base64.b64encode(OTHER_KEY).decode())
    assert load_key(None, "TEST_BACKUP_KEY") == OTHER_KEY
    monkeypatch.delenv("TEST_BACKUP_KEY")
    with pytest.raises(KeyProblem, match="TEST_BACKUP_KEY"):
        load_key(None, "TEST_BACKUP_KEY")
    with pytest.raises(KeyProblem, match="cannot read"):
        load_key(tmp_path / "missing.key", None)


def test_locations_open_the_right_store_for_each_cloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # There is no GCS emulator here: gs:// is covered by construction and URL parsing only.
    gcs = open_store("gs://tftp-backups/site/fra1")
    assert isinstance(gcs, GCSStore) and gcs.prefix == "site/fra1"
    assert gcs.config["bucket"] == "tftp-backups"
    s3 = open_store("s3://tftp-backups/fra1")
    assert isinstance(s3, S3Store) and s3.prefix == "fra1"
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "examplestorage")
    azure = open_store("az://backups/fra1")
    assert isinstance(azure, AzureStore) and azure.prefix == "fra1"
    local = open_store(f"file://{tmp_path}/new/dir")
    assert isinstance(local, LocalStore) and (tmp_path / "new" / "dir").is_dir()


def test_times_parse_as_utc() -> None:
    assert parse_time("latest") is None
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000
    assert parse_time("2023-11-14T22:13:20") == 1700000000
    assert parse_time("2023-11-14T23:13:20+01:00") == 1700000000


def _info(ts: float, revision: int = 1, epoch: str = "0" * 16) -> SnapshotInfo:
    return SnapshotInfo(snapshot_name(ts, epoch, revision), ts, epoch, revision, 0, 0)


def test_retention_keeps_the_window_and_the_base_before_it() -> None:
    day = 86400.0
    now = 1000 * day
    snapshots = [_info(now - d * day, revision=100 - d) for d in (40, 35, 31, 20, 1)]
    keep, drop = retention(snapshots, now, days=30)
    assert [s.ts for s in keep] == [now - 31 * day, now - 20 * day, now - day]
    assert [s.ts for s in drop] == [now - 40 * day, now - 35 * day]
    keep, drop = retention(snapshots[:2], now, days=30)  # all old: the newest stays
    assert [s.ts for s in keep] == [now - 35 * day] and len(drop) == 1
    assert retention([], now, 30) == ([], [])


# -- a location built by hand ----------------------------------------------------------------

EPOCH = "ab" * 8


class Builder:
    """Writes snapshots and journal segments the way the job does, with chosen times."""

    def __init__(self, repo: Repository, blobs: Path) -> None:
        self.repo = repo
        self.blobs = blobs
        self.index = Index("site-a")
        self.revision = 1
        self.chain = 1
        self.state: dict[str, Entry] = {}

    async def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        source = self.blobs / digest
        source.write_bytes(data)
        await self.repo.upload_blob(digest, source, self.blobs)
        return digest

    async def snapshot(self, ts: float) -> SnapshotInfo:
        live = [e for e in self.state.values() if not e.deleted]
        info = SnapshotInfo(
            snapshot_name(ts, EPOCH, self.revision), ts, EPOCH, self.revision, len(live),
            sum(e.size for e in live),
        )  # fmt: skip
        entries = list(self.state.values())
        await self.repo.write_snapshot(Snapshot(info, "site-a", "", "n0", entries))
        self.index.snapshots.append(info)
        if EPOCH not in self.index.journals:
            self.chain = self.revision
        self.index.journals.setdefault(EPOCH, JournalTail(self.revision, self.revision, ts))
        await self.repo.write_index(self.index)
        return info

    async def changes(self, ts: float, files: dict[str, bytes | None]) -> Segment:
        records = []
        for path, data in files.items():
            self.revision += 1
            if data is None:
                entry = Entry(path, "0" * 64, 0, deleted=True, updated=ts)
            else:
                entry = Entry(path, await self.put_blob(data), len(data), 0o644, updated=ts)
            self.state[path] = entry
            records.append(Record(self.revision, ts, path, entry))
        self.revision += 1
        segment = Segment(EPOCH, self.chain, self.revision, ts + 0.5, records)
        await self.repo.write_segment(segment)
        self.chain = self.revision
        self.index.journals[EPOCH] = JournalTail(self.chain, self.revision, ts + 0.5)
        await self.repo.write_index(self.index)
        return segment


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.fixture
def built(tmp_path: Path) -> Builder:
    """Snapshot at t=100 (a, b), then: t=110 b changed, c added; t=120 a deleted;
    snapshot at t=130; t=140 c changed."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    async def build() -> Builder:
        repo = await Repository.open(
            f"file://{tmp_path}/loc", KEY, cluster_id="site-a", create=True
        )
        builder = Builder(repo, scratch)
        await builder.changes(90, {"a": b"a1", "b": b"b1"})
        await builder.snapshot(100)
        await builder.changes(110, {"b": b"b2", "c": b"c1"})
        await builder.changes(120, {"a": None})
        await builder.snapshot(130)
        await builder.changes(140, {"c": b"c2"})
        return builder

    result: Builder = _run(build())
    return result


def _files(point: Any) -> dict[str, str]:
    return {path: entry.digest for path, entry in point.entries.items()}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_point_in_time_from_snapshots_and_journal(built: Builder) -> None:
    repo = built.repo
    expected = {
        100: {"a": b"a1", "b": b"b1"},
        115: {"a": b"a1", "b": b"b2", "c": b"c1"},
        125: {"b": b"b2", "c": b"c1"},
        135: {"b": b"b2", "c": b"c1"},
        None: {"b": b"b2", "c": b"c2"},
    }
    for at, files in expected.items():
        point = _run(state_at(repo, at))
        assert _files(point) == {p: _digest(d) for p, d in files.items()}, at
    assert _run(state_at(repo, 115)).snapshot.ts == 100
    assert _run(state_at(repo, 135)).snapshot.ts == 130
    with pytest.raises(NotRecoverable, match="earliest snapshot"):
        _run(state_at(repo, 99))


def test_journal_gaps_and_lost_tails_are_named(built: Builder) -> None:
    builder = built
    repo = builder.repo
    segments = _run(repo.segments())
    _run(repo.delete([segments[1].name]))  # the one with t=110
    with pytest.raises(NotRecoverable, match="gap before this segment"):
        _run(state_at(repo, 125))
    with pytest.raises(NotRecoverable, match="gap"):
        _run(state_at(repo, 105))  # what happened after the snapshot at t=100 is lost
    assert _files(_run(state_at(repo, 100))) == {"a": _digest(b"a1"), "b": _digest(b"b1")}
    assert len(_run(state_at(repo, 135)).entries) == 2  # the next snapshot bridges the gap
    _run(repo.delete([segments[-1].name]))  # the tail, after the last snapshot
    with pytest.raises(MissingObject, match="segments after revision"):
        _run(state_at(repo, None))
    report = _run(verify(repo))
    assert not report.ok
    assert any(segments[-1].name.rsplit("/", 1)[0] in p for p in report.problems)


def test_verify_and_restore_name_a_damaged_blob(built: Builder, tmp_path: Path) -> None:
    repo = built.repo
    assert _run(verify(repo)).ok
    name = repo.blob_key(_digest(b"c2"))
    path = Path(repo.url.removeprefix("file://")) / name
    sealed = path.read_bytes()
    path.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    report = _run(verify(repo))
    assert [p for p in report.problems if p.startswith(name) and "content of c" in p]
    assert _run(verify(repo, full=False)).ok  # same size: only a full verify reads it
    target = tmp_path / "restored"
    with pytest.raises(IntegrityError, match=name):
        _run(restore_to_dir(repo, None, target))
    assert not target.exists()
    path.write_bytes(sealed[:-5])
    assert any("truncated" in p for p in _run(verify(repo, full=False)).problems)
    path.unlink()
    assert any("missing" in p for p in _run(verify(repo, full=False)).problems)
    _run(restore_to_dir(repo, 135, target))  # c1 is intact
    assert (target / "c").read_bytes() == b"c1" and (target / "b").read_bytes() == b"b2"


def test_prune_keeps_every_blob_a_kept_backup_needs(built: Builder) -> None:
    repo = built.repo
    day = 86400.0
    # At t = 130 + 10 days with 10 days' retention: the t=130 snapshot is the newest before
    # the window, the t=100 one is dropped, with the journal only it needed.
    result = _run(prune(repo, now=130 + 10 * day + 1, days=10, grace=0))
    snapshots = {s.ts: s.name for s in built.index.snapshots}
    assert result["kept_snapshots"] == [snapshots[130]]
    assert result["dropped_snapshots"] == [snapshots[100]]
    assert result["dropped_segments"] == 3
    remaining = set(_run(repo.listing("blobs/")))
    for data, kept in ((b"a1", False), (b"b1", False), (b"c1", True), (b"b2", True), (b"c2", True)):
        assert (repo.blob_key(_digest(data)) in remaining) == kept, data
    assert _run(verify(repo)).ok
    assert _files(_run(state_at(repo, None))) == {"b": _digest(b"b2"), "c": _digest(b"c2")}
    with pytest.raises(NotRecoverable, match="earliest"):
        _run(state_at(repo, 115))


def test_a_location_refuses_another_key_or_cluster(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/loc"
    _run(Repository.open(url, KEY, cluster_id="site-a", create=True))
    with pytest.raises(WrongKey, match="wrong key"):
        _run(Repository.open(url, OTHER_KEY))
    with pytest.raises(KeyProblem, match="encrypted"):
        _run(Repository.open(url, None))
    with pytest.raises(Exception, match="cluster 'site-a', not 'site-b'"):
        _run(Repository.open(url, KEY, cluster_id="site-b"))
    with pytest.raises(MissingObject, match="no simple-tftpd backups"):
        _run(Repository.open(f"file://{tmp_path}/empty", KEY))


def test_a_lost_index_is_reported_and_rebuilt_from_the_objects(built: Builder) -> None:
    repo = built.repo
    _run(repo.delete(["index"]))
    assert _run(verify(repo)).problems[0].startswith("index: missing")
    with pytest.raises(MissingObject, match="index"):
        _run(state_at(repo, None))
    index, problems = _run(rebuild_index(repo, "site-a"))
    assert not problems and [s.ts for s in index.snapshots] == [100, 130]
    assert index.journals[EPOCH].segments_through == built.chain
    _run(repo.write_index(index))
    assert _files(_run(state_at(repo, None))) == {"b": _digest(b"b2"), "c": _digest(b"c2")}
