"""The daemon's configuration model: one JSON file, validated completely before anything starts.

`Config()` is the embedded default (a single node serving ./tftpboot, no cluster) and `{}` is a
valid file. Every key is checked, unknown keys are rejected, and every problem is reported at
once as `dotted.key.path: what is wrong (got value)` through `ConfigError`.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "AccessConfig",
    "ApiConfig",
    "BackupConfig",
    "CacheConfig",
    "CertificateRole",
    "ClusteringConfig",
    "Config",
    "ConfigError",
    "ConfigModel",
    "ConnectionPoolConfig",
    "DdosProtectionConfig",
    "FirewallConfig",
    "FirewallRule",
    "GeneratedFileRule",
    "HttpBootConfig",
    "LoggingConfig",
    "MultiSiteConfig",
    "NetbootConfig",
    "NetworkSecurityConfig",
    "NodeConfig",
    "PeerSite",
    "PerformanceConfig",
    "PortRange",
    "RemapRule",
    "ReplicationConfig",
    "Role",
    "SecurityConfig",
    "SiteSyncConfig",
    "TftpConfig",
    "ThreadPoolConfig",
    "TlsConfig",
    "TokenRole",
    "WriteConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
]


class ConfigError(Exception):
    """Raised for any configuration problem; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        # Passing `problems` as the only arg keeps the exception picklable for worker processes.
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


class _FieldProblem(ValueError):
    """A cross-field check failure that belongs to a key below the model being validated.

    Pydantic reports model-level errors at the model's own path; carrying the relative path
    lets the error point at the key the user actually has to change.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


# --- value checks --------------------------------------------------------------------------------

_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_DIGITS_RE = re.compile(r"[0-9]{1,5}")


def _check_id(value: str) -> str:
    # fullmatch, not `$`: `$` would also accept a trailing newline.
    if not _ID_RE.fullmatch(value):
        raise ValueError(
            "must be 1-63 characters of lowercase letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (pattern ^[a-z0-9][a-z0-9._-]{0,62}$)"
        )
    return value


def _check_ip_literal(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(
            'must be an IPv4 or IPv6 address literal such as "0.0.0.0", "10.0.0.5" or "::" '
            "(host names are not resolved here)"
        ) from None


def _check_port_text(text: str) -> int:
    if not _DIGITS_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f'port "{text}" is not a number between 1 and 65535')
    return int(text)


def _check_host(host: str) -> None:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f'"{host[1:-1]}" is not a valid IPv6 address') from None
        return
    if ":" in host:
        raise ValueError('IPv6 addresses must be in brackets, e.g. "[2001:db8::1]:8080"')
    labels = host.split(".")
    if all(label.isascii() and label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f'"{host}" is not a valid IPv4 address') from None
        return
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f'"{host}" is not a valid host name or IP address')


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError('expected "host:port", e.g. "10.0.0.5:8080"')
    _check_host(host)
    _check_port_text(port)
    return value


def _check_etcd_endpoint(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if sep and scheme not in ("http", "https"):
        raise ValueError(f'unsupported scheme "{scheme}"; use "host:port" or "http(s)://host:port"')
    try:
        _check_host_port(rest if sep else value)
    except ValueError as exc:
        raise ValueError(f'{exc}; use "host:port" or "http(s)://host:port"') from None
    return value


def _check_upload_prefix(value: str) -> str:
    # Prefixes are matched against requested file names, so they must be plain relative paths:
    # anything else could never match, or would reach outside the root.
    if not value or value.startswith("/") or "\\" in value or "\x00" in value:
        raise ValueError('must be a non-empty relative path using "/", e.g. "uploads/"')
    parts = value.removesuffix("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError('must not contain "..", "." or empty path segments, e.g. "uploads/"')
    return value


def _check_path_text(value: object) -> object:
    # Path("") silently becomes ".", which is never what an empty value meant.
    if isinstance(value, str) and (not value or "\x00" in value):
        raise ValueError("must be a non-empty path without NUL characters")
    return value


_BACKUP_SCHEMES = ("az", "file", "gs", "s3")


def _check_backup_location(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _BACKUP_SCHEMES:
        raise ValueError(
            f'unsupported scheme "{scheme}"; allowed schemes: {", ".join(_BACKUP_SCHEMES)} '
            '(e.g. "s3://bucket/prefix" or "file:///var/backups/tftp")'
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not PurePosixPath(parts.path).is_absolute():
            raise ValueError('file locations need an absolute path, e.g. "file:///var/backups"')
    elif not parts.netloc:
        raise ValueError(f'{scheme} locations need a bucket or container, e.g. "{scheme}://name/"')
    return value


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_env_name(value: str) -> str:
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(
            "must be an environment variable name: letters, digits and '_', not starting with "
            'a digit, e.g. "SIMPLE_TFTPD_BACKUP_KEY"'
        )
    return value


_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
_CRON_ITEM_RE = re.compile(r"(?:(\*)|([0-9]+)(?:-([0-9]+))?)(?:/([0-9]+))?")


def _check_cron_item(item: str, low: int, high: int) -> None:
    match = _CRON_ITEM_RE.fullmatch(item)
    if match is None:
        raise ValueError(f'"{item}" is not "*", "N", "A-B", "*/S" or "A-B/S"')
    star, first, last, step = match.groups()
    if star is None:
        if step is not None and last is None:
            raise ValueError(f'a step needs "*" or a range before it, e.g. "*/{step}"')
        for number in (first, last):
            if number is not None and not low <= int(number) <= high:
                raise ValueError(f"{int(number)} is out of range {low}-{high}")
        if last is not None and int(first) > int(last):
            raise ValueError(f'range "{item}" is reversed')
    if step is not None and not 1 <= int(step) <= high:
        raise ValueError(f'step "/{step}" must be between 1 and {high}')


def _check_cron(value: str) -> str:
    fields = value.split()
    if len(fields) != len(_CRON_FIELDS):
        raise ValueError(
            f"expected 5 cron fields (minute hour day-of-month month day-of-week), "
            f"found {len(fields)}"
        )
    for text, (name, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            try:
                _check_cron_item(item, low, high)
            except ValueError as exc:
                raise ValueError(f'{name} field "{text}": {exc}') from None
    return value


def _check_odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("even cluster sizes add no fault tolerance; use an odd number for quorum")
    return value


def _check_port_spec(value: object) -> int | str:
    # A plain validator instead of `int | str` keeps errors free of pydantic's union-branch noise.
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            raise ValueError("port must be between 1 and 65535")
        return value
    if isinstance(value, str):
        low_text, sep, high_text = value.partition("-")
        if not sep:
            raise ValueError(
                f'write single ports as numbers ({value} without quotes), ranges as "LOW-HIGH"'
            )
        low, high = _check_port_text(low_text), _check_port_text(high_text)
        if low > high:
            raise ValueError(f'range "{value}" is reversed; write "{high}-{low}"')
        return value
    raise ValueError('must be a port number or a range string such as "2379-2380"')


def _port_bounds(spec: int | str) -> tuple[int, int]:
    if isinstance(spec, int):
        return spec, spec
    low, _, high = spec.partition("-")
    return int(low), int(high)


def _parse_cidr(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError('must be a CIDR string such as "10.0.0.0/8"')
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        try:
            # Host bits set is the common mistake; show the network the user probably meant.
            hint = f"; did you mean {ipaddress.ip_network(value, strict=False)}"
        except ValueError:
            hint = ""
        raise ValueError(f"not a network in CIDR notation: {exc}{hint}") from None


Identifier = Annotated[str, AfterValidator(_check_id)]
IpLiteral = Annotated[str, AfterValidator(_check_ip_literal)]
HostPort = Annotated[str, AfterValidator(_check_host_port)]
Port = Annotated[int, Field(ge=1, le=65535)]
PortSpec = Annotated[int | str, PlainValidator(_check_port_spec)]
Cidr = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, PlainValidator(_parse_cidr)]
# The model is strict (JSON types only), but paths arrive as JSON strings.
FsPath = Annotated[Path, Field(strict=False), BeforeValidator(_check_path_text)]
Token = Annotated[str, Field(min_length=16)]
ClusterSize = Annotated[int, Field(ge=3, le=7), AfterValidator(_check_odd)]


# --- models --------------------------------------------------------------------------------------


class ConfigModel(BaseModel):
    """Shared base: unknown keys are errors, values are immutable and of the exact JSON type."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class NodeConfig(ConfigModel):
    node_id: Identifier = "node-1"
    cluster_id: Identifier = "default"
    # Only a bootstrap hint: the elected role comes from the cluster at runtime.
    role: Literal["standalone", "leader", "follower"] = "standalone"


class PortRange(ConfigModel):
    low: int = Field(ge=1024, le=65535)
    high: int = Field(ge=1024, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be greater than high ({self.high})")
        return self


class RemapRule(ConfigModel):
    pattern: str
    replacement: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _replacement_fits(self) -> Self:
        # re parses the template eagerly, so a bad group reference fails here, not per request.
        try:
            re.compile(self.pattern).sub(self.replacement, "")
        except (re.error, IndexError) as exc:
            raise _FieldProblem(("replacement",), f"invalid replacement: {exc}") from None
        return self


class WriteConfig(ConfigModel):
    enabled: bool = False
    prefixes: list[Annotated[str, AfterValidator(_check_upload_prefix)]] = []
    max_size_mb: int = Field(default=1024, ge=1, le=1_048_576)
    overwrite: bool = True

    @model_validator(mode="after")
    def _prefix_required(self) -> Self:
        if self.enabled and not self.prefixes:
            raise _FieldProblem(
                ("prefixes",), 'uploads are enabled but no prefix is allowed; add e.g. "uploads/"'
            )
        return self


class TftpConfig(ConfigModel):
    bind: IpLiteral = "0.0.0.0"
    port: Port = 69
    root: FsPath = Path("tftpboot")
    single_port: bool = False
    port_range: PortRange | None = None
    timeout: float = Field(default=1.0, ge=0.05, le=255)
    retries: int = Field(default=5, ge=1, le=50)
    max_blksize: int = Field(default=1468, ge=8, le=65464)
    max_windowsize: int = Field(default=64, ge=1, le=65535)
    drain_timeout: float = Field(default=30.0, ge=0, le=3600)
    remap: list[RemapRule] = []
    write: WriteConfig = WriteConfig()


class ApiConfig(ConfigModel):
    enabled: bool = True
    bind: IpLiteral = "0.0.0.0"
    port: Port = 8080
    token: Token | None = Field(default=None, repr=False)
    # A plain-HTTP listener with only health, readiness and metrics, for load balancer health
    # checks and Prometheus when the API itself needs TLS and an identity. null: none.
    metrics_port: Port | None = None
    # null: api.bind.
    metrics_bind: IpLiteral | None = None

    @model_validator(mode="after")
    def _metrics_port_free(self) -> Self:
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise _FieldProblem(
                ("metrics_port",), "is the API port; give the metrics listener a port of its own"
            )
        return self


class LoggingConfig(ConfigModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    transfer_log: bool = True


class ReplicationConfig(ConfigModel):
    gc_grace_seconds: int = Field(default=3600, ge=0, le=2_592_000)


class ClusteringConfig(ConfigModel):
    enabled: bool = False
    engine: Literal["etcd"] = "etcd"
    etcd_endpoints: list[Annotated[str, AfterValidator(_check_etcd_endpoint)]] = []
    nodes: list[HostPort] = []
    lease_ttl: int = Field(default=5, ge=2, le=60)
    min_nodes: ClusterSize = 3
    max_nodes: ClusterSize = 7
    replication: ReplicationConfig = ReplicationConfig()
    # Where this node keeps its content-addressed blobs (sha256), next to nothing else.
    state_dir: FsPath = Path("cluster-state")
    # host:port at which the other nodes reach this node's API (blob transfer); needed when
    # api.bind is a wildcard address.
    advertise: HostPort | None = None
    # A full reconcile with the manifest this often, on top of the watch (self-healing).
    resync_seconds: float = Field(default=30.0, ge=1, le=3600)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min_nodes > self.max_nodes:
            raise _FieldProblem(
                ("min_nodes",), f"{self.min_nodes} is larger than max_nodes ({self.max_nodes})"
            )
        if self.enabled and not self.etcd_endpoints:
            raise _FieldProblem(
                ("etcd_endpoints",),
                'clustering is enabled but no etcd endpoint is set; add e.g. "10.0.0.1:2379"',
            )
        return self


class PeerSite(ConfigModel):
    site_id: Identifier
    endpoint: HostPort

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        # "us-west:10.1.0.5:8080" is the compact form of {"site_id": ..., "endpoint": ...}.
        if isinstance(data, str):
            site_id, sep, endpoint = data.partition(":")
            if not sep:
                raise ValueError('expected an object or the shorthand "SITE_ID:HOST:PORT"')
            return {"site_id": site_id, "endpoint": endpoint}
        return data


class SiteSyncConfig(ConfigModel):
    enabled: bool = False
    interval_seconds: float = Field(default=5.0, ge=0.1, le=86400)
    token: Token | None = Field(default=None, repr=False)
    peer_sites: list[PeerSite] = []


class MultiSiteConfig(ConfigModel):
    enabled: bool = False
    site_id: Identifier = "default"
    region: Identifier | None = None
    nodes: list[HostPort] = []
    sync: SiteSyncConfig = SiteSyncConfig()

    @model_validator(mode="after")
    def _peers_distinct(self) -> Self:
        seen: dict[str, int] = {}
        for index, peer in enumerate(self.sync.peer_sites):
            loc: tuple[str | int, ...] = ("sync", "peer_sites", index, "site_id")
            if peer.site_id == self.site_id:
                raise _FieldProblem(
                    loc, f'"{peer.site_id}" is this site; a site cannot peer itself'
                )
            if peer.site_id in seen:
                raise _FieldProblem(
                    loc, f'"{peer.site_id}" is already listed at peer_sites[{seen[peer.site_id]}]'
                )
            seen[peer.site_id] = index
        return self


class BackupConfig(ConfigModel):
    enabled: bool = False
    # Snapshot times, in UTC.
    schedule: Annotated[str, AfterValidator(_check_cron)] = "0 */6 * * *"
    retention_days: int = Field(default=90, ge=1, le=3650)
    locations: list[Annotated[str, AfterValidator(_check_backup_location)]] = []
    encryption: bool = True
    # The 32-byte key (64 hex characters or base64) comes from a file or from the environment
    # variable named here; it is never written to a location.
    key_file: FsPath | None = None
    key_env: Annotated[str, AfterValidator(_check_env_name)] | None = None
    # How often manifest changes are appended to each location's journal.
    journal_seconds: float = Field(default=10.0, ge=0.1, le=3600)

    @model_validator(mode="after")
    def _usable(self) -> Self:
        for index, location in enumerate(self.locations):
            if location in self.locations[:index]:
                raise _FieldProblem(("locations", index), "duplicate location")
        if self.key_file is not None and self.key_env is not None:
            raise _FieldProblem(("key_env",), "set key_file or key_env, not both")
        if not self.enabled:
            return self
        if not self.locations:
            raise _FieldProblem(
                ("locations",),
                'backups are enabled but no location is set; add e.g. "s3://bucket/tftp"',
            )
        if self.encryption and self.key_file is None and self.key_env is None:
            # Refuse rather than silently writing unencrypted backups.
            raise _FieldProblem(
                ("key_file",),
                "encryption is on but no key is set; set key_file, or key_env to the name of "
                "an environment variable holding the key",
            )
        return self


class FirewallRule(ConfigModel):
    name: Identifier
    action: Literal["allow", "deny"] = "allow"
    protocol: Literal["udp", "tcp"]
    # Empty lists would make a rule that silently matches nothing.
    ports: list[PortSpec] = Field(min_length=1)
    sources: list[Cidr] = Field(min_length=1)

    def covers_port(self, port: int) -> bool:
        return any(low <= port <= high for low, high in map(_port_bounds, self.ports))


class FirewallConfig(ConfigModel):
    enabled: bool = True
    default_action: Literal["allow", "deny"] = "allow"
    rules: list[FirewallRule] = []

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                raise _FieldProblem(
                    ("rules", index, "name"),
                    f'duplicate rule name "{rule.name}" (first used by rules[{seen[rule.name]}])',
                )
            seen[rule.name] = index
        return self


class DdosProtectionConfig(ConfigModel):
    enabled: bool = True
    rate_limit: float = Field(default=100.0, ge=0.1, le=1e6)
    burst: int = Field(default=200, ge=1, le=1_000_000)
    max_sessions_per_client: int = Field(default=64, ge=1, le=65535)
    # Retransmissions of the first packet to an unverified client bound reflection amplification.
    unverified_retries: int = Field(default=2, ge=0, le=10)


class NetworkSecurityConfig(ConfigModel):
    firewall: FirewallConfig = FirewallConfig()
    ddos_protection: DdosProtectionConfig = DdosProtectionConfig()


class TlsConfig(ConfigModel):
    """TLS 1.3 for the management API and for this node's own connections: blob pulls from
    peers, site sync, etcd. The files are read at start and again on SIGHUP."""

    enabled: bool = False
    # PEM bundle of the trusted CAs: this site's CA, and the peer sites' CAs if they have
    # their own. Client and server certificates are checked against it.
    ca_file: FsPath | None = None
    # This node's certificate (PEM, leaf first) and its key; the same pair serves the API and
    # authenticates the node to peers, peer sites and etcd.
    cert_file: FsPath | None = None
    key_file: FsPath | None = None
    # PEM CRLs, one per CA in ca_file; a revoked client certificate fails the handshake.
    crl_file: FsPath | None = None
    # false: a client may come without a certificate and authenticate with a token.
    require_client_cert: bool = True

    @model_validator(mode="after")
    def _files_given(self) -> Self:
        if self.enabled:
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(self, key) is None:
                    raise _FieldProblem(
                        (key,), f"TLS is enabled but no {key} is set; `fab certs` writes one"
                    )
        return self


def _check_identity_name(value: str) -> str:
    if not value or len(value) > 253 or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValueError(
            "must be 1-253 printable characters without spaces: a certificate's common name, "
            'DNS name or IP address, e.g. "ops-dashboard.fra1.example.net"'
        )
    return value


Role = Literal["read_only", "admin"]


class CertificateRole(ConfigModel):
    # Matched against the verified client certificate's subject common name and its DNS and
    # IP subject alternative names.
    name: Annotated[str, AfterValidator(_check_identity_name)]
    role: Role


class TokenRole(ConfigModel):
    # Who the token belongs to: it shows in logs and cluster events, never the token itself.
    name: Identifier
    token: Token = Field(repr=False)
    role: Role


class AccessConfig(ConfigModel):
    """Who may use the management API. Health and readiness are always open; everything else
    needs a role when reads are not anonymous, and every change needs the admin role."""

    # null: true without TLS (the API's reads stay open as before), false with TLS.
    anonymous_read: bool | None = None
    certificates: list[CertificateRole] = []
    tokens: list[TokenRole] = []

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        names: dict[str, int] = {}
        for index, cert in enumerate(self.certificates):
            if cert.name in names:
                raise _FieldProblem(
                    ("certificates", index, "name"),
                    f'"{cert.name}" is already mapped at certificates[{names[cert.name]}]',
                )
            names[cert.name] = index
        seen: dict[str, int] = {}
        tokens: dict[str, int] = {}
        for index, token in enumerate(self.tokens):
            if token.name in seen:
                raise _FieldProblem(
                    ("tokens", index, "name"),
                    f"duplicate name (first used by tokens[{seen[token.name]}])",
                )
            if token.token in tokens:
                raise _FieldProblem(
                    ("tokens", index, "token"), f"same token as tokens[{tokens[token.token]}]"
                )
            seen[token.name] = index
            tokens[token.token] = index
        return self


class SecurityConfig(ConfigModel):
    network: NetworkSecurityConfig = NetworkSecurityConfig()
    tls: TlsConfig = TlsConfig()
    access: AccessConfig = AccessConfig()


class ConnectionPoolConfig(ConfigModel):
    max_connections: int = Field(default=10000, ge=1, le=1_000_000)


class ThreadPoolConfig(ConfigModel):
    workers: int = Field(default=0, ge=0, le=256)


class CacheConfig(ConfigModel):
    enabled: bool = True
    max_size_mb: int = Field(default=64, ge=0, le=65536)
    ttl_seconds: float = Field(default=300, ge=0, le=86400)
    # Larger files stream from the kernel page cache with read-ahead (one pread per ~22 blocks):
    # a private copy per worker would cost memory and save next to nothing.
    max_file_size_mb: int = Field(default=1, ge=0, le=65536)


class PerformanceConfig(ConfigModel):
    connection_pool: ConnectionPoolConfig = ConnectionPoolConfig()
    thread_pool: ThreadPoolConfig = ThreadPoolConfig()
    cache: CacheConfig = CacheConfig()
    # Lockstep read transfers' ACKs served by the compiled module (simple_tftpd._fastpath)
    # where it is built; false serves everything on the pure-Python path.
    fast_path: bool = True


# --- netboot: generated per-machine files and HTTP boot -------------------------------------------

# The placeholders a generated-file pattern may use; the renderer (content/generated.py) gives
# each a strict syntax, so a matched value can never carry "/" or "..".
NETBOOT_PLACEHOLDERS = ("mac", "ip", "hostname")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_URL_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~-]+")


def _check_relative_path(value: str) -> str:
    # Names below the content root, written the way clients ask for them.
    if not value or value.startswith("/") or "\\" in value or "\x00" in value:
        raise ValueError('must be a non-empty relative path using "/", e.g. "netboot/hosts.yaml"')
    if any(part in ("", ".", "..") for part in value.split("/")):
        raise ValueError('must not contain "..", "." or empty path segments')
    return value


def _check_generated_pattern(value: str) -> str:
    _check_relative_path(value)
    names = _PLACEHOLDER_RE.findall(value)
    for name in names:
        if name not in NETBOOT_PLACEHOLDERS:
            raise ValueError(
                f'unknown placeholder "{{{name}}}"; use {{mac}}, {{ip}} or {{hostname}}'
            )
        if names.count(name) > 1:
            raise ValueError(f'placeholder "{{{name}}}" is used more than once')
    rest = _PLACEHOLDER_RE.sub("", value)
    if "{" in rest or "}" in rest:
        raise ValueError('unbalanced "{" or "}"; placeholders are {mac}, {ip} and {hostname}')
    return value


def _check_url_prefix(value: str) -> str:
    if value == "/":
        return value
    parts = value.split("/")
    if (
        parts[0] != ""
        or not all(_URL_SEGMENT_RE.fullmatch(part) for part in parts[1:])
        or any(part in (".", "..") for part in parts)
    ):
        raise ValueError(
            'must be "/" or a path such as "/boot": a leading "/", no trailing "/", segments of '
            "letters, digits, '.', '_', '~' or '-'"
        )
    return value


RelativePath = Annotated[str, AfterValidator(_check_relative_path)]


class GeneratedFileRule(ConfigModel):
    # e.g. "pxelinux.cfg/01-{mac}", "grub/grub.cfg-{mac}", "{ip}.ipxe", "pxelinux.cfg/default"
    pattern: Annotated[str, AfterValidator(_check_generated_pattern)]
    # Relative to netboot.templates_dir.
    template: RelativePath
    # null: "not_found" when the pattern names the machine (so PXE firmware falls through to
    # its next candidate, e.g. pxelinux.cfg/default), "render" for a fixed name.
    unknown_host: Literal["not_found", "render"] | None = None


class HttpBootConfig(ConfigModel):
    enabled: bool = False
    # null: served by the management API server, beside the API; a number: a listener of its own.
    port: Port | None = None
    bind: IpLiteral = "0.0.0.0"
    path_prefix: Annotated[str, AfterValidator(_check_url_prefix)] = "/boot"


class NetbootConfig(ConfigModel):
    enabled: bool = False
    # Both live in the content tree (so they replicate like any content) and are never served.
    templates_dir: RelativePath = "netboot/templates"
    hosts_file: RelativePath = "netboot/hosts.yaml"
    max_render_bytes: int = Field(default=1 << 20, ge=1, le=64 << 20)
    generated: list[GeneratedFileRule] = []
    http: HttpBootConfig = HttpBootConfig()

    @model_validator(mode="after")
    def _rules_usable(self) -> Self:
        if self.enabled and not self.generated:
            raise _FieldProblem(
                ("generated",),
                "netboot is enabled but no generated file is set; add e.g. "
                '{"pattern": "pxelinux.cfg/01-{mac}", "template": "pxelinux.j2"}',
            )
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.generated):
            if rule.pattern in seen:
                raise _FieldProblem(
                    ("generated", index, "pattern"),
                    f"duplicate pattern (first used by generated[{seen[rule.pattern]}])",
                )
            seen[rule.pattern] = index
        if _path_within(self.hosts_file, self.templates_dir):
            raise _FieldProblem(("hosts_file",), "must not be inside templates_dir")
        return self


def _path_within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class Config(ConfigModel):
    node: NodeConfig = NodeConfig()
    tftp: TftpConfig = TftpConfig()
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    multi_site: MultiSiteConfig = MultiSiteConfig()
    backup: BackupConfig = BackupConfig()
    security: SecurityConfig = SecurityConfig()
    performance: PerformanceConfig = PerformanceConfig()
    netboot: NetbootConfig = NetbootConfig()

    @model_validator(mode="after")
    def _netboot_consistent(self) -> Self:
        netboot, http = self.netboot, self.netboot.http
        if http.enabled and not self.api.enabled:
            # HTTP boot runs in the process that serves the API (the supervisor with workers).
            raise _FieldProblem(
                ("netboot", "http", "enabled"), "HTTP boot runs beside the API; set api.enabled"
            )
        if http.enabled and http.port is None:
            if http.path_prefix == "/" or _path_within(http.path_prefix.lstrip("/"), "api"):
                raise _FieldProblem(
                    ("netboot", "http", "path_prefix"),
                    'on the API server the prefix must not be "/" or under "/api"; use e.g. '
                    '"/boot", or give HTTP boot a port of its own',
                )
        elif http.enabled and http.port == self.api.port:
            raise _FieldProblem(
                ("netboot", "http", "port"),
                "is the API port; set it to null to serve HTTP boot on the API server",
            )
        if netboot.enabled and self.tftp.write.enabled:
            # Uploads into the templates or the hosts file would let a client write the
            # code and data that generate other machines' boot files.
            for index, prefix in enumerate(self.tftp.write.prefixes):
                directory = prefix.strip("/")
                for private in (netboot.templates_dir, netboot.hosts_file):
                    if _path_within(private, directory) or _path_within(directory, private):
                        raise _FieldProblem(
                            ("tftp", "write", "prefixes", index),
                            f'overlaps netboot file "{private}"; uploads must not reach '
                            "templates or the hosts file",
                        )
        return self

    @model_validator(mode="after")
    def _cluster_needs_api(self) -> Self:
        if not self.clustering.enabled:
            return self
        # Nodes pull blobs from each other through the API, authenticated by the token.
        if not self.api.enabled:
            raise _FieldProblem(("api", "enabled"), "clustering needs the API; set it to true")
        if self.api.token is None:
            raise _FieldProblem(
                ("api", "token"),
                "clustering is enabled but no API token is set; set the same token "
                "(16+ characters) on every node",
            )
        if self.clustering.advertise is None and self.api.bind in ("0.0.0.0", "::"):
            raise _FieldProblem(
                ("clustering", "advertise"),
                f"api.bind is {self.api.bind}; set the host:port other nodes use to reach "
                "this node's API",
            )
        return self

    @model_validator(mode="after")
    def _sync_needs_cluster(self) -> Self:
        sync = self.multi_site.sync
        if not (self.multi_site.enabled and sync.enabled):
            return self
        # The site leader runs the sync and the manifest it fills lives in etcd.
        if not self.clustering.enabled:
            raise _FieldProblem(
                ("multi_site", "sync", "enabled"),
                "site sync needs clustering; set clustering.enabled (etcd) first",
            )
        if sync.token is None:
            raise _FieldProblem(
                ("multi_site", "sync", "token"),
                "site sync is enabled but no token is set; set the same token on every site",
            )
        return self

    @model_validator(mode="after")
    def _tls_consistent(self) -> Self:
        tls, access = self.security.tls, self.security.access
        for index, endpoint in enumerate(self.clustering.etcd_endpoints):
            if endpoint.startswith("https://") and not tls.enabled:
                # The daemon authenticates to etcd with its own certificate from security.tls.
                raise _FieldProblem(
                    ("clustering", "etcd_endpoints", index),
                    "https endpoints need security.tls (the CA, and this node's certificate "
                    "for etcd's client-cert-auth); enable it or use http://",
                )
        http = self.netboot.http
        if tls.enabled and tls.require_client_cert and http.enabled and http.port is None:
            raise _FieldProblem(
                ("netboot", "http", "port"),
                "the API requires client certificates, which boot firmware does not have; "
                "give HTTP boot a port of its own",
            )
        if self.api.metrics_port is not None and self.api.metrics_port == http.port:
            raise _FieldProblem(("api", "metrics_port"), "is netboot.http.port")
        secrets = {
            "api.token": self.api.token,
            "multi_site.sync.token": self.multi_site.sync.token,
        }
        for index, token in enumerate(access.tokens):
            for key, secret in secrets.items():
                if token.token == secret:
                    # One secret with two roles would make the weaker one meaningless.
                    raise _FieldProblem(
                        ("security", "access", "tokens", index, "token"), f"same token as {key}"
                    )
        return self

    def summary(self) -> dict[str, object]:
        """A small, JSON-friendly overview for status endpoints; never contains secrets."""
        return {
            "node_id": self.node.node_id,
            "cluster_id": self.node.cluster_id,
            "role": self.node.role,
            "tftp_bind": self.tftp.bind,
            "tftp_port": self.tftp.port,
            "tftp_root": str(self.tftp.root),
            "single_port": self.tftp.single_port,
            "write_enabled": self.tftp.write.enabled,
            "clustering_enabled": self.clustering.enabled,
            "multi_site_enabled": self.multi_site.enabled,
            "site_id": self.multi_site.site_id,
            "backup_enabled": self.backup.enabled,
            "netboot_enabled": self.netboot.enabled,
            "http_boot_enabled": self.netboot.http.enabled,
            "tls_enabled": self.security.tls.enabled,
        }


# --- loading and error reporting -----------------------------------------------------------------

_PLAIN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCALARS = (str, int, float, bool, type(None))
_MAX_SHOWN = 80


def _format_loc(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY_RE.fullmatch(part):
            text += f".{part}" if text else part
        else:
            # Unknown keys can contain anything; quoting keeps the path unambiguous.
            text += f"[{json.dumps(part)}]"
    return text


def _model_at(loc: Iterable[str | int]) -> type[BaseModel] | None:
    """The model class that validates the object at `loc` (used to list its allowed keys)."""
    hint: object = Config
    for part in loc:
        hint = _unwrap(hint)
        if isinstance(part, int) and typing.get_origin(hint) is list:
            hint = typing.get_args(hint)[0]
        elif isinstance(hint, type) and issubclass(hint, BaseModel) and part in hint.model_fields:
            hint = hint.model_fields[str(part)].annotation
        else:
            return None
    hint = _unwrap(hint)
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


def _unwrap(hint: object) -> object:
    """Strip Annotated[...] and `X | None` down to the underlying type."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _unwrap(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return hint


def _unknown_key_message(loc: tuple[str | int, ...]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    allowed = list(model.model_fields)
    message = f"unknown key; allowed keys here: {', '.join(allowed)}"
    key = str(loc[-1])
    # Prefer a transposition ("prot" -> "port") over difflib's first pick ("root").
    close = [name for name in allowed if sorted(name) == sorted(key)]
    close = close or difflib.get_close_matches(key, allowed, n=1)
    return f'{message} (did you mean "{close[0]}"?)' if close else message


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _problems(exc: ValidationError, source: str) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        kind = error["type"]
        show_input = kind not in ("missing", "extra_forbidden")
        if isinstance(cause, _FieldProblem):
            loc += cause.loc
            message = str(cause)
            show_input = False  # the input here is the whole section
        elif kind == "value_error" and cause is not None:
            message = str(cause)
        elif kind == "extra_forbidden":
            message = _unknown_key_message(loc)
        elif kind == "missing":
            message = "required key is missing"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            message = "must be a JSON object"
        elif kind == "path_type":
            message = "must be a path string"
        else:
            message = error["msg"]
        value = error.get("input")
        # Never echo secrets back into logs or terminals.
        if show_input and isinstance(value, _SCALARS) and "token" not in loc:
            message += f" (got {_shown(value)})"
        problems.append(f"{_format_loc(loc) or source}: {message}")
    return problems


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate already-parsed JSON data; raise ConfigError listing every problem."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, source)) from None


class _DuplicateKeyError(ValueError):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json keeps the last of duplicate keys silently; in a config that hides mistakes.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def load_config(path: Path | None) -> Config:
    """Load and validate a JSON configuration file; None means the embedded default."""
    if path is None:
        return Config()
    try:
        # utf-8-sig tolerates the BOM some editors prepend.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([f"{path}: configuration file not found"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not valid UTF-8 (byte {exc.start})"]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{path}: cannot read configuration file: {reason}"]) from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    except _DuplicateKeyError as exc:
        raise ConfigError([f'{path}: invalid JSON: duplicate key "{exc}" in an object']) from None
    except RecursionError:
        raise ConfigError([f"{path}: invalid JSON: nested too deeply"]) from None
    return parse_config(data, source=str(path))


_OVERRIDES: dict[str, tuple[str, str]] = {
    "root": ("tftp", "root"),
    "bind": ("tftp", "bind"),
    "port": ("tftp", "port"),
    "single_port": ("tftp", "single_port"),
    "api_bind": ("api", "bind"),
    "api_port": ("api", "port"),
}


def apply_overrides(config: Config, **overrides: object) -> Config:
    """Return `config` with command-line values applied (None means "not given"), re-validated."""
    unknown = sorted(set(overrides) - set(_OVERRIDES))
    if unknown:
        raise TypeError(f"unknown configuration override(s): {', '.join(unknown)}")
    data = config.model_dump(mode="json")
    for name, value in overrides.items():
        if value is not None:
            section, key = _OVERRIDES[name]
            data[section][key] = value
    return parse_config(data, source="<command line>")
