"""One running daemon: the TFTP server and the management API on one event loop, with
signal handling (SIGTERM drains, SIGHUP reloads)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from aiohttp import web

from simple_tftpd.api import build_app
from simple_tftpd.config import Config, ConfigError, apply_overrides, load_config
from simple_tftpd.metrics import Metrics
from simple_tftpd.server import TftpServer

log = logging.getLogger("simple_tftpd")


class Daemon:
    def __init__(
        self, config: Config, config_path: Path | None, overrides: dict[str, object]
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.metrics = Metrics()
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def readiness_problems(self) -> list[str]:
        problems = []
        if self.server.draining:
            problems.append("draining")
        if not os.access(self.config.tftp.root, os.R_OK | os.X_OK):
            problems.append("content root not readable")
        return problems

    async def start(self) -> None:
        self.server = TftpServer(self.config, self.metrics)
        self.server.start()
        api = self.config.api
        if api.enabled:
            self._runner = web.AppRunner(build_app(self), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, api.bind, api.port, reuse_address=True)
            await site.start()
            log.info("management API on %s port %d", api.bind, api.port)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """Re-read the config file; policy, limits and cache change, sockets do not."""
        if self.config_path is None:
            log.info("SIGHUP: no config file, nothing to reload")
            return
        try:
            new = apply_overrides(load_config(self.config_path), **self.overrides)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded, keeping the running one:\n%s", exc)
            return
        for section in ("bind", "port", "single_port", "root"):
            if getattr(new.tftp, section) != getattr(self.config.tftp, section):
                log.warning("SIGHUP: tftp.%s changed; it takes effect on restart", section)
        kept = new.tftp.model_copy(
            update={
                "bind": self.config.tftp.bind,
                "port": self.config.tftp.port,
                "single_port": self.config.tftp.single_port,
                "root": self.config.tftp.root,
            }
        )
        self.config = new.model_copy(update={"tftp": kept, "api": self.config.api})
        self.server.apply(self.config)
        log.info("SIGHUP: configuration reloaded")

    async def run_until_stopped(self) -> None:
        await self._stop.wait()
        log.info("shutdown requested")
        await self.server.drain(self.config.tftp.drain_timeout)
        self.server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("stopped")


async def serve(config: Config, config_path: Path | None, overrides: dict[str, object]) -> None:
    daemon = Daemon(config, config_path, overrides)
    await daemon.start()
    await daemon.run_until_stopped()
