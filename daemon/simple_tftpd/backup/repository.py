"""A backup location (one URL, any cloud through obstore) and the layout of objects inside it.

    simple-tftpd-backup.json              marker, clear JSON: format, cluster, encryption, key id
    index                                 catalog: every kept snapshot, the journal tail per epoch
    snapshots/<time>-<epoch>-<revision>   the whole manifest at one etcd revision
    journal/<epoch>/<from>-<through>      every manifest change in revisions (from, through]
    blobs/<2 hex>/<name>                  file contents, stored once and shared by every backup

Everything but the marker is sealed (see crypto.py) under its own name. An epoch is one etcd
cluster's lifetime: revisions restart when a site is rebuilt on a fresh etcd, so journal
positions are only compared within an epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError
from obstore.store import LocalStore, ObjectStore, from_url

from simple_tftpd.backup.crypto import BackupError, IntegrityError, KeyProblem, Sealer, WrongKey
from simple_tftpd.cluster.node import Entry

if TYPE_CHECKING:  # typing-only names in obstore's stubs
    from obstore.store import RetryConfig

FORMAT = 1
MARKER = "simple-tftpd-backup.json"
INDEX = "index"
SNAPSHOTS = "snapshots/"
JOURNAL = "journal/"
BLOBS = "blobs/"

_SEGMENT_RE = re.compile(r"journal/([0-9a-f]{16})/([0-9]{16})-([0-9]{16})")
_SNAPSHOT_RE = re.compile(r"snapshots/[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-([0-9a-f]{16})-([0-9]{16})")
# obstore reads whole chunks of at least this size before handing them over.
READ_CHUNK = 1 << 20


class LocationUnavailable(BackupError):
    """The store could not be reached, or refused a request (credentials, permissions)."""


class MissingObject(IntegrityError):
    """An object the backups need is not in the location."""


# Bounded, so an unreachable location fails a step in about a minute instead of obstore's
# default three, and the journal of the other locations is not held up for long. (Client
# options are left alone: given explicitly, they would replace those read from the
# environment, such as AWS_ALLOW_HTTP.)
RETRY: RetryConfig = {"max_retries": 3, "retry_timeout": datetime.timedelta(seconds=60)}


def open_store(url: str) -> ObjectStore:
    """The obstore store for a location URL. Credentials, regions and endpoints come from the
    usual environment (AWS_*, GOOGLE_*, AZURE_*), which obstore reads itself."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "file":
            return LocalStore(parts.path, mkdir=True)
        return from_url(url, retry_config=RETRY)
    except (BaseError, OSError, ValueError) as exc:
        raise LocationUnavailable(f"{url}: cannot open the location: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    # obstore appends a multi-line debug dump; the first line says what happened.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- what the objects hold -------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    ts: float
    epoch: str
    revision: int
    files: int
    bytes: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotInfo:
        return cls(
            str(data["name"]),
            float(data["ts"]),
            str(data["epoch"]),
            int(data["revision"]),
            int(data["files"]),
            int(data["bytes"]),
        )


def snapshot_name(ts: float, epoch: str, revision: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts))
    micros = round((ts % 1) * 1e6) % 1_000_000
    return f"{SNAPSHOTS}{stamp}.{micros:06d}Z-{epoch}-{revision:016d}"


@dataclass
class Snapshot:
    info: SnapshotInfo
    cluster_id: str
    site_id: str
    node: str
    entries: list[Entry]

    def live(self) -> dict[str, Entry]:
        return {e.path: e for e in self.entries if not e.deleted}


@dataclass(frozen=True)
class Record:
    """One manifest change; `entry` None means the key was removed (a purged tombstone)."""

    revision: int
    ts: float
    path: str
    entry: Entry | None


@dataclass
class Segment:
    epoch: str
    from_revision: int  # exclusive: the segment continues a chain that ended here
    through_revision: int
    through_ts: float  # the state at through_revision was current at least until this time
    records: list[Record]

    @property
    def name(self) -> str:
        return f"{JOURNAL}{self.epoch}/{self.from_revision:016d}-{self.through_revision:016d}"


@dataclass(frozen=True)
class SegmentRef:
    epoch: str
    from_revision: int
    through_revision: int
    name: str
    size: int


@dataclass
class JournalTail:
    segments_through: int  # through_revision of the last segment written
    through_revision: int  # every change up to here is journaled (idle ticks move it on)
    through_ts: float


@dataclass
class Index:
    cluster_id: str
    snapshots: list[SnapshotInfo] = field(default_factory=list)
    journals: dict[str, JournalTail] = field(default_factory=dict)
    updated: float = 0.0


def _entry_json(entry: Entry) -> dict[str, Any]:
    return asdict(entry)


class Repository:
    """One location opened with the right key: sealed reads and writes, blobs and catalog."""

    def __init__(self, url: str, store: ObjectStore, sealer: Sealer, marker: dict[str, Any]):
        self.url = url
        self.store = store
        self.sealer = sealer
        self.marker = marker

    @classmethod
    async def open(
        cls, url: str, key: bytes | None, *, cluster_id: str | None = None, create: bool = False
    ) -> Repository:
        """Open a location; with `create`, make it a backup location of `cluster_id` if it is
        not one yet. Refuses a wrong key, a missing key, or another cluster's location."""
        store = open_store(url)
        wanted = Sealer(key)
        marker = await _read_marker(url, store)
        if marker is None:
            if not create:
                raise MissingObject(MARKER, f"no simple-tftpd backups at {url}")
            marker = {
                "format": FORMAT,
                "product": "simple-tftpd",
                "cluster_id": cluster_id,
                "encryption": wanted.algorithm_name,
                "key_id": wanted.key_id.hex(),
                "created": time.time(),
            }
            body = json.dumps(marker, indent=2).encode()
            try:
                await obstore.put_async(store, MARKER, body, mode="create")
            except AlreadyExistsError:  # another node got there first
                marker = await _read_marker(url, store)
            except (BaseError, OSError) as exc:
                raise LocationUnavailable(
                    f"{url}: cannot write {MARKER}: {_first_line(exc)}"
                ) from None
            if marker is None:
                raise LocationUnavailable(f"{url}: {MARKER} vanished while it was created")
        encryption = marker.get("encryption")
        if encryption == "aes-256-gcm":
            if key is None:
                raise KeyProblem(
                    f"the backups at {url} are encrypted: give the key (--key-file or --key-env)"
                )
            if marker.get("key_id") != wanted.key_id.hex():
                raise WrongKey(
                    MARKER,
                    f"the backups at {url} were written with key id {marker.get('key_id')}, "
                    f"the given key has id {wanted.key_id.hex()}: wrong key",
                )
        elif encryption == "none":
            if key is not None:
                # Refuse rather than trust a marker that may have been downgraded.
                raise IntegrityError(
                    MARKER, f"the backups at {url} are not encrypted, but a key was given"
                )
        else:
            raise IntegrityError(MARKER, f"unknown encryption {encryption!r}")
        if cluster_id is not None and marker.get("cluster_id") != cluster_id:
            raise BackupError(
                f"{url} holds backups of cluster {marker.get('cluster_id')!r}, not "
                f"{cluster_id!r}: give each cluster a location (prefix) of its own"
            )
        return cls(url, store, wanted, marker)

    # -- sealed objects ----------------------------------------------------------------------

    def _unavailable(self, action: str, name: str, exc: BaseException) -> LocationUnavailable:
        return LocationUnavailable(f"{self.url}: cannot {action} {name}: {_first_line(exc)}")

    async def read_stream(self, name: str, sink: Callable[[bytes], object]) -> int:
        """Open `name` chunk by chunk into `sink`; returns the content size. Raises
        MissingObject or IntegrityError naming the object; `sink` may have seen part of a
        bad object, so callers stage what they write."""
        opening = self.sealer.opening(name)
        size = 0
        try:
            result = await obstore.get_async(self.store, name)
            async for chunk in result.stream(min_chunk_size=READ_CHUNK):
                data = opening.feed(bytes(chunk))
                size += len(data)
                sink(data)
        except (FileNotFoundError, NotFoundError):
            raise MissingObject(name, f"missing from {self.url}") from None
        except (BaseError, OSError) as exc:
            raise self._unavailable("read", name, exc) from None
        data = opening.finish()
        sink(data)
        return size + len(data)

    async def read(self, name: str) -> bytes:
        parts: list[bytes] = []
        await self.read_stream(name, parts.append)
        return b"".join(parts)

    async def write(self, name: str, data: bytes) -> int:
        sealed = await asyncio.to_thread(self.sealer.seal, name, data)
        try:
            await obstore.put_async(self.store, name, sealed)
        except (BaseError, OSError) as exc:
            raise self._unavailable("write", name, exc) from None
        return len(sealed)

    async def read_json(self, name: str) -> dict[str, Any]:
        try:
            value = json.loads(await self.read(name))
        except ValueError:
            raise IntegrityError(name, "authentic but not valid JSON") from None
        if not isinstance(value, dict) or value.get("format") != FORMAT:
            raise IntegrityError(name, "not a format-1 simple-tftpd backup object")
        return value

    async def write_json(self, name: str, value: dict[str, Any]) -> int:
        return await self.write(name, json.dumps({"format": FORMAT, **value}).encode())

    async def listing(self, prefix: str) -> dict[str, int]:
        """Object name -> stored size, for every object under `prefix`."""
        return {name: size for name, (size, _) in (await self.listing_times(prefix)).items()}

    async def listing_times(self, prefix: str) -> dict[str, tuple[int, float]]:
        """Object name -> (stored size, last modified as a Unix time)."""
        found: dict[str, tuple[int, float]] = {}
        try:
            async for batch in obstore.list(self.store, prefix, chunk_size=1000):
                for meta in batch:
                    found[meta["path"]] = (int(meta["size"]), meta["last_modified"].timestamp())
        except (FileNotFoundError, NotFoundError):
            return found  # a local location without that directory yet
        except (BaseError, OSError) as exc:
            raise self._unavailable("list", prefix, exc) from None
        return found

    async def delete(self, names: list[str]) -> None:
        for start in range(0, len(names), 500):
            try:
                await obstore.delete_async(self.store, names[start : start + 500])
            except (FileNotFoundError, NotFoundError):
                continue  # already gone: what pruning wanted
            except (BaseError, OSError) as exc:
                raise self._unavailable("delete", names[start], exc) from None

    # -- blobs -------------------------------------------------------------------------------

    def blob_key(self, digest: str) -> str:
        name = self.sealer.blob_name(digest)
        return f"{BLOBS}{name[:2]}/{name}"

    async def upload_blob(self, digest: str, source: Path, scratch: Path) -> int:
        """Seal a local blob into a scratch file (in a thread: it is CPU and disk work the
        event loop serving TFTP must not wait for), then upload it; returns the sealed size."""
        name = self.blob_key(digest)
        fd, tmp = tempfile.mkstemp(prefix=".backup-", dir=scratch)
        try:
            with os.fdopen(fd, "wb") as sink:
                size = await asyncio.to_thread(self.sealer.seal_file, name, source, sink)
            try:
                await obstore.put_async(self.store, name, Path(tmp))
            except (BaseError, OSError) as exc:
                raise self._unavailable("upload", name, exc) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return size

    async def download_blob(self, digest: str, sink: Callable[[bytes], object]) -> int:
        """Stream a blob's content into `sink`, then check it is the content of `digest`."""
        name = self.blob_key(digest)
        hasher = hashlib.sha256()

        def take(data: bytes) -> None:
            hasher.update(data)
            sink(data)

        size = await self.read_stream(name, take)
        if hasher.hexdigest() != digest:
            raise IntegrityError(name, f"content has sha256 {hasher.hexdigest()}, not {digest}")
        return size

    # -- catalog -----------------------------------------------------------------------------

    async def read_index(self) -> Index | None:
        try:
            data = await self.read_json(INDEX)
        except MissingObject:
            return None
        try:
            return Index(
                cluster_id=str(data["cluster_id"]),
                snapshots=[SnapshotInfo.from_json(s) for s in data["snapshots"]],
                journals={
                    str(epoch): JournalTail(
                        int(tail["segments_through"]),
                        int(tail["through_revision"]),
                        float(tail["through_ts"]),
                    )
                    for epoch, tail in data["journals"].items()
                },
                updated=float(data["updated"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise IntegrityError(INDEX, "authentic but malformed") from None

    async def write_index(self, index: Index) -> None:
        index.updated = time.time()
        await self.write_json(
            INDEX,
            {
                "kind": "index",
                "cluster_id": index.cluster_id,
                "snapshots": [asdict(s) for s in sorted(index.snapshots, key=lambda s: s.ts)],
                "journals": {epoch: asdict(tail) for epoch, tail in index.journals.items()},
                "updated": index.updated,
            },
        )

    async def write_snapshot(self, snapshot: Snapshot) -> int:
        return await self.write_json(
            snapshot.info.name,
            {
                "kind": "snapshot",
                "info": asdict(snapshot.info),
                "cluster_id": snapshot.cluster_id,
                "site_id": snapshot.site_id,
                "node": snapshot.node,
                "entries": [_entry_json(e) for e in snapshot.entries],
            },
        )

    async def read_snapshot(self, info: SnapshotInfo | str) -> Snapshot:
        """A snapshot by its index entry (which it must match) or by its name alone."""
        name = info if isinstance(info, str) else info.name
        data = await self.read_json(name)
        try:
            stored = SnapshotInfo.from_json(data["info"])
            snapshot = Snapshot(
                stored,
                str(data["cluster_id"]),
                str(data["site_id"]),
                str(data["node"]),
                [Entry.from_json(e) for e in data["entries"]],
            )
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(name, "authentic but malformed") from None
        if stored.name != name or (isinstance(info, SnapshotInfo) and stored != info):
            raise IntegrityError(name, "does not match its entry in the index")
        return snapshot

    async def snapshot_names(self) -> dict[str, int]:
        return await self.listing(SNAPSHOTS)

    async def segments(self, epoch: str | None = None) -> list[SegmentRef]:
        """Journal segments (of one epoch, or all), in chain order."""
        prefix = f"{JOURNAL}{epoch}/" if epoch else JOURNAL
        refs = []
        for name, size in (await self.listing(prefix)).items():
            match = _SEGMENT_RE.fullmatch(name)
            if match:
                refs.append(SegmentRef(match[1], int(match[2]), int(match[3]), name, size))
        return sorted(refs, key=lambda r: (r.epoch, r.from_revision, r.through_revision))

    async def write_segment(self, segment: Segment) -> int:
        return await self.write_json(
            segment.name,
            {
                "kind": "journal",
                "epoch": segment.epoch,
                "from_revision": segment.from_revision,
                "through_revision": segment.through_revision,
                "through_ts": segment.through_ts,
                "records": [
                    {
                        "revision": r.revision,
                        "ts": r.ts,
                        "path": r.path,
                        "entry": _entry_json(r.entry) if r.entry is not None else None,
                    }
                    for r in segment.records
                ],
            },
        )

    async def read_segment(self, ref: SegmentRef) -> Segment:
        data = await self.read_json(ref.name)
        try:
            segment = Segment(
                str(data["epoch"]),
                int(data["from_revision"]),
                int(data["through_revision"]),
                float(data["through_ts"]),
                [
                    Record(
                        int(r["revision"]),
                        float(r["ts"]),
                        str(r["path"]),
                        Entry.from_json(r["entry"]) if r["entry"] is not None else None,
                    )
                    for r in data["records"]
                ],
            )
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(ref.name, "authentic but malformed") from None
        if segment.name != ref.name:
            raise IntegrityError(ref.name, "its content belongs to another journal segment")
        return segment


def snapshot_epoch_revision(name: str) -> tuple[str, int] | None:
    match = _SNAPSHOT_RE.fullmatch(name)
    return (match[1], int(match[2])) if match else None


async def _read_marker(url: str, store: ObjectStore) -> dict[str, Any] | None:
    try:
        result = await obstore.get_async(store, MARKER)
        raw = bytes(await result.bytes_async())
    except (FileNotFoundError, NotFoundError):
        return None
    except (BaseError, OSError) as exc:
        raise LocationUnavailable(f"{url}: cannot read {MARKER}: {_first_line(exc)}") from None
    try:
        marker = json.loads(raw)
    except ValueError:
        raise IntegrityError(MARKER, f"not valid JSON at {url}") from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise IntegrityError(MARKER, f"not a format-{FORMAT} simple-tftpd backup marker")
    return marker
