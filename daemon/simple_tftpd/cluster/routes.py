"""Cluster endpoints of the management API: files, blobs, status, logs, join.

Who may call what is decided by `access.enforce` for every route: writes (PUT, DELETE, POST)
need the admin role, blob transfer the admin role or a peer site's sync token, and the rest
a read role unless reads are anonymous (see access.py).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from simple_tftpd import access
from simple_tftpd.cluster.blobs import CHUNK, DIGEST_RE, DigestMismatch
from simple_tftpd.cluster.etcd import ClusterUnavailable
from simple_tftpd.cluster.node import ClusterNode
from simple_tftpd.content.resolve import ResolveError

NODE_KEY: web.AppKey[ClusterNode] = web.AppKey("cluster_node")
NO_QUORUM = "the cluster has no etcd quorum; the change was refused and nothing was changed"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def bearer_matches(request: web.Request, *tokens: str | None) -> bool:
    """Whether the request carries one of `tokens`; routes that need an identity with a role
    leave that to `access.enforce` instead."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return any(t and hmac.compare_digest(given.encode(), t.encode()) for t in tokens)


def _rel(node: ClusterNode, raw: str) -> str:
    return node.resolver.rel_name(raw)


async def put_file(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    try:
        path = _rel(node, request.match_info["path"])
    except ResolveError:
        return _error(400, "invalid path: no '..', NUL, or empty names")
    expected = request.headers.get("X-Content-SHA256")
    if expected is not None and not DIGEST_RE.match(expected):
        return _error(400, "X-Content-SHA256 must be a lowercase sha256 hex digest")
    writer = node.blobs.writer()
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            writer.write(chunk)
        digest = writer.finish(expected)
    except DigestMismatch as exc:
        return _error(400, f"digest mismatch: {exc}; nothing was stored")
    except BaseException:
        writer.abort()
        raise
    mode = int(request.headers.get("X-File-Mode", "644"), 8) & 0o777
    entry = node.local_entry(path, digest, writer.size, mode, deleted=False)
    try:
        revision = await node.commit(entry)
    except ClusterUnavailable:
        return _error(503, NO_QUORUM)
    return web.json_response(
        {"path": path, "digest": digest, "size": writer.size, "version": revision}, status=201
    )


async def delete_file(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    try:
        path = _rel(node, request.match_info["path"])
    except ResolveError:
        return _error(400, "invalid path")
    current = node.manifest.get(path)
    if current is None or current.deleted:
        return _error(404, f"{path} is not in the manifest")
    tombstone = node.local_entry(path, current.digest, 0, current.mode, deleted=True)
    try:
        revision = await node.commit(tombstone)
    except ClusterUnavailable:
        return _error(503, NO_QUORUM)
    return web.json_response({"path": path, "deleted": True, "version": revision})


async def list_files(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    entries = sorted((e for e in node.manifest.values() if not e.deleted), key=lambda e: e.path)
    return web.json_response(
        {
            "files": [
                {
                    "path": e.path,
                    "digest": e.digest,
                    "size": e.size,
                    "mode": oct(e.mode),
                    "updated": e.updated,
                    "origin": e.origin,
                    "served": node.applied.get(e.path) == e.digest,
                }
                for e in entries
            ]
        }
    )


@access.requires(access.Permission.BLOBS)
async def get_blob(request: web.Request) -> web.StreamResponse:
    # Nodes of this site pull with the admin token; peer sites with the site-sync token.
    node = request.app[NODE_KEY]
    digest = request.match_info["digest"]
    if not DIGEST_RE.match(digest) or not node.blobs.has(digest):
        return _error(404, "no such blob")
    return web.FileResponse(node.blobs.path(digest))


async def cluster_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE_KEY].status())


async def cluster_logs(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    limit = min(int(request.query.get("limit", "100")), 1000)
    try:
        return web.json_response({"events": await node.events(limit)})
    except ClusterUnavailable:
        return _error(503, "etcd unavailable: cluster events cannot be read")


async def join(request: web.Request) -> web.Response:
    """A new node asks to join: checked against this cluster, optionally made an etcd member."""
    node = request.app[NODE_KEY]
    try:
        body: dict[str, Any] = await request.json()
    except json.JSONDecodeError:
        return _error(400, "expected a JSON body")
    cluster_id, new_node = body.get("cluster_id"), body.get("node_id")
    if cluster_id != node.config.node.cluster_id:
        return _error(409, f"this is cluster {node.config.node.cluster_id!r}, not {cluster_id!r}")
    if not isinstance(new_node, str) or not new_node:
        return _error(400, "node_id is required")
    if new_node in node.members:
        return _error(409, f"node {new_node} is already a member")
    answer: dict[str, Any] = {"cluster_id": cluster_id, "leader": node.leader}
    try:
        peer_url = body.get("etcd_peer_url")
        if peer_url:
            added = await node.etcd.call(lambda c: c.add_member([peer_url]))
            answer["etcd_member_id"] = added.id
            members = [m async for m in _members(node)]
            answer["etcd_initial_cluster"] = ",".join(
                f"{m.name or new_node}={m.peer_urls[0]}" for m in members if m.peer_urls
            )
        answer["etcd_endpoints"] = node.config.clustering.etcd_endpoints
        await node.event("join_requested", f"{new_node} via {node.node_id}")
    except ClusterUnavailable:
        return _error(503, NO_QUORUM)
    return web.json_response(answer)


async def _members(node: ClusterNode) -> Any:
    client = await node.etcd._connect()
    async for member in client.members():
        yield member


def add_routes(app: web.Application, node: ClusterNode) -> None:
    app[NODE_KEY] = node
    app.router.add_put("/api/v1/files/{path:.+}", put_file)
    app.router.add_delete("/api/v1/files/{path:.+}", delete_file)
    app.router.add_get("/api/v1/files", list_files)
    app.router.add_get("/api/v1/blobs/{digest}", get_blob)
    app.router.add_get("/api/v1/cluster/status", cluster_status)
    app.router.add_get("/api/v1/cluster/logs", cluster_logs)
    app.router.add_post("/api/v1/cluster/join", join)
