"""Cluster and file commands of the CLI. They talk to a node's management API (or, for
cluster-init, to etcd), so they work from any host that reaches the node.

With TLS, a command verifies the node against a CA bundle and may authenticate with a client
certificate: `--cacert/--cert/--cert-key` (or $SIMPLE_TFTPD_CACERT/_CERT/_CERT_KEY), else
the files of `security.tls` in `--config`. A CA bundle makes "host:port" mean https.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from simple_tftpd.cluster.etcd import ClusterUnavailable, Etcd, Keys
from simple_tftpd.config import Config, ConfigError, TlsConfig, load_config
from simple_tftpd.tls import MIN_VERSION, TlsError, TlsMaterial, read_material

HTTP_TIMEOUT = 30
_TLS_META = "simple_tftpd.client_tls"


@dataclass(frozen=True)
class ClientTls:
    """How a command verifies a node (CA bundle) and proves who it is (certificate, key)."""

    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def resolve(cls, config: Config | None) -> ClientTls:
        """Options and environment first, then `security.tls` of the config."""
        context = click.get_current_context(silent=True)
        given: dict[str, Path | None] = dict(context.meta.get(_TLS_META, {})) if context else {}
        tls = config.security.tls if config is not None else None
        if tls is not None and tls.enabled:
            given.setdefault("cacert", tls.ca_file)
            given.setdefault("cert", tls.cert_file)
            given.setdefault("key", tls.key_file)
        return cls(**{k: v for k, v in given.items() if v is not None})

    @property
    def enabled(self) -> bool:
        return self.cacert is not None or self.cert is not None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cacert) if self.cacert else None)
        context.minimum_version = MIN_VERSION
        try:
            if self.cert is not None:
                context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        except (OSError, ssl.SSLError) as exc:
            raise click.ClickException(f"cannot load the client certificate: {exc}") from None
        return context

    def material(self) -> TlsMaterial:
        """The same files for etcd (cluster-init against https:// endpoints)."""
        if self.cacert is None or self.cert is None or self.key is None:
            raise click.UsageError("https etcd endpoints need --cacert, --cert and --cert-key")
        files = TlsConfig(enabled=True, ca_file=self.cacert, cert_file=self.cert, key_file=self.key)
        try:
            return read_material(files)
        except TlsError as exc:
            raise click.ClickException(str(exc)) from None


def _load(config_path: Path | None) -> Config | None:
    if config_path is None:
        return None
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from None


class ApiTarget:
    """Where a command sends its requests, from --api/--token or from a config file."""

    def __init__(
        self,
        api: str | None,
        token: str | None,
        config_path: Path | None,
        tls: ClientTls | None = None,
    ) -> None:
        config = _load(config_path)
        self.tls = tls or ClientTls.resolve(config)
        scheme = "https" if self.tls.enabled else "http"
        if api is None:
            if config is not None:
                api = (
                    config.clustering.advertise or f"{_loopback(config.api.bind)}:{config.api.port}"
                )
            else:
                api = "127.0.0.1:8080"
        self.base = api if "://" in api else f"{scheme}://{api}"
        self.token = (
            token
            or os.environ.get("SIMPLE_TFTPD_TOKEN")
            or (config.api.token if config is not None else None)
        )
        self._context = self.tls.context() if self.base.startswith("https://") else None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        all_headers = dict(headers or {})
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, body, all_headers, method=method)
        try:
            with urllib.request.urlopen(
                request, timeout=HTTP_TIMEOUT, context=self._context
            ) as response:
                return int(response.status), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                return int(exc.code), json.loads(payload)
            except ValueError:
                return int(exc.code), {"error": payload.decode(errors="replace")}
        except (urllib.error.URLError, OSError) as exc:
            raise click.ClickException(f"cannot reach {self.base}: {exc}") from None


def _loopback(bind: str) -> str:
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind == "::":
        return "[::1]"
    return f"[{bind}]" if ":" in bind else bind


def _emit(status: int, payload: Any, ok: tuple[int, ...] = (200, 201)) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True))
    if status not in ok:
        sys.exit(1)


def _remember_tls(context: click.Context, param: click.Parameter, value: Path | None) -> None:
    # Kept in the context rather than passed on, so every command (and ApiTarget built
    # anywhere during it) gets them without another parameter.
    if value is not None and param.name is not None:
        context.meta.setdefault(_TLS_META, {})[param.name] = value


def _tls_option(name: str, dest: str, envvar: str, help: str) -> Any:
    return click.option(
        name,
        dest,
        type=click.Path(path_type=Path, dir_okay=False),
        envvar=envvar,
        expose_value=False,
        callback=_remember_tls,
        help=help,
    )


tls_options = [
    _tls_option(
        "--cacert",
        "cacert",
        "SIMPLE_TFTPD_CACERT",
        "CA bundle that verifies the node (https); default: security.tls.ca_file of --config.",
    ),
    _tls_option(
        "--cert",
        "cert",
        "SIMPLE_TFTPD_CERT",
        "Client certificate (PEM) to authenticate with; default: security.tls of --config.",
    ),
    # Not --key: backup commands also take --key-file, the backup key.
    _tls_option(
        "--cert-key", "key", "SIMPLE_TFTPD_CERT_KEY", "Key of --cert (if not in the same file)."
    ),
]

target_options = [
    click.option(
        "--api", help="Node API (host:port or URL); default from --config or 127.0.0.1:8080."
    ),
    click.option(
        "--token", help="Admin token (default: $SIMPLE_TFTPD_TOKEN or api.token of --config)."
    ),
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Read the API address, token and TLS files from this daemon config.",
    ),
    *tls_options,
]


def with_tls(func: Any) -> Any:
    for option in reversed(tls_options):
        func = option(func)
    return func


def with_target(func: Any) -> Any:
    for option in reversed(target_options):
        func = option(func)
    return func


def register(main: click.Group) -> None:
    @main.command("cluster-init")
    @click.option("--cluster-id", required=True)
    @click.option("--node-id", required=True, help="The node running the initialisation.")
    @click.option("--nodes", required=True, help="API addresses: a:8080,b:8080,c:8080 (3-7, odd).")
    @click.option(
        "--etcd", "etcd_endpoints", help="etcd endpoints, comma separated (default: config)."
    )
    @click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False))
    @with_tls
    def cluster_init(
        cluster_id: str,
        node_id: str,
        nodes: str,
        etcd_endpoints: str | None,
        config_path: Path | None,
    ) -> None:
        """Record a new cluster in etcd (idempotent for the same node list)."""
        node_list = [n.strip() for n in nodes.split(",") if n.strip()]
        if not 3 <= len(node_list) <= 7 or len(node_list) % 2 == 0:
            raise click.BadParameter(
                "give 3, 5 or 7 nodes (an odd number, for quorum)", param_hint="--nodes"
            )
        endpoints = _etcd_endpoints(etcd_endpoints, config_path)
        secure = any(e.startswith("https://") for e in endpoints)
        material = ClientTls.resolve(_load(config_path)).material() if secure else None
        record = {
            "cluster_id": cluster_id,
            "nodes": node_list,
            "created": time.time(),
            "by": node_id,
        }
        try:
            created, existing = asyncio.run(_init(endpoints, cluster_id, record, material))
        except ClusterUnavailable as exc:
            raise click.ClickException(f"etcd unavailable, nothing was changed: {exc}") from None
        if not created and existing.get("nodes") != node_list:
            click.echo(json.dumps(existing, indent=2), err=True)
            raise click.ClickException(f"cluster {cluster_id} already exists with other nodes")
        click.echo(
            json.dumps(
                {"created": created, "cluster": existing if not created else record}, indent=2
            )
        )

    @main.command("cluster-join")
    @click.option("--cluster-id", required=True)
    @click.option("--node-id", required=True)
    @click.option("--leader", required=True, help="API address of a member, e.g. 10.0.0.11:8080.")
    @click.option(
        "--etcd-peer-url", help="Also add this node to etcd as a member with this peer URL."
    )
    @click.option("--token", help="Admin token (default: $SIMPLE_TFTPD_TOKEN or --config).")
    @click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False))
    @with_tls
    def cluster_join(
        cluster_id: str,
        node_id: str,
        leader: str,
        etcd_peer_url: str | None,
        token: str | None,
        config_path: Path | None,
    ) -> None:
        """Ask a member to admit this node; prints the etcd settings to start with."""
        target = ApiTarget(leader, token, config_path)
        body = {"cluster_id": cluster_id, "node_id": node_id, "etcd_peer_url": etcd_peer_url}
        status, payload = target.request(
            "POST",
            "/api/v1/cluster/join",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        _emit(status, payload)

    @main.command("cluster-status")
    @with_target
    def cluster_status(api: str | None, token: str | None, config_path: Path | None) -> None:
        """Members, leader, quorum, files and replication lag as one node sees them."""
        _emit(*ApiTarget(api, token, config_path).request("GET", "/api/v1/cluster/status"))

    @main.command("node-health")
    @with_target
    def node_health(api: str | None, token: str | None, config_path: Path | None) -> None:
        """Liveness, readiness and status of one node; exit 1 unless ready."""
        target = ApiTarget(api, token, config_path)
        _, health = target.request("GET", "/api/v1/health")
        ready_status, ready = target.request("GET", "/api/v1/ready")
        _, status = target.request("GET", "/api/v1/status")
        _emit(ready_status, {"health": health, "ready": ready, "status": status}, ok=(200,))

    @main.command("cluster-logs")
    @click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
    @with_target
    def cluster_logs(
        limit: int, api: str | None, token: str | None, config_path: Path | None
    ) -> None:
        """Recent cluster events: joins, leaves, elections, stores, deletes, replication errors."""
        status, payload = ApiTarget(api, token, config_path).request(
            "GET", f"/api/v1/cluster/logs?limit={limit}"
        )
        if status != 200:
            _emit(status, payload)
        for event in payload["events"]:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event["ts"]))
            click.echo(f"{stamp} {event['node']} {event['kind']} {event['detail']}")

    @main.group("files")
    def files() -> None:
        """Replicated content: put, ls, rm (through any node's API)."""

    @files.command("put")
    @click.argument("local", type=click.Path(path_type=Path, dir_okay=False, exists=True))
    @click.argument("remote")
    @click.option("--mode", default="644", show_default=True, help="File mode (octal).")
    @with_target
    def files_put(
        local: Path,
        remote: str,
        mode: str,
        api: str | None,
        token: str | None,
        config_path: Path | None,
    ) -> None:
        """Upload LOCAL as REMOTE; every node serves it once replicated."""
        data = local.read_bytes()
        headers = {
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
            "X-File-Mode": mode,
            "Content-Type": "application/octet-stream",
        }
        path = "/api/v1/files/" + urllib.parse.quote(remote.lstrip("/"))
        _emit(*ApiTarget(api, token, config_path).request("PUT", path, data, headers))

    @files.command("ls")
    @with_target
    def files_ls(api: str | None, token: str | None, config_path: Path | None) -> None:
        """List the manifest."""
        status, payload = ApiTarget(api, token, config_path).request("GET", "/api/v1/files")
        if status != 200:
            _emit(status, payload)
        for entry in payload["files"]:
            click.echo(
                f"{entry['digest'][:12]} {entry['size']:>12} {entry['mode']:>6} {entry['path']}"
            )

    @files.command("rm")
    @click.argument("remote")
    @with_target
    def files_rm(remote: str, api: str | None, token: str | None, config_path: Path | None) -> None:
        """Delete REMOTE on every node (a tombstone in the manifest)."""
        path = "/api/v1/files/" + urllib.parse.quote(remote.lstrip("/"))
        _emit(*ApiTarget(api, token, config_path).request("DELETE", path))


def register_site_sync(main: click.Group) -> None:
    @main.command("site-sync-init")
    @click.option("--site-id", required=True, help="This site's id (checked against the node).")
    @click.option("--peer-sites", required=True, help="Peers as SITE:HOST:PORT, comma separated.")
    @with_target
    def site_sync_init(
        site_id: str, peer_sites: str, api: str | None, token: str | None, config_path: Path | None
    ) -> None:
        """Record the peer sites in this site's cluster (every future leader follows them)."""
        peers = [p.strip() for p in peer_sites.split(",") if p.strip()]
        body = json.dumps({"site_id": site_id, "peer_sites": peers}).encode()
        _emit(
            *ApiTarget(api, token, config_path).request(
                "POST", "/api/v1/sync/peers", body, {"Content-Type": "application/json"}
            )
        )

    @main.command("site-sync-status")
    @with_target
    def site_sync_status(api: str | None, token: str | None, config_path: Path | None) -> None:
        """Per peer: reachable, last applied position and time, lag, last error."""
        _emit(*ApiTarget(api, token, config_path).request("GET", "/api/v1/sync/status"))

    @main.command("site-sync-now")
    @click.option("--site-id", help="Only this peer site (default: all).")
    @with_target
    def site_sync_now(
        site_id: str | None, api: str | None, token: str | None, config_path: Path | None
    ) -> None:
        """Sync from peer sites at once (ask the site leader)."""
        query = f"?site={urllib.parse.quote(site_id)}" if site_id else ""
        _emit(*ApiTarget(api, token, config_path).request("POST", "/api/v1/sync/now" + query))

    @main.command("site-sync-logs")
    @click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
    @with_target
    def site_sync_logs(
        limit: int, api: str | None, token: str | None, config_path: Path | None
    ) -> None:
        """Recent site sync events."""
        status, payload = ApiTarget(api, token, config_path).request(
            "GET", f"/api/v1/sync/logs?limit={limit}"
        )
        if status != 200:
            _emit(status, payload)
        for event in payload["events"]:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event["ts"]))
            click.echo(f"{stamp} {event['node']} {event['kind']} {event['detail']}")


def _etcd_endpoints(option: str | None, config_path: Path | None) -> list[str]:
    if option:
        return [e.strip() for e in option.split(",") if e.strip()]
    if config_path is None:
        raise click.UsageError("give --etcd ENDPOINTS or --config FILE")
    config = _load(config_path)
    assert config is not None
    endpoints = config.clustering.etcd_endpoints
    if not endpoints:
        raise click.UsageError("the config has no clustering.etcd_endpoints")
    return endpoints


async def _init(
    endpoints: list[str],
    cluster_id: str,
    record: dict[str, Any],
    material: TlsMaterial | None,
) -> tuple[bool, Any]:
    etcd = Etcd(endpoints, (lambda: material) if material is not None else None)
    key = Keys(cluster_id).cluster
    value = json.dumps(record).encode()
    try:
        created, _ = await etcd.call(
            lambda c: c.transaction(
                compare=[c.transactions.create(key) == 0],
                success=[c.transactions.put(key, value)],
                failure=[],
            )
        )
        return bool(created), await etcd.get_json(key)
    finally:
        await etcd.close()
