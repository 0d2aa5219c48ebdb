"""Reading backups back: the manifest at any point in time, verification, restore into a
directory, and retention. All of it works on a location alone, without etcd or a daemon, which
is what disaster recovery needs.

The manifest at time T is the newest snapshot taken at or before T, plus the journal records
of its epoch after the snapshot's revision whose time is at or before T. Record times never go
backwards within an epoch (see job.py), so the first record later than T ends the replay.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from simple_tftpd.backup.crypto import BackupError, IntegrityError
from simple_tftpd.backup.repository import (
    BLOBS,
    INDEX,
    JOURNAL,
    Index,
    JournalTail,
    MissingObject,
    Repository,
    Segment,
    SegmentRef,
    SnapshotInfo,
    snapshot_epoch_revision,
)
from simple_tftpd.cluster.node import Entry

DAY = 86400.0
# Blobs younger than this are never pruned: a journal tick may have uploaded one whose segment
# is not written yet (only possible while two nodes briefly both believe they lead).
PRUNE_GRACE = 3600.0


class NotRecoverable(BackupError):
    """The backups cannot produce the requested point in time."""


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> float | None:
    """`latest` (None), Unix seconds, or ISO 8601 (UTC unless an offset is given)."""
    if text.strip().lower() == "latest":
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BackupError(
            f"--at {text!r}: give `latest`, Unix seconds or an ISO 8601 time such as "
            "2025-03-01T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


async def read_index(repo: Repository) -> Index:
    index = await repo.read_index()
    if index is None:
        raise MissingObject(INDEX, f"missing from {repo.url}: the catalog of snapshots is gone")
    return index


# -- point in time ---------------------------------------------------------------------------


@dataclass
class PointInTime:
    at: float | None  # None: the latest state the backups know
    snapshot: SnapshotInfo
    entries: dict[str, Entry]  # the live files: path -> entry
    covered_until: float  # the backups know every change up to this time
    records_applied: int

    def summary(self) -> dict[str, Any]:
        notes = []
        if self.at is not None and self.at > self.covered_until:
            notes.append(
                f"the backups record changes up to {iso(self.covered_until)}; changes made "
                "after that, if any, are not in them"
            )
        return {
            "at": iso(self.at) if self.at is not None else "latest",
            "snapshot": self.snapshot.name,
            "snapshot_time": iso(self.snapshot.ts),
            "journal_records_applied": self.records_applied,
            "covered_until": iso(self.covered_until),
            "files": [
                {"path": e.path, "digest": e.digest, "size": e.size, "mode": oct(e.mode)}
                for e in sorted(self.entries.values(), key=lambda e: e.path)
            ],
            "bytes": sum(e.size for e in self.entries.values()),
            "notes": notes,
        }


async def state_at(repo: Repository, at: float | None) -> PointInTime:
    """The live manifest at `at` (None: the latest the backups know)."""
    index = await read_index(repo)
    if not index.snapshots:
        raise NotRecoverable(f"{repo.url} holds no snapshot yet")
    candidates = [s for s in index.snapshots if at is None or s.ts <= at]
    if not candidates:
        earliest = min(s.ts for s in index.snapshots)
        assert at is not None
        raise NotRecoverable(
            f"no backup at or before {iso(at)}; the earliest snapshot is from {iso(earliest)}"
        )
    base = max(candidates, key=lambda s: (s.ts, s.revision))
    snapshot = await repo.read_snapshot(base)
    state = {e.path: e for e in snapshot.entries}
    applied, covered, count = base.revision, base.ts, 0
    past_at = False  # a record later than `at` was seen: the state at `at` is known exactly
    for ref in await repo.segments(base.epoch):
        if ref.through_revision <= applied:
            continue
        if at is not None and covered >= at:
            break  # the state at `at` is known; later gaps do not matter
        if ref.from_revision > applied:
            raise NotRecoverable(
                f"{ref.name}: the journal has a gap before this segment (revisions "
                f"{applied}-{ref.from_revision} of epoch {base.epoch}, after {iso(covered)}); "
                f"restore to a time before {iso(covered)} or after a later snapshot"
            )
        segment = await repo.read_segment(ref)
        for record in segment.records:
            if record.revision <= applied:
                continue  # a segment written twice around a leader change
            if at is not None and record.ts > at:
                past_at = True
                break
            if record.entry is None:
                state.pop(record.path, None)
            else:
                state[record.path] = record.entry
            applied, count = record.revision, count + 1
        if past_at:
            break
        applied = max(applied, segment.through_revision)
        covered = max(covered, segment.through_ts)
    tail = index.journals.get(base.epoch)
    if not past_at and tail is not None and (at is None or covered < at):
        if tail.segments_through > applied:
            raise MissingObject(
                f"{JOURNAL}{base.epoch}/",
                f"journal segments after revision {applied} are missing (the index says "
                f"they run through revision {tail.segments_through})",
            )
        covered = max(covered, tail.through_ts)
    if past_at:
        assert at is not None
        covered = max(covered, at)
    live = {path: e for path, e in state.items() if not e.deleted}
    return PointInTime(at, base, live, covered, count)


# -- restore into a directory -----------------------------------------------------------------


def safe_relative(path: str) -> PurePosixPath:
    """A manifest path as a relative path that cannot leave the restore directory."""
    rel = PurePosixPath(path.lstrip("/"))
    if (
        not rel.parts
        or "\x00" in path
        or "\\" in path
        or any(part in ("..", ".", "") for part in rel.parts)
    ):
        raise IntegrityError(path, "not a safe relative path; refusing to restore it")
    return rel


async def restore_to_dir(repo: Repository, at: float | None, target: Path) -> PointInTime:
    """Write the files of the point in time into `target` (absent or empty). Everything is
    downloaded and verified into a staging directory inside it first, so a bad object leaves
    `target` as it was."""
    point = await state_at(repo, at)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} exists and is not an empty directory; nothing was restored")
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".simple-tftpd-restore-", dir=target))
    try:
        first_copy: dict[str, Path] = {}
        for path, entry in sorted(point.entries.items()):
            dest = staging / safe_relative(path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if entry.digest in first_copy:
                shutil.copyfile(first_copy[entry.digest], dest)
            else:
                with dest.open("wb") as sink:
                    await repo.download_blob(entry.digest, sink.write)
                first_copy[entry.digest] = dest
            os.chmod(dest, entry.mode & 0o7777)
        for child in staging.iterdir():
            os.rename(child, target / child.name)
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                target.rmdir()
        raise
    return point


# -- listing and verification ----------------------------------------------------------------


async def describe(repo: Repository) -> dict[str, Any]:
    """What `backup list` shows: the snapshots and how far each epoch's journal reaches."""
    index = await read_index(repo)
    snapshots = sorted(index.snapshots, key=lambda s: s.ts)
    journals = {
        epoch: {
            "through_revision": tail.through_revision,
            "through_time": iso(tail.through_ts),
            "through_ts": tail.through_ts,
        }
        for epoch, tail in index.journals.items()
    }
    latest = max([s.ts for s in snapshots] + [t.through_ts for t in index.journals.values()])
    return {
        "location": repo.url,
        "cluster_id": index.cluster_id,
        "encryption": repo.sealer.algorithm_name,
        "key_id": repo.sealer.key_id.hex() if repo.sealer.encrypted else None,
        "snapshots": [{**s.__dict__, "time": iso(s.ts)} for s in snapshots],
        "journals": journals,
        "earliest_restorable": iso(snapshots[0].ts) if snapshots else None,
        "latest_restorable": iso(latest) if snapshots else None,
    }


@dataclass
class VerifyReport:
    location: str
    full: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshots: int = 0
    segments: int = 0
    blobs: int = 0
    blob_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def public(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.__dict__}


async def verify(repo: Repository, full: bool = True) -> VerifyReport:
    """Check that every object the backups need is present and authentic. `full` reads every
    blob (digest and tags); otherwise blobs are only checked for presence and size."""
    report = VerifyReport(repo.url, full)
    needed: dict[str, tuple[int, str]] = {}  # digest -> (size, a path that uses it)

    def need(entry: Entry | None) -> None:
        if entry is not None and not entry.deleted:
            needed.setdefault(entry.digest, (entry.size, entry.path))

    index: Index | None = None
    try:
        index = await repo.read_index()
        if index is None:
            report.problems.append(f"{INDEX}: missing (the catalog of snapshots)")
    except IntegrityError as exc:
        report.problems.append(str(exc))
    listed = await repo.snapshot_names()
    indexed = index.snapshots if index is not None else []
    first_revision: dict[str, int] = {}  # epoch -> revision of its oldest snapshot
    for info in indexed:
        report.snapshots += 1
        first_revision[info.epoch] = min(
            first_revision.get(info.epoch, info.revision), info.revision
        )
        if info.name not in listed:
            report.problems.append(f"{info.name}: missing (listed in the index)")
            continue
        try:
            for entry in (await repo.read_snapshot(info)).entries:
                need(entry)
        except IntegrityError as exc:
            report.problems.append(str(exc))
    known = {s.name for s in indexed}
    for name in sorted(set(listed) - known):
        if snapshot_epoch_revision(name) is None:
            report.problems.append(f"{name}: not a snapshot name")
        else:
            report.notes.append(f"{name}: a snapshot not in the index (ignored by restore)")
    await _verify_journals(repo, index, first_revision, report, need)
    await _verify_blobs(repo, needed, report)
    return report


async def _verify_journals(
    repo: Repository,
    index: Index | None,
    first_revision: dict[str, int],
    report: VerifyReport,
    need: Callable[[Entry | None], None],
) -> None:
    by_epoch: dict[str, list[SegmentRef]] = {}
    for ref in await repo.segments():
        by_epoch.setdefault(ref.epoch, []).append(ref)
    tails = index.journals if index is not None else {}
    for epoch in sorted(set(by_epoch) | set(tails)):
        chain = first_revision.get(epoch)
        for ref in by_epoch.get(epoch, []):
            report.segments += 1
            if chain is not None and ref.from_revision > chain:
                report.problems.append(
                    f"{ref.name}: journal gap before it (revisions {chain}-{ref.from_revision} "
                    "missing)"
                )
            if chain is None or ref.through_revision > chain:
                chain = ref.through_revision
            try:
                segment: Segment = await repo.read_segment(ref)
            except IntegrityError as exc:
                report.problems.append(str(exc))
                continue
            for record in segment.records:
                need(record.entry)
        tail = tails.get(epoch)
        if tail is not None and tail.segments_through > (chain or 0):
            report.problems.append(
                f"{JOURNAL}{epoch}/: segments through revision {tail.segments_through} are "
                f"missing (the last present ends at {chain})"
            )


async def _verify_blobs(
    repo: Repository, needed: dict[str, tuple[int, str]], report: VerifyReport
) -> None:
    present = await repo.listing(BLOBS)
    wanted = set()
    for digest, (size, path) in sorted(needed.items(), key=lambda item: item[1][1]):
        name = repo.blob_key(digest)
        wanted.add(name)
        report.blobs += 1
        report.blob_bytes += size
        expected = repo.sealer.sealed_size(size)
        if name not in present:
            report.problems.append(f"{name}: missing (content of {path}, sha256 {digest})")
        elif present[name] != expected:
            report.problems.append(
                f"{name}: truncated or altered: {present[name]} bytes, expected {expected} "
                f"(content of {path})"
            )
        elif report.full:
            try:
                await repo.download_blob(digest, lambda _: None)
            except IntegrityError as exc:
                report.problems.append(f"{exc} (content of {path})")
    unreferenced = len(set(present) - wanted)
    if unreferenced:
        report.notes.append(f"{unreferenced} blob(s) no backup refers to (pruning removes them)")


# -- retention --------------------------------------------------------------------------------


def retention(
    snapshots: list[SnapshotInfo], now: float, days: int
) -> tuple[list[SnapshotInfo], list[SnapshotInfo]]:
    """(keep, drop). Kept: every snapshot inside the window, and the newest one before it,
    which is the base for restoring to the window's first moments (and, when every snapshot
    is old, the latest backup: the newest is never dropped)."""
    cutoff = now - days * DAY
    ordered = sorted(snapshots, key=lambda s: (s.ts, s.revision))
    inside = [s for s in ordered if s.ts >= cutoff]
    before = [s for s in ordered if s.ts < cutoff]
    return before[-1:] + inside, before[:-1]


async def prune(
    repo: Repository, now: float, days: int, grace: float = PRUNE_GRACE
) -> dict[str, Any]:
    """Drop expired snapshots, the journal they alone needed, and blobs nothing kept uses."""
    index = await read_index(repo)  # never prune from a damaged catalog
    keep, _ = retention(index.snapshots, now, days)
    base: dict[str, int] = {}  # epoch -> revision of its oldest kept snapshot
    for info in keep:
        base[info.epoch] = min(base.get(info.epoch, info.revision), info.revision)
    index.snapshots = keep
    index.journals = {e: t for e, t in index.journals.items() if e in base}
    # The catalog first: it must never name an object that is already gone.
    await repo.write_index(index)

    wall = time.time()  # object times are wall-clock times, whatever `now` retention uses
    needed: set[str] = set()
    for info in keep:
        needed |= {
            repo.blob_key(e.digest) for e in (await repo.read_snapshot(info)).live().values()
        }
    doomed_segments = []
    for ref in await repo.segments():
        if ref.epoch not in base or ref.through_revision <= base[ref.epoch]:
            doomed_segments.append(ref.name)
            continue
        for record in (await repo.read_segment(ref)).records:
            if record.entry is not None and not record.entry.deleted:
                needed.add(repo.blob_key(record.entry.digest))
    kept_names = {s.name for s in keep}
    snapshots = await repo.listing_times("snapshots/")
    doomed_snapshots = [
        name for name, (_, mtime) in snapshots.items()
        if name not in kept_names and mtime < wall - grace
    ]  # fmt: skip
    blobs = await repo.listing_times(BLOBS)
    doomed_blobs = [
        name for name, (_, mtime) in blobs.items() if name not in needed and mtime < wall - grace
    ]
    await repo.delete(doomed_snapshots + doomed_segments + doomed_blobs)
    return {
        "kept_snapshots": [s.name for s in keep],
        "dropped_snapshots": sorted(doomed_snapshots),
        "dropped_segments": len(doomed_segments),
        "dropped_blobs": len(doomed_blobs),
        "freed_bytes": sum(blobs[name][0] for name in doomed_blobs),
    }


async def rebuild_index(repo: Repository, cluster_id: str) -> tuple[Index, list[str]]:
    """An index made from the objects themselves, for a location whose index is gone (so the
    next prune does not take the unindexed snapshots for leftovers). Returns the problems
    met on the way: objects that failed their checks are left out."""
    index, problems = Index(cluster_id), []
    for name in sorted(await repo.snapshot_names()):
        try:
            index.snapshots.append((await repo.read_snapshot(name)).info)
        except IntegrityError as exc:
            problems.append(str(exc))
    last: dict[str, SegmentRef] = {}
    for ref in await repo.segments():
        if ref.epoch not in last or ref.through_revision > last[ref.epoch].through_revision:
            last[ref.epoch] = ref
    for epoch, ref in last.items():
        try:
            segment = await repo.read_segment(ref)
        except IntegrityError as exc:
            problems.append(str(exc))
            continue
        index.journals[epoch] = JournalTail(
            segment.through_revision, segment.through_revision, segment.through_ts
        )
    return index, problems
