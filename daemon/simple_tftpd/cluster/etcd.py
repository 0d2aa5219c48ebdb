"""A thin layer over aetcd: endpoint failover, the project's key layout, JSON values.

aetcd talks to one endpoint; when that member dies or loses quorum, calls fail and we move on
to the next endpoint of the configured list. Every call is bounded by `CALL_TIMEOUT`.

`https://` endpoints are reached over mutual TLS with the node's own certificate (etcd's
--client-cert-auth): aetcd 1.0 only opens plaintext gRPC channels, so `_TlsClient` opens a
secure one and sets up the same stubs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
import aetcd.rpc
import aetcd.watcher
import grpc  # type: ignore[import-untyped]

from simple_tftpd.tls import TlsMaterial

log = logging.getLogger("simple_tftpd.cluster")

CALL_TIMEOUT = 3.0
T = TypeVar("T")


class ClusterUnavailable(Exception):
    """No etcd endpoint answered with quorum: cluster writes are refused."""


def _host_port(endpoint: str) -> tuple[str, int, bool]:
    """(host, port, whether the endpoint wants TLS)."""
    scheme, sep, rest = endpoint.rpartition("://")
    host, _, port = rest.rstrip("/").rpartition(":")
    return host.strip("[]"), int(port), sep != "" and scheme == "https"


class _TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd ships no types
    """aetcd.Client on a TLS channel. Its `connect` only builds a channel and stubs (it
    touches the network first at the first call), so doing the same with a secure channel
    keeps every other method of the client as it is."""

    def __init__(self, host: str, port: int, timeout: int, material: TlsMaterial) -> None:
        super().__init__(host=host, port=port, timeout=timeout)
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=material.ca,
            private_key=material.key,
            certificate_chain=material.cert,
        )

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        rpc = aetcd.rpc
        self.channel = rpc.secure_channel(
            f"{self._host}:{self._port}", self._credentials, options=self._options.items()
        )
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


class Keys:
    """The key layout of one cluster: everything under /simple-tftpd/<cluster_id>/."""

    def __init__(self, cluster_id: str) -> None:
        self.prefix = f"/simple-tftpd/{cluster_id}/"
        self.cluster = self._key("cluster")
        self.leader = self._key("leader")
        self.members = self._key("members/")
        self.manifest = self._key("manifest/")
        self.events = self._key("events/")

    def _key(self, suffix: str) -> bytes:
        return (self.prefix + suffix).encode()

    def member(self, node_id: str) -> bytes:
        return self.members + node_id.encode()

    def entry(self, path: str) -> bytes:
        return self.manifest + path.encode("utf-8", "surrogateescape")


class Etcd:
    def __init__(
        self, endpoints: Sequence[str], tls: Callable[[], TlsMaterial] | None = None
    ) -> None:
        self.endpoints = [_host_port(e) for e in endpoints]
        self._tls = tls
        self._index = 0
        self._client: aetcd.Client | None = None
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        host, port, secure = self.endpoints[self._index]
        return f"{'https://' if secure else ''}{host}:{port}"

    async def _connect(self) -> aetcd.Client:
        if self._client is None:
            host, port, secure = self.endpoints[self._index]
            if secure:
                if self._tls is None:
                    raise ClusterUnavailable(f"{self.endpoint} needs TLS; set security.tls")
                # Read at each (re)connect, so a renewed certificate is used from then on.
                client = _TlsClient(host, port, int(CALL_TIMEOUT), self._tls())
            else:
                client = aetcd.Client(host=host, port=port, timeout=int(CALL_TIMEOUT))
            await client.connect()
            self._client = client
        return self._client

    def _drop(self) -> None:
        """Forget the current client and move to the next endpoint."""
        client, self._client = self._client, None
        self._index = (self._index + 1) % len(self.endpoints)
        if client is not None:
            _close_later(client)

    async def call(self, operation: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run one operation, trying each endpoint once; ClusterUnavailable if none works."""
        last: Exception | None = None
        for _ in range(len(self.endpoints)):
            try:
                client = await bounded(self._connect(), CALL_TIMEOUT)
                return await bounded(operation(client), CALL_TIMEOUT)
            except (aetcd.exceptions.ClientError, TimeoutError, OSError) as exc:
                last = exc
                log.debug("etcd %s failed: %s", self.endpoint, exc)
                self._drop()
        raise ClusterUnavailable(f"no etcd endpoint answered: {last}")

    async def get_json(self, key: bytes) -> Any:
        result = await self.call(lambda c: c.get(key))
        return None if result is None else json.loads(result.value)

    async def put_json(self, key: bytes, value: Any, lease: Any = None) -> int:
        """Put and return the store revision of the write."""
        data = json.dumps(value).encode()
        response = await self.call(lambda c: c.put(key, data, lease=lease))
        return int(response.header.revision)

    async def get_prefix_json(self, prefix: bytes) -> tuple[int, list[tuple[bytes, Any]]]:
        """All values under a prefix and the store revision they were read at."""

        async def read(client: aetcd.Client) -> tuple[int, list[tuple[bytes, Any]]]:
            result = await client.get_prefix(prefix)
            items = [(kv.key, json.loads(kv.value)) for kv in result]
            revision = int(result.header.revision) if result.header is not None else 0
            return revision, items

        return await self.call(read)

    async def get_prefix_changes(self, prefix: bytes) -> tuple[int, list[tuple[int, Any]]]:
        """(store revision, [(mod_revision, value)]) for every key under a prefix."""

        async def read(client: aetcd.Client) -> tuple[int, list[tuple[int, Any]]]:
            result = await client.get_prefix(prefix)
            items = [(int(kv.mod_revision), json.loads(kv.value)) for kv in result]
            revision = int(result.header.revision) if result.header is not None else 0
            return revision, items

        return await self.call(read)

    async def delete(self, key: bytes) -> None:
        await self.call(lambda c: c.delete(key))

    async def grant_lease(self, ttl: int) -> int:
        lease = await self.call(lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh_lease(self, lease_id: int) -> bool:
        """False if etcd no longer knows the lease (it expired)."""
        response = await self.call(lambda c: c.refresh_lease(lease_id))
        return int(getattr(response, "TTL", 0)) > 0

    async def revoke_lease(self, lease_id: int) -> None:
        await self.call(lambda c: c.revoke_lease(lease_id))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception, TimeoutError):
                await bounded(client.close(), 1.0)


_background: set[asyncio.Task[Any]] = set()


async def bounded(awaitable: Awaitable[T], timeout: float) -> T:
    """Like asyncio.wait_for, but never waits for a cancelled call to wind down: a gRPC call
    on a dead channel can take far longer to cancel than the timeout itself."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        _background.add(task)
        task.add_done_callback(_forget)
        raise TimeoutError
    if task.cancelled():
        # aetcd cancels pending calls when a stream breaks; for us that is a failed call,
        # not a request to stop (which would escape every `except Exception`).
        raise TimeoutError("etcd call cancelled")
    return task.result()


def _forget(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _close_later(client: aetcd.Client) -> None:
    task = asyncio.ensure_future(client.close())
    _background.add(task)
    task.add_done_callback(_forget)
