"""Backup endpoints of the management API.

Status reads like the other status endpoints. Everything else needs the admin role (an admin
client certificate or token, decided by `access.enforce` like every other admin route): listings
and operation results name every file. Operations (backup now, verify, restore) run on the site
leader as background tasks, since they can outlast any HTTP timeout: the POST answers 202 with
an operation id to poll; a node that is not the leader answers 409 naming the leader's API.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from simple_tftpd import access
from simple_tftpd.backup.crypto import BackupError
from simple_tftpd.backup.job import BackupJob
from simple_tftpd.backup.recovery import describe, parse_time
from simple_tftpd.backup.repository import Repository

JOB_KEY: web.AppKey[BackupJob] = web.AppKey("backup_job")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _not_leader(job: BackupJob) -> web.Response | None:
    if job.is_leader:
        return None
    status = job.status()
    return _error(
        409,
        f"this node is not the site leader; ask {status['leader']}",
        leader=status["leader"],
        leader_api=status["leader_api"],
    )


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "expected a JSON body"}), content_type="application/json"
        ) from None
    return body if isinstance(body, dict) else {}


async def backup_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[JOB_KEY].status())


@access.requires(access.Permission.ADMIN)
async def backup_now(request: web.Request) -> web.Response:
    job = request.app[JOB_KEY]
    refusal = _not_leader(job)
    if refusal is not None:
        return refusal
    operation = job.start_operation("backup", job.backup_now())
    return web.json_response({"operation": operation.public()}, status=202)


@access.requires(access.Permission.ADMIN)
async def backup_verify(request: web.Request) -> web.Response:
    job = request.app[JOB_KEY]
    refusal = _not_leader(job)
    if refusal is not None:
        return refusal
    body = await _body(request)
    location = body.get("location")
    try:
        job.location(location)
    except BackupError as exc:
        return _error(404, str(exc))
    work = job.verify(location, full=not body.get("quick", False))
    return web.json_response(
        {"operation": job.start_operation("verify", work).public()}, status=202
    )


@access.requires(access.Permission.ADMIN)
async def backup_restore(request: web.Request) -> web.Response:
    job = request.app[JOB_KEY]
    refusal = _not_leader(job)
    if refusal is not None:
        return refusal
    body = await _body(request)
    location = body.get("location")
    try:
        at = parse_time(str(body.get("at", "")))
        job.location(location)
    except BackupError as exc:
        return _error(400, str(exc))
    work = job.restore_into_cluster(at, location)
    return web.json_response(
        {"operation": job.start_operation("restore", work).public()}, status=202
    )


@access.requires(access.Permission.ADMIN)
async def backup_list(request: web.Request) -> web.Response:
    """The catalog of every location (or of ?location=URL), read from the locations."""
    job = request.app[JOB_KEY]
    wanted = request.query.get("location")
    try:
        urls = [job.location(wanted).url] if wanted else list(job.locations)
    except BackupError as exc:
        return _error(404, str(exc))
    if job.key_error is not None:
        return _error(503, job.key_error)
    listings = []
    for url in urls:
        try:
            repo = await Repository.open(url, job.key, cluster_id=job.node.config.node.cluster_id)
            listings.append(await describe(repo))
        except BackupError as exc:
            listings.append({"location": url, "error": str(exc)})
    return web.json_response({"locations": listings})


@access.requires(access.Permission.ADMIN)
async def backup_operation(request: web.Request) -> web.Response:
    job = request.app[JOB_KEY]
    operation = job.operations.get(request.match_info["id"])
    if operation is None:
        return _error(404, "no such operation on this node (operations are kept in memory)")
    return web.json_response({"operation": operation.public()})


def add_routes(app: web.Application, job: BackupJob) -> None:
    app[JOB_KEY] = job
    app.router.add_get("/api/v1/backup/status", backup_status)
    app.router.add_post("/api/v1/backup/now", backup_now)
    app.router.add_get("/api/v1/backup/list", backup_list)
    app.router.add_post("/api/v1/backup/verify", backup_verify)
    app.router.add_post("/api/v1/backup/restore", backup_restore)
    app.router.add_get("/api/v1/backup/operations/{id}", backup_operation)
