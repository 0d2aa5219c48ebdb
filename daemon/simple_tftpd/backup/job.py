"""The site leader's backup job: snapshots on the cron schedule and on demand, a journal of
every manifest change in between, retention, restore into the cluster, status and metrics.

Journal. Every `backup.journal_seconds` the leader puts a barrier key and reads etcd's history
(a watch from the last journaled revision) up to that barrier: every manifest change in
between, in commit order, including versions that were replaced a moment later, arrives exactly
once. The changes go to each location as one journal segment, then the position (epoch,
revision, time) is saved in etcd, so a new leader resumes where the old one stopped; a segment
written twice around a leader change is harmless (restore skips revisions it has applied).
The barrier key sorts just before `manifest/`, so one watch over [barrier, manifest0) sees
both the barrier and the manifest and nothing else. A tick that finds no manifest key newer
than every position writes nothing to etcd (which keeps every revision until compacted).

Record times. A record's time is the change's own time (`Entry.updated`, from the node that
made it), clamped into [previous record's time, barrier time]: never backwards, never in the
future, and exact even when the journal catches up late after a failover.

Epochs. A site rebuilt on a fresh etcd starts a new epoch (a random id created in etcd), since
its revisions start again from 1. A new epoch starts with a base snapshot, but not while the
cluster is empty and the location holds an earlier epoch's backups: that is a site waiting to
be restored, and an empty snapshot would become the "latest" backup. `backup now` or a restore
starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import shutil
import time
import uuid
from collections import deque
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from typing import Any

import aetcd
from cronsim import CronSim

from simple_tftpd.backup.crypto import BackupError, KeyProblem, load_key
from simple_tftpd.backup.recovery import iso, prune, rebuild_index, state_at, verify
from simple_tftpd.backup.repository import (
    BLOBS,
    Index,
    JournalTail,
    Record,
    Repository,
    Segment,
    Snapshot,
    SnapshotInfo,
    snapshot_name,
)
from simple_tftpd.cluster.blobs import DigestMismatch
from simple_tftpd.cluster.etcd import ClusterUnavailable, bounded
from simple_tftpd.cluster.node import ClusterNode, Entry, _stopping

log = logging.getLogger("simple_tftpd.backup")

# An idle journal still rewrites the index this often, so `covered_until` keeps up.
INDEX_REFRESH = 60.0
HISTORY_TIMEOUT = 10.0
OPERATIONS_KEPT = 20
STOP_GRACE = 5.0
# What a failed job step can raise that is the location's or the cluster's fault, not a bug.
FAILURES = (BackupError, ClusterUnavailable, LookupError, OSError, DigestMismatch, TimeoutError)


@dataclass
class Position:
    """How far a location's journal reaches, kept in etcd for the next leader."""

    epoch: str
    revision: int  # every change up to this revision is journaled...
    ts: float  # ...and that state was current at least until this time
    chain: int  # through_revision of the last segment written, or of the base snapshot


@dataclass
class LocationState:
    url: str
    repo: Repository | None = None
    index: Index | None = None
    uploaded: set[str] = field(default_factory=set)  # blob object names known present
    position: Position | None = None
    position_loaded: bool = False
    index_written: float = 0.0
    state: str = "starting"
    last_error: str | None = None
    last_backup: dict[str, Any] | None = None
    last_success_at: float | None = None
    segments_written: int = 0
    records_written: int = 0
    lost_versions: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def id(self) -> str:
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]

    def public(self) -> dict[str, Any]:
        position = self.position
        return {
            "url": self.url,
            "state": self.state,
            "last_error": self.last_error,
            "last_backup": self.last_backup,
            "last_success": iso(self.last_success_at) if self.last_success_at else None,
            "lost_versions": list(self.lost_versions),
            "snapshots": len(self.index.snapshots) if self.index is not None else None,
            "journal": {
                "epoch": position.epoch if position else None,
                "revision": position.revision if position else None,
                "covered_until": iso(position.ts) if position else None,
                "covered_until_ts": position.ts if position else None,
                "segments_written": self.segments_written,
                "records_written": self.records_written,
            },
        }


@dataclass
class Operation:
    id: str
    kind: str
    started: float
    finished: float | None = None
    outcome: str = "running"
    error: str | None = None
    result: Any = None

    def public(self) -> dict[str, Any]:
        return asdict(self)


class BackupJob:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.config = node.config.backup
        self.locations = {url: LocationState(url) for url in self.config.locations}
        self.key: bytes | None = None
        self.key_error: str | None = None
        self.epoch: str | None = None
        self.next_run: float | None = None
        self.operations: dict[str, Operation] = {}
        self._lock = asyncio.Lock()  # one step at a time: journal, snapshot, prune, restore
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._leading = False
        self._scratch = node.config.clustering.state_dir / "backup-scratch"
        prefix = node.keys.prefix
        self._barrier = (prefix + "manifest.backup-barrier").encode()
        self._barrier_end = (prefix + "manifest0").encode()  # the end of `manifest/`

    def _etcd_key(self, suffix: str) -> bytes:
        return (self.node.keys.prefix + "backup/" + suffix).encode()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        # Leftovers of uploads interrupted by a crash.
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch.mkdir(parents=True, exist_ok=True)
        if self.config.encryption:
            try:
                self.key = load_key(self.config.key_file, self.config.key_env)
            except KeyProblem as exc:
                # The daemon keeps serving; backups report the problem everywhere they can.
                self.key_error = str(exc)
                log.error("backups disabled: %s", exc)
        self._task = asyncio.create_task(self._run(), name="backup")

    async def stop(self) -> None:
        # Let a step in flight finish first: an object-store call abandoned halfway can
        # complete on obstore's runtime thread while the interpreter shuts down, which aborts
        # the process. A longer step (a big restore) is cancelled all the same.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lock.acquire(), STOP_GRACE)
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
        for task in [self._task, *self._running]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @property
    def is_leader(self) -> bool:
        return self.node.leader == self.node.node_id

    async def _run(self) -> None:
        while True:
            try:
                if self.is_leader:
                    if not self._leading:
                        self._take_over()
                    async with self._lock:
                        await self._tick()
                else:
                    self._leading = False
            except ClusterUnavailable as exc:
                log.debug("backup paused: %s", exc)
            except Exception:  # one bad tick must not end backups for good
                log.exception("backup tick failed")
            except asyncio.CancelledError:
                if _stopping():
                    raise
                log.warning("backup call cancelled by the etcd client; retrying")
            await asyncio.sleep(self.config.journal_seconds)

    def _take_over(self) -> None:
        """Newly leader: what another leader may have changed since is re-read."""
        self._leading = True
        for loc in self.locations.values():
            loc.position_loaded = False
            loc.repo = None

    async def _tick(self) -> None:
        if self.key_error is not None:
            for loc in self.locations.values():
                self._failed(loc, self.key_error)
            return
        await self._ensure_epoch()
        await self._journal_all()
        if await self._schedule_due():
            await self._backup_all("schedule", forced=False)
            await self._prune_all()
            await self._record_scheduled_run()

    async def _ensure_epoch(self) -> None:
        if self.epoch is not None:
            return
        key, fresh = self._etcd_key("epoch"), uuid.uuid4().hex[:16].encode()
        await self.node.etcd.call(
            lambda c: c.transaction(
                compare=[c.transactions.create(key) == 0],
                success=[c.transactions.put(key, fresh)],
                failure=[],
            )
        )
        result = await self.node.etcd.call(lambda c: c.get(key))
        self.epoch = result.value.decode()

    # -- schedule -------------------------------------------------------------------------

    def _next_after(self, ts: float) -> float:
        start = datetime.datetime.fromtimestamp(ts, datetime.UTC)
        return next(CronSim(self.config.schedule, start)).timestamp()

    async def _schedule_due(self) -> bool:
        """Due if the schedule passed a run time since the last scheduled run (a run missed
        while no node led is made up at once)."""
        record = await self.node.etcd.get_json(self._etcd_key("schedule"))
        if record is None:
            await self._record_scheduled_run()
            return False
        self.next_run = self._next_after(float(record["last"]))
        return time.time() >= self.next_run

    async def _record_scheduled_run(self) -> None:
        now = time.time()
        await self.node.etcd.put_json(self._etcd_key("schedule"), {"last": now})
        self.next_run = self._next_after(now)

    # -- locations ------------------------------------------------------------------------

    async def _repo(self, loc: LocationState) -> Repository:
        if loc.repo is None:
            repo = await Repository.open(
                loc.url, self.key, cluster_id=self.node.config.node.cluster_id, create=True
            )
            index = await repo.read_index()
            if index is None:
                index, problems = await rebuild_index(repo, self.node.config.node.cluster_id)
                if index.snapshots or problems:
                    # Only a lost index gets here with snapshots: say so loudly.
                    count = len(index.snapshots)
                    message = f"{loc.url}: index was missing; rebuilt from {count} snapshot(s)"
                    log.warning("%s; problems: %s", message, problems)
                    await self.node.event("backup_index_rebuilt", message)
                await repo.write_index(index)
            loc.uploaded = set(await repo.listing(BLOBS))
            loc.index, loc.repo = index, repo
        return loc.repo

    async def _position(self, loc: LocationState) -> Position | None:
        if not loc.position_loaded:
            stored = await self.node.etcd.get_json(self._etcd_key(f"positions/{loc.id}"))
            loc.position = Position(**stored) if stored else None
            loc.position_loaded = True
        return loc.position

    async def _save_position(self, loc: LocationState, position: Position) -> None:
        await self.node.etcd.put_json(self._etcd_key(f"positions/{loc.id}"), asdict(position))
        loc.position = position
        self.node.metrics.backup_journal_timestamp.labels(loc.url).set(position.ts)

    def _failed(self, loc: LocationState, error: BaseException | str) -> None:
        message = str(error)
        if loc.last_error != message:
            log.warning("backup to %s: %s", loc.url, message)
        loc.state, loc.last_error = "error", message

    async def _ensure_blob(self, loc: LocationState, entry: Entry, *, required: bool) -> int | None:
        """Upload a blob unless the location has it; returns the bytes uploaded. A blob this
        node lacks is pulled from a peer first. If no node has it any more, `required` says
        whether to fail (the content is current) or go on without it and return None (an old
        version whose content is gone everywhere: the journal must not stall for ever)."""
        repo = await self._repo(loc)
        name = repo.blob_key(entry.digest)
        if name in loc.uploaded:
            return 0
        if not self.node.blobs.has(entry.digest):
            try:
                await self.node._fetch(entry.digest)
            except LookupError as exc:
                if required:
                    raise LookupError(
                        f"{entry.path}: blob {entry.digest[:12]} is on no node yet: {exc}"
                    ) from None
                message = f"{entry.path}: version {entry.digest[:12]} is lost, not backed up"
                await self.node.event("backup_blob_lost", message)
                log.error("backup to %s: %s", loc.url, message)
                loc.lost_versions.append(message)
                return None
        size = await repo.upload_blob(
            entry.digest, self.node.blobs.path(entry.digest), self._scratch
        )
        loc.uploaded.add(name)
        return size

    # -- snapshots ------------------------------------------------------------------------

    async def _backup_all(self, reason: str, forced: bool) -> dict[str, Any]:
        """A snapshot to every location (the manifest is read once, so they all match)."""
        revision, items = await self.node.etcd.get_prefix_json(self.node.keys.manifest)
        ts = time.time()
        entries = [Entry.from_json(item) for _, item in items]
        locations = list(self.locations.values())
        # Side by side: a slow or unreachable location must not hold the others back.
        results = await asyncio.gather(
            *(self._snapshot(loc, revision, ts, entries, reason, forced) for loc in locations)
        )
        return {loc.url: result for loc, result in zip(locations, results, strict=True)}

    async def _snapshot(
        self,
        loc: LocationState,
        revision: int,
        ts: float,
        entries: list[Entry],
        reason: str,
        forced: bool,
    ) -> dict[str, Any]:
        assert self.epoch is not None
        metrics = self.node.metrics
        started, clock = time.time(), time.monotonic()
        live = [e for e in entries if not e.deleted]
        result: dict[str, Any] = {"started": iso(started), "reason": reason}
        try:
            if self.key_error is not None:
                raise KeyProblem(self.key_error)
            repo = await self._repo(loc)
            assert loc.index is not None
            if not forced and await self._waiting_for_restore(loc, live):
                return {**result, "outcome": "skipped", "error": loc.last_error}
            # A fresh listing per run: a blob deleted behind our back is uploaded again.
            loc.uploaded = set(await repo.listing(BLOBS))
            uploaded = 0
            for entry in live:
                uploaded += await self._ensure_blob(loc, entry, required=True) or 0
            info = SnapshotInfo(
                snapshot_name(ts, self.epoch, revision),
                ts,
                self.epoch,
                revision,
                len(live),
                sum(e.size for e in live),
            )
            snapshot = Snapshot(
                info,
                self.node.config.node.cluster_id,
                self.node.site_id,
                self.node.node_id,
                entries,
            )
            uploaded += await repo.write_snapshot(snapshot)
            loc.index.snapshots.append(info)
            position = await self._position(loc)
            if position is None or position.epoch != self.epoch:
                # The journal of this epoch starts at its base snapshot.
                await self._save_position(loc, Position(self.epoch, revision, ts, revision))
                loc.index.journals[self.epoch] = JournalTail(revision, revision, ts)
            await repo.write_index(loc.index)
            loc.index_written = time.time()
        except FAILURES as exc:
            self._failed(loc, exc)
            duration = time.monotonic() - clock
            loc.last_backup = {
                **result,
                "outcome": "failed",
                "error": str(exc),
                "duration": duration,
            }
            metrics.backup_runs.labels(loc.url, "failed").inc()
            metrics.backup_last_outcome.labels(loc.url).set(0)
            metrics.backup_last_duration.labels(loc.url).set(duration)
            return loc.last_backup
        duration = time.monotonic() - clock
        loc.state, loc.last_error, loc.last_success_at = "ok", None, time.time()
        loc.last_backup = {
            **result,
            "outcome": "ok",
            "snapshot": info.name,
            "files": info.files,
            "bytes": info.bytes,
            "uploaded_bytes": uploaded,
            "duration": round(duration, 3),
        }
        metrics.backup_runs.labels(loc.url, "ok").inc()
        metrics.backup_last_outcome.labels(loc.url).set(1)
        metrics.backup_last_success.labels(loc.url).set(loc.last_success_at)
        metrics.backup_last_duration.labels(loc.url).set(duration)
        metrics.backup_last_size.labels(loc.url).set(info.bytes)
        metrics.backup_last_uploaded.labels(loc.url).set(uploaded)
        await self.node.event(
            "backup_snapshot", f"{loc.url}: {info.files} files, {uploaded} bytes uploaded"
        )
        return loc.last_backup

    async def _waiting_for_restore(self, loc: LocationState, live: list[Entry]) -> bool:
        assert loc.index is not None
        earlier = [s for s in loc.index.snapshots if s.epoch != self.epoch]
        position = await self._position(loc)
        starting_epoch = position is None or position.epoch != self.epoch
        if not (starting_epoch and not live and earlier):
            return False
        last = max(s.ts for s in earlier)
        loc.state = "waiting"
        loc.last_error = (
            f"this cluster is empty and {loc.url} holds backups of an earlier one (the last "
            f"from {iso(last)}): restore them (`simple-tftpd backup restore --into-cluster`) "
            "or start backing up this cluster with `simple-tftpd backup now`"
        )
        return True

    async def _prune_all(self) -> dict[str, Any]:
        locations = list(self.locations.values())
        results = await asyncio.gather(*(self._prune(loc) for loc in locations))
        return {loc.url: result for loc, result in zip(locations, results, strict=True)}

    async def _prune(self, loc: LocationState) -> dict[str, Any]:
        try:
            repo = await self._repo(loc)
            result = await prune(repo, time.time(), self.config.retention_days)
            loc.index = await repo.read_index()
            return result
        except FAILURES as exc:
            self._failed(loc, f"pruning: {exc}")
            return {"error": str(exc)}

    # -- journal --------------------------------------------------------------------------

    async def _journal_all(self) -> None:
        assert self.epoch is not None
        locations = list(self.locations.values())
        # Side by side, as for snapshots: one location's trouble delays no other.
        prepared = await asyncio.gather(*(self._journal_ready(loc) for loc in locations))
        ready = [loc for loc, ok in zip(locations, prepared, strict=True) if ok]
        if not ready:
            return
        start = min(loc.position.revision for loc in ready if loc.position is not None)
        if await self._latest_manifest_revision() <= start:
            # Nothing changed: the state every position holds is still current. Nothing is
            # written to etcd, which keeps every revision until compacted: an idle site
            # would otherwise grow it by a barrier and positions every tick.
            now = time.time()
            await asyncio.gather(*(self._journal(loc, start, now, []) for loc in ready))
            return
        try:
            barrier, through_ts, events = await self._history(start)
        except aetcd.exceptions.RevisionCompactedError as exc:
            # etcd no longer has the history: the journal breaks here and a new base
            # snapshot starts it again (restore reports the gap by name).
            for loc in ready:
                await self.node.event("backup_journal_gap", f"{loc.url}: etcd history compacted")
                loc.position = None
            log.warning("backup journal gap: etcd compacted to %s", exc.compacted_revision)
            return
        await asyncio.gather(*(self._journal(loc, barrier, through_ts, events) for loc in ready))

    async def _journal_ready(self, loc: LocationState) -> bool:
        """True if the location's journal can go on; otherwise it gets (or waits for) the
        base snapshot of this epoch first."""
        assert self.epoch is not None
        try:
            await self._repo(loc)
            position = await self._position(loc)
            if position is not None and position.epoch == self.epoch:
                return True
            await self._start_epoch(loc)
        except FAILURES as exc:
            self._failed(loc, exc)
        return False

    async def _start_epoch(self, loc: LocationState) -> None:
        revision, items = await self.node.etcd.get_prefix_json(self.node.keys.manifest)
        entries = [Entry.from_json(item) for _, item in items]
        await self._snapshot(loc, revision, time.time(), entries, "journal base", forced=False)

    async def _latest_manifest_revision(self) -> int:
        """The newest mod revision under `manifest/` (a purged tombstone leaves no key, so a
        purge alone goes unseen until the next change: it changes nothing restorable)."""
        manifest = self.node.keys.manifest
        result = await self.node.etcd.call(
            lambda c: c.get_prefix(
                manifest, sort_order="descend", sort_target="mod", keys_only=True
            )
        )
        newest = next(iter(result), None)
        return int(newest.mod_revision) if newest is not None else 0

    async def _history(self, after: int) -> tuple[int, float, list[Any]]:
        """(barrier revision, barrier time, manifest events after `after` up to the barrier)."""
        node = self.node
        through_ts = time.time()
        barrier = await node.etcd.put_json(self._barrier, {"node": node.node_id, "ts": through_ts})
        key, end = self._barrier, self._barrier_end
        watch = await node.etcd.call(
            lambda c: c.watch(key, range_end=end, start_revision=after + 1)
        )
        events = []
        deadline = time.monotonic() + HISTORY_TIMEOUT
        try:
            iterator = watch.__aiter__()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("etcd did not replay the manifest history in time")
                event = await bounded(iterator.__anext__(), remaining)
                if event.kv.key == key:
                    if event.kv.mod_revision >= barrier:
                        break
                elif event.kv.key.startswith(node.keys.manifest):
                    events.append(event)
        finally:
            with contextlib.suppress(Exception):
                await bounded(watch.cancel(), 1)
        return barrier, through_ts, events

    async def _journal(
        self, loc: LocationState, barrier: int, through_ts: float, events: list[Any]
    ) -> None:
        try:
            await self._append(loc, barrier, through_ts, events)
        except FAILURES as exc:
            self._failed(loc, exc)

    async def _append(
        self, loc: LocationState, barrier: int, through_ts: float, events: list[Any]
    ) -> None:
        """Append the changes after the location's position to its journal."""
        assert self.epoch is not None and loc.position is not None and loc.index is not None
        position = loc.position
        manifest = self.node.keys.manifest
        records, last_ts = [], position.ts
        for event in events:
            revision = int(event.kv.mod_revision)
            if revision <= position.revision:
                continue
            path = event.kv.key[len(manifest) :].decode("utf-8", "surrogateescape")
            entry = Entry.from_json(json.loads(event.kv.value)) if event.kind == "PUT" else None
            when = entry.updated if entry is not None else through_ts
            last_ts = max(last_ts, min(through_ts, when))
            records.append(Record(revision, last_ts, path, entry))
        repo = await self._repo(loc)
        for record in records:
            entry = record.entry
            if entry is not None and not entry.deleted:
                current = self.node.manifest.get(entry.path)
                await self._ensure_blob(loc, entry, required=current == entry)
        if records:
            await repo.write_segment(
                Segment(self.epoch, position.chain, barrier, through_ts, records)
            )
            loc.segments_written += 1
            loc.records_written += len(records)
            await self._save_position(loc, Position(self.epoch, barrier, through_ts, barrier))
        else:
            # Only in memory: a new leader replaying the quiet stretch finds nothing in it.
            revision = max(position.revision, barrier)
            loc.position = Position(self.epoch, revision, through_ts, position.chain)
            self.node.metrics.backup_journal_timestamp.labels(loc.url).set(through_ts)
        now = loc.position
        loc.index.journals[self.epoch] = JournalTail(now.chain, now.revision, through_ts)
        if records or time.time() - loc.index_written >= INDEX_REFRESH:
            await repo.write_index(loc.index)
            loc.index_written = time.time()
        if loc.state != "waiting":
            loc.state, loc.last_error = "ok", None

    # -- operations -----------------------------------------------------------------------

    def start_operation(self, kind: str, work: Awaitable[Any]) -> Operation:
        operation = Operation(uuid.uuid4().hex[:12], kind, time.time())
        self.operations[operation.id] = operation
        while len(self.operations) > OPERATIONS_KEPT:
            del self.operations[next(iter(self.operations))]
        task = asyncio.create_task(self._operate(operation, work), name=f"backup-{kind}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return operation

    async def _operate(self, operation: Operation, work: Awaitable[Any]) -> None:
        try:
            operation.result = await work
            failed = isinstance(operation.result, dict) and operation.result.get("failed")
            operation.outcome = "failed" if failed else "ok"
        except FAILURES as exc:
            operation.outcome, operation.error = "failed", str(exc)
        except Exception as exc:
            log.exception("backup %s failed", operation.kind)
            operation.outcome, operation.error = "failed", f"internal error: {exc!r}"
        finally:
            operation.finished = time.time()

    async def backup_now(self) -> dict[str, Any]:
        async with self._lock:
            await self._ensure_epoch()
            results = await self._backup_all("on demand", forced=True)
            pruned = await self._prune_all()
        failed = [url for url, r in results.items() if r.get("outcome") != "ok"]
        return {"locations": results, "pruned": pruned, "failed": failed}

    def location(self, url: str | None) -> LocationState:
        if url is None:
            return next(iter(self.locations.values()))
        if url not in self.locations:
            raise BackupError(f"{url} is not one of this cluster's backup locations")
        return self.locations[url]

    async def verify(self, url: str | None, full: bool) -> dict[str, Any]:
        targets = [self.location(url)] if url else list(self.locations.values())
        reports = {}
        async with self._lock:  # not while pruning deletes what verify is looking at
            for loc in targets:
                reports[loc.url] = (await verify(await self._repo(loc), full)).public()
        failed = [u for u, report in reports.items() if not report["ok"]]
        return {"locations": reports, "failed": failed}

    async def restore_into_cluster(self, at: float | None, url: str | None) -> dict[str, Any]:
        """Make the cluster's manifest what it was at `at`. Every blob is downloaded and
        verified into this node's blob store before the first manifest change, so a bad
        backup changes nothing; the changes are new versions, replicated like uploads."""
        node, loc = self.node, self.location(url)
        async with self._lock:
            await self._ensure_epoch()
            repo = await self._repo(loc)
            point = await state_at(repo, at)
            for entry in point.entries.values():
                if node.blobs.has(entry.digest):
                    continue
                writer = node.blobs.writer()
                try:
                    await repo.download_blob(entry.digest, writer.write)
                    writer.finish(expected=entry.digest)
                except BaseException:
                    writer.abort()
                    raise
            current = {p: e for p, e in node.manifest.items() if not e.deleted}
            changes = [
                node.local_entry(p, e.digest, e.size, e.mode, deleted=False)
                for p, e in sorted(point.entries.items())
                if not (p in current and (current[p].digest, current[p].mode) == (e.digest, e.mode))
            ] + [
                node.local_entry(p, e.digest, 0, e.mode, deleted=True)
                for p, e in sorted(current.items())
                if p not in point.entries
            ]
            for done, change in enumerate(changes):
                try:
                    await node.commit(change)
                except ClusterUnavailable:
                    raise ClusterUnavailable(
                        f"etcd lost quorum after {done} of {len(changes)} manifest changes; "
                        "run the restore again (it only makes the changes still missing)"
                    ) from None
            summary = point.summary()
            detail = f"{summary['at']} from {loc.url}: {len(changes)} manifest changes"
            await node.event("backup_restored", detail)
            # A new base: backups of this cluster go on from the restored state.
            snapshots = await self._backup_all("after restore", forced=True)
        return {
            **{k: v for k, v in summary.items() if k != "files"},
            "location": loc.url,
            "files": len(point.entries),
            "changes": len(changes),
            "snapshots": snapshots,
        }

    def status(self) -> dict[str, Any]:
        members = self.node.members
        leader = self.node.leader
        return {
            "enabled": True,
            "node_id": self.node.node_id,
            "leader": leader,
            "leader_api": members.get(leader, {}).get("api") if leader else None,
            "is_leader": self.is_leader,
            "schedule": self.config.schedule,
            "next_run": iso(self.next_run) if self.next_run else None,
            "retention_days": self.config.retention_days,
            "encryption": "aes-256-gcm" if self.config.encryption else "none",
            "key_error": self.key_error,
            "epoch": self.epoch,
            "locations": [loc.public() for loc in self.locations.values()],
            "operations": [op.public() for op in list(self.operations.values())[-5:]],
        }
