"""The management HTTP API (aiohttp): health, readiness, status and Prometheus metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from simple_tftpd import __version__

if TYPE_CHECKING:
    from simple_tftpd.daemon import Daemon

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")


async def health(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: the TFTP socket is open, the content root readable, not draining."""
    daemon = request.app[DAEMON_KEY]
    problems = daemon.readiness_problems()
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


async def status(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    server = daemon.server
    return web.json_response(
        {
            "version": __version__,
            "node_id": daemon.config.node.node_id,
            "uptime_seconds": round(time.monotonic() - daemon.started, 3),
            "draining": server.draining,
            "active_sessions": len(server.sessions),
            "tftp_port": server.port,
            "cache": {"entries": server.cache.entries, "bytes": server.cache.current_bytes},
            "config": daemon.config.summary(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    daemon.metrics.cache_bytes.set(daemon.server.cache.current_bytes)
    return web.Response(body=daemon.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(daemon: Daemon) -> web.Application:
    app = web.Application()
    app[DAEMON_KEY] = daemon
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/ready", ready)
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/api/v1/metrics/prometheus", metrics)
    return app
