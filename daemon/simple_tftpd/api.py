"""The management HTTP API (aiohttp): health, readiness, status and Prometheus metrics.

Every route under /api/ goes through `access.enforce` (identities and roles). The optional
metrics listener (`api.metrics_port`) is a separate app with health, readiness and metrics
only, in plain HTTP and without identities, for load balancers and Prometheus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from simple_tftpd import access, http_boot

if TYPE_CHECKING:
    from simple_tftpd.daemon import ApiHost

HOST_KEY: web.AppKey[ApiHost] = web.AppKey("host")


@access.public
async def health(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer."""
    return web.json_response({"status": "ok"})


@access.public
async def ready(request: web.Request) -> web.Response:
    """Readiness: the TFTP socket is open, the content root readable, not draining."""
    problems = request.app[HOST_KEY].readiness_problems()
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[HOST_KEY].status())


async def metrics(request: web.Request) -> web.Response:
    body = request.app[HOST_KEY].render_metrics()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(host: ApiHost) -> web.Application:
    app = web.Application(middlewares=[access.enforce])
    app[HOST_KEY] = host
    app[access.POLICY_KEY] = lambda: host.access
    app[access.REFUSED_KEY] = host.metrics.api_refused
    add_monitoring_routes(app)
    app.router.add_get("/api/v1/status", status)
    http_boot.add_routes(app, host)
    return app


def add_monitoring_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/ready", ready)
    app.router.add_get("/api/v1/metrics/prometheus", metrics)


def build_monitoring_app(host: ApiHost) -> web.Application:
    """The plain listener of `api.metrics_port`: nothing here reveals or changes content."""
    app = web.Application()
    app[HOST_KEY] = host
    add_monitoring_routes(app)
    return app
