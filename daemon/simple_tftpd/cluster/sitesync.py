"""Asynchronous replication between site clusters.

Each site's leader follows every peer site's manifest from the last position it applied
(the peer's etcd revision, stored in this site's etcd, so a new leader resumes where the old
one stopped). A change is applied only if it wins under the conflict rule of `Entry.wins_over`
(hybrid logical clock, then site id), and entries keep their origin site and clock when they
are copied: a change comes back to its own site as "not newer" and is dropped there, which
is what stops loops and echoes, while sites connected only through another still get it.
Blobs are pulled from the peer and verified before the entry is committed locally.

With `security.tls`, peers are reached over mutual TLS: the peer's certificate must come from
a CA of `security.tls.ca_file` (which holds the peer sites' CAs when they have their own) and
name the endpoint we dial; the peer sees this node's certificate and our site-sync token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any

import aiohttp
from aiohttp import web

from simple_tftpd import access
from simple_tftpd.cluster.blobs import CHUNK, DigestMismatch
from simple_tftpd.cluster.etcd import ClusterUnavailable
from simple_tftpd.cluster.node import ClusterNode, Entry
from simple_tftpd.cluster.routes import NODE_KEY
from simple_tftpd.config import PeerSite

log = logging.getLogger("simple_tftpd.sitesync")

PAGE = 200
PEER_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=3, sock_read=30)


class SyncRefused(Exception):
    """A peer's answer that must not be applied (bad token, bad digest, bad data)."""


@dataclass
class PeerState:
    site_id: str
    endpoint: str
    reachable: bool | None = None
    position: int = 0
    last_applied_at: float | None = None
    last_success_at: float | None = None
    lag_entries: int | None = None
    lag_bytes: int | None = None
    applied: int = 0
    skipped: int = 0
    last_error: str | None = None
    errors: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def public(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "wake"}


class SiteSync:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        config = node.config.multi_site
        self.site_id = config.site_id
        self.token = config.sync.token or ""
        self.interval = config.sync.interval_seconds
        self.peers: dict[str, PeerState] = {
            p.site_id: PeerState(p.site_id, p.endpoint) for p in config.sync.peer_sites
        }
        self._peers_key = node.keys.prefix.encode() + b"sitesync/peers"
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._scheme = "https" if node.tls is not None else "http"
        node.blob_fallback = self.fetch_blob_from_peer_sites

    def _position_key(self, site_id: str) -> bytes:
        return self.node.keys.prefix.encode() + b"sitesync/positions/" + site_id.encode()

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=PEER_TIMEOUT)
        self._task = asyncio.create_task(self._run(), name="site-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._http is not None:
            await self._http.close()

    # -- the leader's loop ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._load_recorded_peers()
                if self.node.leader == self.node.node_id:
                    for peer in list(self.peers.values()):
                        await self.sync_peer(peer)
                else:
                    self._forget_metrics()
            except ClusterUnavailable as exc:
                log.debug("site sync paused: %s", exc)
            except Exception:  # one bad round must not stop replication for good
                log.exception("site sync round failed")
            await self._sleep()

    async def _sleep(self) -> None:
        waits = [asyncio.ensure_future(p.wake.wait()) for p in self.peers.values()]
        try:
            await asyncio.wait(waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _load_recorded_peers(self) -> None:
        """Peers = the config's plus those recorded by site-sync-init (which replaces its own
        earlier list); a peer's state survives as long as its endpoint stays the same."""
        recorded = await self.node.etcd.get_json(self._peers_key) or []
        wanted = {p.site_id: p.endpoint for p in self.node.config.multi_site.sync.peer_sites}
        for item in recorded:
            peer = PeerSite.model_validate(item)
            if peer.site_id != self.site_id:
                wanted[peer.site_id] = peer.endpoint
        for site_id in list(self.peers):
            if wanted.get(site_id) != self.peers[site_id].endpoint:
                del self.peers[site_id]
        for site_id, endpoint in wanted.items():
            if site_id not in self.peers:
                self.peers[site_id] = PeerState(site_id, endpoint)

    async def record_peers(self, peers: list[PeerSite]) -> None:
        """site-sync-init: remember peers in this site's cluster (every future leader)."""
        await self.node.etcd.put_json(self._peers_key, [p.model_dump() for p in peers])
        await self._load_recorded_peers()
        await self.node.event("sitesync_peers", ", ".join(p.site_id for p in peers))

    async def sync_peer(self, peer: PeerState) -> None:
        peer.wake.clear()
        stored = await self.node.etcd.get_json(self._position_key(peer.site_id))
        peer.position = int(stored["position"]) if stored else 0
        try:
            while True:
                page = await self._changes(peer, peer.position)
                if page["revision"] < peer.position:
                    # The peer's store was rebuilt (restore): start over; the rule makes
                    # re-applying harmless.
                    await self.node.event("sitesync_reset", f"{peer.site_id} revision went back")
                    peer.position = 0
                    continue
                for change in page["changes"]:
                    try:
                        entry, revision = Entry.from_json(change["entry"]), int(change["revision"])
                    except (KeyError, TypeError, ValueError) as exc:
                        raise SyncRefused(f"{peer.site_id} sent a malformed change") from exc
                    await self._apply(peer, entry)
                    peer.position = revision
                    await self.node.etcd.put_json(
                        self._position_key(peer.site_id),
                        {"position": peer.position, "at": time.time()},
                    )
                peer.lag_entries = int(page["remaining"])
                peer.lag_bytes = int(page["remaining_bytes"])
                if not page["remaining"]:
                    break
            peer.reachable = True
            peer.last_success_at = time.time()
            peer.last_error = None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._failed(peer, f"unreachable: {exc}", reachable=False)
        except SyncRefused as exc:
            self._failed(peer, str(exc), reachable=True)
            await self.node.event("sitesync_refused", f"{peer.site_id}: {exc}")
        self._export(peer)

    def _failed(self, peer: PeerState, message: str, reachable: bool) -> None:
        peer.reachable = reachable
        peer.last_error = message
        peer.errors += 1
        self.node.metrics.sitesync_errors.labels(peer.site_id).inc()
        log.warning("site sync from %s: %s", peer.site_id, message)

    def _export(self, peer: PeerState) -> None:
        metrics = self.node.metrics
        metrics.sitesync_lag_entries.labels(peer.site_id).set(peer.lag_entries or 0)
        metrics.sitesync_lag_bytes.labels(peer.site_id).set(peer.lag_bytes or 0)
        if peer.last_success_at:
            metrics.sitesync_last_success.labels(peer.site_id).set(peer.last_success_at)

    def _forget_metrics(self) -> None:
        """Only the leader syncs: a former leader's last figures would otherwise stay frozen
        in its metrics and read as lag that never ends."""
        metrics = self.node.metrics
        for gauge in (
            metrics.sitesync_lag_entries,
            metrics.sitesync_lag_bytes,
            metrics.sitesync_last_success,
        ):
            gauge.clear()

    async def _changes(self, peer: PeerState, since: int) -> dict[str, Any]:
        assert self._http is not None
        url = f"{self._scheme}://{peer.endpoint}/api/v1/sync/changes?since={since}&limit={PAGE}"
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self._http.get(url, headers=headers, ssl=self.node.client_ssl()) as response:
            if response.status == 401:
                raise SyncRefused(f"{peer.site_id} refused our site-sync token")
            if response.status != 200:
                raise SyncRefused(f"{peer.site_id} answered HTTP {response.status}")
            try:
                page: dict[str, Any] = await response.json(content_type=None)
            except ValueError:
                raise SyncRefused(f"{peer.site_id} sent a change page that is not JSON") from None
        if (
            not isinstance(page, dict)
            or not isinstance(page.get("changes"), list)
            or not isinstance(page.get("revision"), int)
        ):
            raise SyncRefused(f"{peer.site_id} sent a malformed change page")
        return page

    async def _apply(self, peer: PeerState, entry: Entry) -> None:
        node = self.node
        try:
            node.resolver.rel_name(entry.path)
        except Exception as exc:  # a hostile or broken peer: refuse the page
            raise SyncRefused(f"{peer.site_id} sent an invalid path {entry.path!r}") from exc
        if not entry.wins_over(node.manifest.get(entry.path)):
            peer.skipped += 1
            return
        if not entry.deleted and not node.blobs.has(entry.digest):
            await self._fetch_blob(peer, entry.digest)
        kind = "sitesync_deleted" if entry.deleted else "sitesync_stored"
        event = (kind, f"{entry.path} from {peer.site_id} (origin {entry.site})")
        if await node.commit_if_newer(entry, event):
            peer.applied += 1
            peer.last_applied_at = time.time()
        else:
            peer.skipped += 1

    async def _fetch_blob(self, peer: PeerState, digest: str) -> None:
        assert self._http is not None
        url = f"{self._scheme}://{peer.endpoint}/api/v1/blobs/{digest}"
        writer = self.node.blobs.writer()
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            async with self._http.get(url, headers=headers, ssl=self.node.client_ssl()) as response:
                if response.status != 200:
                    raise SyncRefused(
                        f"{peer.site_id} has no blob {digest[:12]} ({response.status})"
                    )
                async for chunk in response.content.iter_chunked(CHUNK):
                    writer.write(chunk)
            writer.finish(expected=digest)
        except DigestMismatch as exc:
            raise SyncRefused(f"{peer.site_id} sent a corrupt blob: {exc}") from None
        finally:
            writer.abort()  # no-op once finished

    async def fetch_blob_from_peer_sites(self, digest: str) -> None:
        """For any member: a blob that no member of this site serves, from the first peer
        site that has it (verified like every pulled blob); LookupError if none does."""
        if self._http is None or not self.peers:
            raise LookupError("no peer site to fetch from")
        problems = []
        for peer in list(self.peers.values()):
            try:
                await self._fetch_blob(peer, digest)
            except (SyncRefused, aiohttp.ClientError, TimeoutError, OSError) as exc:
                problems.append(f"{peer.site_id}: {exc}")
                continue
            log.info("blob %s from peer site %s: no member had it", digest[:12], peer.site_id)
            return
        raise LookupError("no peer site served it: " + "; ".join(problems))

    def status(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "leader": self.node.leader,
            "is_leader": self.node.leader == self.node.node_id,
            "peers": [p.public() for p in sorted(self.peers.values(), key=lambda p: p.site_id)],
        }


# -- API ------------------------------------------------------------------------------------

SYNC_KEY: web.AppKey[SiteSync] = web.AppKey("site_sync")


@access.requires(access.Permission.CHANGES)
async def changes(request: web.Request) -> web.Response:
    """The manifest changes after `since` (this site's etcd revision), oldest first."""
    node = request.app[NODE_KEY]
    try:
        since = int(request.query.get("since", "0"))
        limit = max(1, min(int(request.query.get("limit", str(PAGE))), 1000))
    except ValueError:
        return web.json_response({"error": "since and limit are integers"}, status=400)
    try:
        revision, items = await node.etcd.get_prefix_changes(node.keys.manifest)
    except ClusterUnavailable:
        return web.json_response({"error": "etcd unavailable"}, status=503)
    newer = sorted((r, v) for r, v in items if r > since)
    page, rest = newer[:limit], newer[limit:]
    return web.json_response(
        {
            "site_id": node.site_id,
            "revision": revision,
            "changes": [{"revision": r, "entry": v} for r, v in page],
            "remaining": len(rest),
            "remaining_bytes": sum(int(v.get("size", 0)) for _, v in rest),
        }
    )


async def sync_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SYNC_KEY].status())


async def sync_now(request: web.Request) -> web.Response:
    sync = request.app[SYNC_KEY]
    site = request.query.get("site")
    targets = [sync.peers[site]] if site in sync.peers else []
    if site is not None and not targets:
        return web.json_response({"error": f"unknown peer site {site!r}"}, status=404)
    if sync.node.leader != sync.node.node_id:
        return web.json_response(
            {"error": f"this node is not the site leader; ask {sync.node.leader}"}, status=409
        )
    for peer in targets or list(sync.peers.values()):
        await sync.sync_peer(peer)
    return web.json_response(sync.status())


async def sync_logs(request: web.Request) -> web.Response:
    sync = request.app[SYNC_KEY]
    limit = min(int(request.query.get("limit", "100")), 1000)
    try:
        events = await sync.node.events(1000)
    except ClusterUnavailable:
        return web.json_response({"error": "etcd unavailable"}, status=503)
    wanted = [e for e in events if str(e.get("kind", "")).startswith("sitesync")]
    return web.json_response({"events": wanted[-limit:]})


async def sync_peers(request: web.Request) -> web.Response:
    sync = request.app[SYNC_KEY]
    body = await request.json()
    if body.get("site_id") != sync.site_id:
        return web.json_response(
            {"error": f"this is site {sync.site_id!r}, not {body.get('site_id')!r}"}, status=409
        )
    try:
        peers = [PeerSite.model_validate(p) for p in body.get("peer_sites", [])]
    except ValueError as exc:
        return web.json_response({"error": f"invalid peer_sites: {exc}"}, status=400)
    if any(p.site_id == sync.site_id for p in peers):
        return web.json_response({"error": "a site cannot peer itself"}, status=400)
    try:
        await sync.record_peers(peers)
    except ClusterUnavailable:
        return web.json_response({"error": "etcd unavailable; nothing recorded"}, status=503)
    return web.json_response(sync.status())


def add_routes(app: web.Application, sync: SiteSync) -> None:
    app[SYNC_KEY] = sync
    app.router.add_get("/api/v1/sync/changes", changes)
    app.router.add_get("/api/v1/sync/status", sync_status)
    app.router.add_post("/api/v1/sync/now", sync_now)
    app.router.add_get("/api/v1/sync/logs", sync_logs)
    app.router.add_post("/api/v1/sync/peers", sync_peers)
