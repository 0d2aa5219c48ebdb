"""One node of a site cluster on etcd.

- Membership: the node's record under `members/` lives on a lease; a dead node drops out
  when the lease expires (`clustering.lease_ttl` seconds).
- Leadership: `leader` is created-if-absent on the same lease; the leader runs the singleton
  jobs (tombstone purge, event trimming). `node.role` is only a hint and is not used here.
- Replicated content: `manifest/<path>` maps a path to a sha256 digest, size and mode (or a
  tombstone). Every node watches the manifest, pulls missing blobs from peers over the API,
  verifies them, and only then switches the served file (see blobs.publish). A full
  reconcile at start and every `resync_seconds` catches up after downtime or a lost watch.
- With `security.tls`, blobs travel over mutual TLS: a peer must show a certificate of the site
  CA for the address it advertises, and this node shows its own (plus the admin token).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from simple_tftpd import __version__
from simple_tftpd.cluster.blobs import CHUNK, BlobStore, DigestMismatch, publish
from simple_tftpd.cluster.etcd import ClusterUnavailable, Etcd, Keys, bounded
from simple_tftpd.config import Config
from simple_tftpd.content.resolve import PathResolver, ResolveError

if TYPE_CHECKING:
    # Not at run time: the CLI imports this module (backup commands read `Entry`), and
    # prometheus-client must not be imported before the supervisor sets its multiprocess
    # directory (see cli._serve).
    from simple_tftpd.metrics import Metrics
    from simple_tftpd.tls import TlsState

log = logging.getLogger("simple_tftpd.cluster")

MAX_EVENTS = 1000
PEER_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=3)
# A failed replication is retried by a full reconcile this soon (a peer was briefly away),
# then less and less often while it keeps failing.
PENDING_RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class Entry:
    """One manifest record. `deleted` entries are tombstones."""

    path: str
    digest: str
    size: int
    mode: int = 0o644
    deleted: bool = False
    updated: float = 0.0
    origin: str = ""  # node that made the change
    site: str = ""  # site that made the change
    hlc: int = 0  # hybrid logical clock of the change: wall ms << 16 | counter

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def wins_over(self, other: Entry | None) -> bool:
        """The rule every site applies to concurrent changes of one path: the later hybrid
        logical clock wins, then the greater site id; a delete is a change like any other."""
        return other is None or (self.hlc, self.site) > (other.hlc, other.site)


class ClusterNode:
    def __init__(self, config: Config, metrics: Metrics, tls: TlsState | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.tls = tls
        self.node_id = config.node.node_id
        self.keys = Keys(config.node.cluster_id)
        clustering = config.clustering
        # A getter, not the material: SIGHUP may renew the certificate under a running node.
        self.etcd = Etcd(clustering.etcd_endpoints, (lambda: tls.material) if tls else None)
        self.ttl = clustering.lease_ttl
        self.advertise = clustering.advertise or f"{config.api.bind}:{config.api.port}"
        state = clustering.state_dir
        self.blobs = BlobStore(state / "blobs")
        self._applied_file = state / "applied.json"
        self.root = config.tftp.root
        self.resolver = PathResolver(self.root)
        self.token = config.api.token or ""
        self.leader: str | None = None
        self.members: dict[str, dict[str, Any]] = {}
        self.manifest: dict[str, Entry] = {}
        self.applied: dict[str, str] = self._load_applied()  # path -> digest served
        self.pending: dict[str, Entry] = {}
        self.quorum = False
        self.recent_errors: deque[str] = deque(maxlen=20)
        self._event_sequence = itertools.count()
        # Where a blob that no member serves is pulled from: the peer sites, when this site
        # syncs with any (set by SiteSync). A blob the leader pulled from a peer site lives
        # on that node alone until the others copy it; if it dies first, only there.
        self.blob_fallback: Callable[[str], Awaitable[None]] | None = None
        self._lease: int | None = None  # lease id: valid on any endpoint, unlike lease objects
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._in_doubt: list[tuple[Entry, Entry | None]] = []
        self.site_id = config.multi_site.site_id
        self._hlc = 0
        self._retry_delay = PENDING_RETRY_SECONDS

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=PEER_TIMEOUT)
        self._tasks = [
            asyncio.create_task(self._membership_loop(), name="cluster-membership"),
            asyncio.create_task(self._sync_loop(), name="cluster-sync"),
        ]
        log.info(
            "cluster node %s of %s (etcd %s)", self.node_id, self.keys.prefix, self.etcd.endpoint
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Leave at once instead of waiting for the lease to expire.
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await bounded(self.etcd.revoke_lease(self._lease), 2)
        await self.etcd.close()
        if self._http is not None:
            await self._http.close()

    # -- membership and leadership --------------------------------------------------------

    def _member_record(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "api": self.advertise,
            # Peers pull blobs with the scheme a node serves, so TLS can be rolled out node
            # by node (a plain node cannot pull from one that requires client certificates).
            "scheme": "https" if self.tls is not None else "http",
            "tftp_port": self.config.tftp.port,
            "version": __version__,
            "pid": os.getpid(),
            "started": time.time(),
            "applied": len(self.applied),
        }

    async def _register(self) -> None:
        self._lease = await self.etcd.grant_lease(self.ttl)
        await self.etcd.put_json(self.keys.member(self.node_id), self._member_record(), self._lease)
        await self.event("joined", f"api {self.advertise}")

    async def _membership_loop(self) -> None:
        interval = max(0.5, self.ttl / 3)
        while True:
            try:
                if self._lease is None:
                    await self._register()
                elif not await self.etcd.refresh_lease(self._lease):
                    log.warning("membership lease expired; registering again")
                    self._lease = None
                    continue
                await self._campaign()
                await self._refresh_members()
                await self._undo_in_doubt()
                self._set_quorum(True)
            except ClusterUnavailable as exc:
                self._set_quorum(False)
                log.warning("etcd unavailable: %s", exc)
            except Exception:  # keep the node alive; the next tick retries
                log.exception("membership loop error")
            except asyncio.CancelledError:
                if _stopping():
                    raise
                log.warning("membership call cancelled by the etcd client; retrying")
            await asyncio.sleep(interval)

    def _set_quorum(self, ok: bool) -> None:
        if ok != self.quorum:
            log.info("etcd quorum %s", "reached" if ok else "lost: serving local content only")
        self.quorum = ok

    async def _campaign(self) -> None:
        keys, lease = self.keys, self._lease
        await self.etcd.call(
            lambda c: c.transaction(
                compare=[c.transactions.create(keys.leader) == 0],
                success=[c.transactions.put(keys.leader, self.node_id.encode(), lease=lease)],
                failure=[],
            )
        )
        result = await self.etcd.call(lambda c: c.get(keys.leader))
        leader = result.value.decode() if result is not None else None
        if leader != self.leader:
            self.leader = leader
            if leader == self.node_id:
                log.info("elected leader of %s", self.keys.prefix)
                await self.event("elected", "leader")
        self.metrics.cluster_leader.set(1 if leader == self.node_id else 0)
        if leader == self.node_id:
            await self._leader_jobs()

    async def _refresh_members(self) -> None:
        _, items = await self.etcd.get_prefix_json(self.keys.members)
        members = {item["node_id"]: item for _, item in items}
        if self.leader == self.node_id:
            for gone in self.members.keys() - members.keys():
                await self.event("left", gone)
        self.members = members
        self.metrics.cluster_members.set(len(members))

    async def _leader_jobs(self) -> None:
        """Purge tombstones past the grace period and keep the event log bounded."""
        grace = self.config.clustering.replication.gc_grace_seconds
        cutoff = time.time() - grace
        for entry in list(self.manifest.values()):
            if entry.deleted and entry.updated < cutoff:
                await self.etcd.delete(self.keys.entry(entry.path))
        _, events = await self.etcd.get_prefix_json(self.keys.events)
        for key, _ in events[:-MAX_EVENTS] if len(events) > MAX_EVENTS else []:
            await self.etcd.delete(key)

    def _event_record(self, kind: str, detail: str) -> tuple[bytes, bytes]:
        """An event's etcd key and value. Keys sort by time; the per-process sequence keeps
        two events of one millisecond apart (site sync can apply entries that fast)."""
        now = time.time()
        sequence = next(self._event_sequence)
        stamp = f"{int(now * 1000):015d}-{self.node_id}-{sequence:09d}"
        record = {"ts": now, "node": self.node_id, "kind": kind, "detail": detail}
        return self.keys.events + stamp.encode(), json.dumps(record).encode()

    async def event(self, kind: str, detail: str) -> None:
        """Record a cluster event (joins, leaves, elections, replication errors)."""
        key, value = self._event_record(kind, detail)
        with contextlib.suppress(ClusterUnavailable):
            await self.etcd.call(lambda c: c.put(key, value))

    async def events(self, limit: int) -> list[dict[str, Any]]:
        _, items = await self.etcd.get_prefix_json(self.keys.events)
        return [item for _, item in items[-limit:]]

    # -- replication ----------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            try:
                revision = await self.reconcile()
                await self._watch(revision + 1)
            except ClusterUnavailable as exc:
                log.debug("sync paused: %s", exc)
            except Exception:  # a lost watch or a peer error: resync next round
                log.exception("sync loop error")
            except asyncio.CancelledError:
                if _stopping():
                    raise
                log.warning("sync call cancelled by the etcd client; resyncing")
            await asyncio.sleep(1.0)

    async def reconcile(self) -> int:
        """Bring local content in line with the whole manifest; returns its revision."""
        revision, items = await self.etcd.get_prefix_json(self.keys.manifest)
        manifest = {}
        for _, item in items:
            entry = Entry.from_json(item)
            manifest[entry.path] = entry
            self.observe(entry)
        self.manifest = manifest
        for path in list(self.applied):
            if path not in manifest:  # tombstone already purged while we were away
                self._unpublish(path)
        for entry in manifest.values():
            await self.apply(entry)
        referenced = {e.digest for e in manifest.values() if not e.deleted}
        grace = self.config.clustering.replication.gc_grace_seconds
        self.blobs.collect(referenced | set(self.applied.values()), grace)
        return revision

    async def _watch(self, start_revision: int) -> None:
        keys = self.keys
        watch = await self.etcd.call(
            lambda c: c.watch_prefix(keys.manifest, start_revision=start_revision)
        )
        deadline = time.monotonic() + self.config.clustering.resync_seconds
        # Back off while the same entries keep failing (no peer has the blob yet).
        if self.pending:
            retry = self._retry_delay
            self._retry_delay = min(retry * 2, self.config.clustering.resync_seconds)
        else:
            retry = self._retry_delay = PENDING_RETRY_SECONDS
        try:
            iterator = watch.__aiter__()
            while True:
                if self.pending:  # entries that failed to replicate: retry soon, not a period later
                    deadline = min(deadline, time.monotonic() + retry)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return  # periodic full reconcile
                try:
                    event = await bounded(iterator.__anext__(), remaining)
                except (TimeoutError, StopAsyncIteration):
                    return
                if event.kind == "PUT":  # aetcd gives the name as a plain str
                    entry = Entry.from_json(json.loads(event.kv.value))
                    self.observe(entry)
                    self.manifest[entry.path] = entry
                    await self.apply(entry)
                else:  # a purged tombstone: nothing left to serve
                    path = event.kv.key[len(keys.manifest) :].decode("utf-8", "surrogateescape")
                    self.manifest.pop(path, None)
                    self._unpublish(path)
        finally:
            with contextlib.suppress(Exception):
                await bounded(watch.cancel(), 1)

    async def apply(self, entry: Entry) -> None:
        if entry.deleted:
            self._unpublish(entry.path)
            return
        if self.applied.get(entry.path) == entry.digest and self._target(entry.path).exists():
            return
        self.pending[entry.path] = entry
        self._update_pending_metrics()
        try:
            if not self.blobs.has(entry.digest):
                await self._fetch(entry.digest)
            self._publish(entry)
            del self.pending[entry.path]
        except (
            ClusterUnavailable,
            OSError,
            aiohttp.ClientError,
            DigestMismatch,
            LookupError,
        ) as exc:
            message = f"{entry.path}: {exc}"
            self.recent_errors.append(message)
            self.metrics.replication_errors.inc()
            log.warning("replication failed: %s", message)
            await self.event("replication_error", message)
        finally:
            self._update_pending_metrics()

    def _update_pending_metrics(self) -> None:
        self.metrics.replication_pending_entries.set(len(self.pending))
        self.metrics.replication_pending_bytes.set(sum(e.size for e in self.pending.values()))

    def _target(self, path: str) -> Path:
        rel = self.resolver.rel_name(path)
        return self.root / rel

    def _publish(self, entry: Entry) -> None:
        target = self._target(entry.path)
        # The parent must stay inside the root even if a directory was swapped for a link.
        parent = os.path.realpath(target.parent if target.parent.exists() else self.root)
        if os.path.commonpath([parent, os.path.realpath(self.root)]) != os.path.realpath(self.root):
            raise ResolveError(2, "Access violation")
        publish(self.blobs.path(entry.digest), target, entry.mode)
        self.applied[entry.path] = entry.digest
        self._save_applied()

    def _unpublish(self, path: str) -> None:
        if path not in self.applied:
            return
        with contextlib.suppress(FileNotFoundError, ResolveError):
            target = self._target(path)
            if target.is_file() and not target.is_symlink():
                target.unlink()
        del self.applied[path]
        self._save_applied()

    async def _fetch(self, digest: str) -> None:
        """Pull a blob from any peer that has it, verifying the digest."""
        assert self._http is not None
        peers = [m for node, m in self.members.items() if node != self.node_id]
        if not peers:
            # At start the first reconcile can run before the membership loop has read the
            # member list: read it now rather than wait for the next periodic resync.
            await self._refresh_members()
            peers = [m for node, m in self.members.items() if node != self.node_id]
        last: Exception | None = LookupError("no other member")
        for peer in peers:
            url = f"{peer.get('scheme', 'http')}://{peer['api']}/api/v1/blobs/{digest}"
            writer = self.blobs.writer()
            try:
                headers = {"Authorization": f"Bearer {self.token}"}
                async with self._http.get(url, headers=headers, ssl=self.client_ssl()) as response:
                    if response.status != 200:
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status
                        )
                    async for chunk in response.content.iter_chunked(CHUNK):
                        writer.write(chunk)
                writer.finish(expected=digest)
                return
            except (aiohttp.ClientError, TimeoutError, DigestMismatch, OSError) as exc:
                writer.abort()
                last = exc
                log.info("blob %s from %s failed: %s", digest[:12], peer["node_id"], exc)
        if self.blob_fallback is not None:
            try:
                await self.blob_fallback(digest)
                return
            except LookupError as exc:
                last = exc
        raise LookupError(f"no peer served blob {digest[:12]}: {last}")

    def client_ssl(self) -> ssl.SSLContext | bool:
        """The context for this node's own HTTPS requests: the newest one after SIGHUP."""
        return self.tls.client if self.tls is not None else True

    def _load_applied(self) -> dict[str, str]:
        try:
            data = json.loads(self._applied_file.read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (FileNotFoundError, ValueError):
            return {}

    def _save_applied(self) -> None:
        tmp = self._applied_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.applied))
        os.replace(tmp, self._applied_file)

    # -- writes from the API --------------------------------------------------------------

    async def commit(self, entry: Entry) -> int:
        """Record an entry in the manifest (one etcd transaction with its event)."""
        keys = self.keys
        event_key, event = self._event_record("deleted" if entry.deleted else "stored", entry.path)
        value = json.dumps(asdict(entry)).encode()

        async def txn(client: Any) -> Any:
            return await client.transaction(
                compare=[],
                success=[
                    client.transactions.put(keys.entry(entry.path), value),
                    client.transactions.put(event_key, event),
                ],
                failure=[],
            )

        # Without quorum, refuse before proposing anything: a proposal stuck in a cut-off
        # leader's log could still commit once the cluster heals.
        if not self.quorum:
            raise ClusterUnavailable("no quorum")
        await self.etcd.call(lambda c: c.get(keys.cluster))  # linearizable: needs quorum now
        previous = self.manifest.get(entry.path)
        try:
            _, responses = await self.etcd.call(txn)
        except ClusterUnavailable:
            # Quorum went away mid-write: the outcome is unknown until it returns.
            self._in_doubt.append((entry, previous))
            raise
        self.manifest[entry.path] = entry
        await self.apply(entry)
        return int(responses[0].response_put.header.revision) if responses else 0

    async def _undo_in_doubt(self) -> None:
        """After quorum returns, undo writes we reported as refused that committed anyway."""
        while self._in_doubt:
            entry, previous = self._in_doubt[0]
            key = self.keys.entry(entry.path)
            await self.etcd.call(
                functools.partial(_restore, key=key, entry=entry, previous=previous)
            )
            self._in_doubt.pop(0)

    def next_hlc(self) -> int:
        """A hybrid logical clock reading for a local change: never behind the wall clock,
        always ahead of every change this node has seen."""
        self._hlc = max(int(time.time() * 1000) << 16, self._hlc + 1)
        return self._hlc

    def observe(self, entry: Entry) -> None:
        self._hlc = max(self._hlc, entry.hlc)

    def local_entry(self, path: str, digest: str, size: int, mode: int, deleted: bool) -> Entry:
        return Entry(
            path, digest, size, mode, deleted, time.time(), self.node_id, self.site_id,
            self.next_hlc(),
        )  # fmt: skip

    async def commit_if_newer(self, entry: Entry, event: tuple[str, str] | None = None) -> bool:
        """Apply a change from another site if it wins over ours (compare-and-swap, so a
        concurrent local change is never overwritten by an older remote one). `event`
        (kind, detail) is recorded in the same etcd transaction: a node that dies right
        after the commit cannot leave a change without its event."""
        key = self.keys.entry(entry.path)
        value = json.dumps(asdict(entry)).encode()
        for _ in range(3):
            current = await self.etcd.call(lambda c: c.get(key))
            existing = Entry.from_json(json.loads(current.value)) if current is not None else None
            if not entry.wins_over(existing):
                return False
            expected = current.mod_revision if current is not None else None
            also = [self._event_record(*event)] if event else []
            swap = functools.partial(
                _compare_and_put, key=key, value=value, expected=expected, also=also
            )
            if await self.etcd.call(swap):
                self.observe(entry)
                self.manifest[entry.path] = entry
                await self.apply(entry)
                return True
        return False

    def status(self) -> dict[str, Any]:
        live = [e for e in self.manifest.values() if not e.deleted]
        return {
            "cluster_id": self.config.node.cluster_id,
            "node_id": self.node_id,
            "leader": self.leader,
            "is_leader": self.leader == self.node_id,
            "quorum": self.quorum,
            "etcd_endpoint": self.etcd.endpoint,
            "members": sorted(self.members.values(), key=lambda m: m["node_id"]),
            "files": len(live),
            "pending_entries": len(self.pending),
            "pending_bytes": sum(e.size for e in self.pending.values()),
            "recent_errors": list(self.recent_errors),
        }


async def _compare_and_put(
    client: Any,
    key: bytes,
    value: bytes,
    expected: int | None,
    also: Sequence[tuple[bytes, bytes]] = (),
) -> bool:
    """Put if the key is still at revision `expected` (None: still absent), with the `also`
    puts in the same transaction."""
    ops = client.transactions
    compare = ops.create(key) == 0 if expected is None else ops.mod(key) == expected
    puts = [ops.put(key, value)] + [ops.put(k, v) for k, v in also]
    succeeded, _ = await client.transaction(compare=[compare], success=puts, failure=[])
    return bool(succeeded)


async def _restore(client: Any, key: bytes, entry: Entry, previous: Entry | None) -> None:
    """Put back `previous` if `entry` is what the key holds (compare-and-swap on revision)."""
    current = await client.get(key)
    if current is None or json.loads(current.value) != asdict(entry):
        return
    ops = client.transactions
    restore = (
        ops.put(key, json.dumps(asdict(previous)).encode())
        if previous is not None
        else ops.delete(key)
    )
    await client.transaction(
        compare=[ops.mod(key) == current.mod_revision], success=[restore], failure=[]
    )
    log.warning("undid %s: refused while quorum was lost, committed when it returned", entry.path)


def _stopping() -> bool:
    """True if the current task itself is being cancelled (the node is stopping)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
