"""One site, cloud-neutral: what every cloud stack declares, derived from the daemon's config.

The stack config (`<project>:site` in `Pulumi.<stack>.yaml`) is validated by `StackConfig`; it
embeds or points to the site's daemon config, which is validated by the daemon's own
`parse_config`. `load_site` turns both into a `Site`: node count, ports, ingress
rules by purpose, load balancer and bucket settings, autoscaling bounds, and the daemon config
each node runs. Every problem is reported at once as `StackConfigError`, before any cloud
resource is declared.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, NamedTuple, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from simple_tftpd.config import (
    Cidr,
    Config,
    ConfigError,
    FirewallRule,
    parse_config,
)

__all__ = [
    "ADVERTISE_PLACEHOLDER",
    "DEFAULT_IMAGE_PYTHON",
    "ETCD_PORTS",
    "HEALTH_CHECK_PATH",
    "NODE_STATE_DIR",
    "SSH_PORT",
    "AutoscalingSpec",
    "IngressRule",
    "InstallSpec",
    "Listener",
    "LoadBalancerSpec",
    "MachineSpec",
    "NetworkSpec",
    "PortRange",
    "Purpose",
    "SecretsSpec",
    "Site",
    "StackConfig",
    "StackConfigError",
    "load_site",
]

SSH_PORT = 22
# etcd client and peer ports: open only between the site's own nodes.
ETCD_PORTS = (2379, 2380)
# Readiness, not liveness: a draining node answers 503 and stops getting new transfers.
HEALTH_CHECK_PATH = "/api/v1/ready"
# Relative tftp.root paths are taken relative to the service's working directory.
NODE_STATE_DIR = PurePosixPath("/var/lib/simple-tftpd")

# Every cloud's default image is Ubuntu 24.04 LTS, whose python3 is 3.12; the deploy builds
# binary wheels for exactly this version (a stack output, read by deploy/stack_outputs.py).
DEFAULT_IMAGE_PYTHON = "3.12"

PortRange = tuple[int, int]
Purpose = Literal["tftp", "api", "ssh", "etcd", "other"]


class StackConfigError(Exception):
    """Any problem with a stack's configuration; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "invalid stack configuration:\n" + "\n".join(f"  {p}" for p in self.problems)


# --- the stack config model --------------------------------------------------------------------

_VERSION_RE = re.compile(r"[0-9][0-9A-Za-z.+!-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SSH_KEY_RE = re.compile(
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( \S.*)?"
)


def _check_https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f'must be an https:// URL (got "{value}")')
    if any(ch.isspace() or ch in "\"'" for ch in value):
        raise ValueError("must not contain spaces or quotes")
    return value


def _check_version(value: str) -> str:
    if not _VERSION_RE.fullmatch(value):
        raise ValueError(f'"{value}" is not a release version such as "0.1.0"')
    return value


def _check_sha256(value: str) -> str:
    if not _SHA256_RE.fullmatch(value):
        raise ValueError("must be 64 lowercase hex digits (sha256sum of the wheel)")
    return value


def _check_user(value: str) -> str:
    if not _USER_RE.fullmatch(value):
        raise ValueError(f'"{value}" is not a valid Linux user name (e.g. "tftpadmin")')
    return value


def _check_ssh_key(value: str) -> str:
    if not _SSH_KEY_RE.fullmatch(value.strip()):
        raise ValueError('must be an OpenSSH public key line such as "ssh-ed25519 AAAA... me@host"')
    return value.strip()


HttpsUrl = Annotated[str, AfterValidator(_check_https_url)]


class StackModel(BaseModel):
    # `pulumi config set --path` may store a value as a string or a number, so the stack model
    # converts ("3" -> 3, zone 1 -> "1"); the daemon config it embeds is validated by the
    # daemon's strict model.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class InstallSpec(StackModel):
    """Where nodes get the daemon: a wheel URL, or a pinned version from a package index."""

    wheel_url: HttpsUrl | None = None
    wheel_sha256: Annotated[str, AfterValidator(_check_sha256)] | None = None
    version: Annotated[str, AfterValidator(_check_version)] | None = None
    # With a wheel URL this is where its dependencies come from (default: pip's default index).
    index_url: HttpsUrl | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.wheel_url is None) == (self.version is None):
            raise ValueError(
                "set exactly one of wheel_url (a built wheel) or version (simple-tftpd==VERSION "
                "from index_url)"
            )
        if self.wheel_sha256 is not None and self.wheel_url is None:
            raise ValueError("wheel_sha256 only applies together with wheel_url")
        if self.version is not None and self.index_url is None:
            # An implicit public index could serve an unrelated package of the same name.
            raise ValueError("version needs index_url: name the package index explicitly")
        return self

    def pip_arguments(self) -> list[str]:
        """Arguments after `pip install`."""
        args = ["--index-url", self.index_url] if self.index_url else []
        if self.wheel_url is not None:
            url = self.wheel_url
            if self.wheel_sha256 is not None:
                url += f"#sha256={self.wheel_sha256}"  # pip verifies hash fragments
            return [*args, f"simple-tftpd @ {url}"]
        return [*args, f"simple-tftpd=={self.version}"]


class MachineSpec(StackModel):
    """Machine type and image; each cloud's config supplies its defaults."""

    type: str | None = Field(default=None, min_length=1)
    image: str | None = Field(default=None, min_length=1)
    disk_gb: int = Field(default=20, ge=10, le=2048)
    # The image's python3 (major.minor); needed with a custom image.
    python_version: Annotated[str, Field(pattern=r"^3\.[0-9]{1,2}$")] | None = None

    @model_validator(mode="after")
    def _python_of_custom_image(self) -> Self:
        if self.image is not None and self.python_version is None:
            raise ValueError(
                "a custom image needs python_version, the version of its python3 (e.g. "
                '"3.12"): the deploy builds wheels for it'
            )
        return self


class AutoscalingSpec(StackModel):
    min_nodes: int = Field(default=3, ge=3, le=100)
    max_nodes: int = Field(default=20, ge=3, le=100)
    cpu_target_percent: int = Field(default=70, ge=10, le=95)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) is larger than max_nodes")
        return self


class NetworkSpec(StackModel):
    """An existing network (`id` + `subnet_ids`) or a new one (`cidr`), over `zones`."""

    id: str | None = Field(default=None, min_length=1)
    subnet_ids: list[Annotated[str, Field(min_length=1)]] = []
    cidr: Cidr | None = None
    zones: list[Annotated[str, Field(min_length=1)]] = []

    @model_validator(mode="after")
    def _existing_or_new(self) -> Self:
        if self.id is not None:
            if not self.subnet_ids:
                raise ValueError("an existing network (id) needs its subnet_ids")
            if self.cidr is not None:
                raise ValueError("cidr is only for a new network; drop it or drop id")
            return self
        if self.subnet_ids:
            raise ValueError("subnet_ids need the id of the network they belong to")
        if self.cidr is None:
            raise ValueError(
                'set cidr for a new network (e.g. "10.30.0.0/16") or id + subnet_ids for an '
                "existing one"
            )
        if not isinstance(self.cidr, ipaddress.IPv4Network) or not self.cidr.is_private:
            raise ValueError(f"cidr must be a private IPv4 network (got {self.cidr})")
        if not 8 <= self.cidr.prefixlen <= 24:
            raise ValueError(f"cidr must be between /8 and /24 (got /{self.cidr.prefixlen})")
        if len(set(self.zones)) != len(self.zones):
            raise ValueError("zones must not repeat")
        return self

    @property
    def is_new(self) -> bool:
        return self.id is None


class LoadBalancerSpec(StackModel):
    # Public load balancers are an explicit choice; the policy checks hold stacks to it.
    internal: bool = True


class SecretsSpec(StackModel):
    """Tokens set with `pulumi config set --secret --path site.secrets.<key>`: they override the
    daemon config's, so the site's JSON file can stay free of secrets."""

    api_token: str | None = Field(default=None, repr=False)
    sync_token: str | None = Field(default=None, repr=False)


class StackConfig(StackModel):
    """The `site` object of a stack's config."""

    daemon_config: str | None = Field(default=None, min_length=1)
    daemon: dict[str, Any] | None = None
    secrets: SecretsSpec = SecretsSpec()
    node_count: int | None = None
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    network: NetworkSpec
    admin_cidrs: list[Cidr] = Field(min_length=1)
    ssh_user: Annotated[str, AfterValidator(_check_user)] = "tftpadmin"
    ssh_public_keys: list[Annotated[str, AfterValidator(_check_ssh_key)]] = []
    machine: MachineSpec = MachineSpec()
    load_balancer: LoadBalancerSpec = LoadBalancerSpec()
    install: InstallSpec

    @model_validator(mode="after")
    def _one_daemon_config(self) -> Self:
        if (self.daemon_config is None) == (self.daemon is None):
            raise ValueError(
                "set exactly one of daemon_config (path to the site's daemon JSON config) or "
                "daemon (the daemon config inline)"
            )
        return self


# --- the derived site --------------------------------------------------------------------------


@dataclass(frozen=True)
class IngressRule:
    """One cloud firewall rule: a protocol, port ranges and sources of one address family.

    `from_nodes` rules admit only the site's own nodes (security group / application security
    group / service account reference) and have no CIDR sources.
    """

    name: str
    purpose: Purpose
    protocol: Literal["tcp", "udp"]
    ports: tuple[PortRange, ...]
    sources: tuple[str, ...] = ()
    from_nodes: bool = False

    def port_strings(self) -> list[str]:
        return [str(low) if low == high else f"{low}-{high}" for low, high in self.ports]


class Listener(NamedTuple):
    """A port the load balancer forwards to the nodes (all are health-checked on the API)."""

    name: Literal["tftp", "api"]
    protocol: Literal["udp", "tcp"]
    port: int


@dataclass(frozen=True)
class Site:
    site_id: str
    slug: str
    stack: StackConfig
    daemon: Config
    node_count: int
    ingress: tuple[IngressRule, ...]

    def name(self, suffix: str, limit: int = 48) -> str:
        """A resource name for this site: `<slug>-<suffix>`, the slug cut to fit `limit`."""
        room = limit - len(suffix) - 1
        return f"{self.slug[:room].rstrip('-')}-{suffix}"

    @property
    def tftp_port(self) -> int:
        return self.daemon.tftp.port

    @property
    def api_port(self) -> int:
        return self.daemon.api.port

    @property
    def autoscaling(self) -> AutoscalingSpec:
        return self.stack.autoscaling

    @property
    def internal_load_balancer(self) -> bool:
        return self.stack.load_balancer.internal

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return (Listener("tftp", "udp", self.tftp_port), Listener("api", "tcp", self.api_port))

    @property
    def drain_seconds(self) -> int:
        """How long the load balancer lets a removed node finish its transfers."""
        return int(self.daemon.tftp.drain_timeout)

    @property
    def python_version(self) -> str:
        """The nodes' Python (`major.minor`), from the image choice."""
        return self.stack.machine.python_version or DEFAULT_IMAGE_PYTHON

    @property
    def retention_days(self) -> int:
        return self.daemon.backup.retention_days

    @property
    def backup_prefix(self) -> str:
        return f"tftp/{self.site_id}"

    @property
    def peer_sites(self) -> list[dict[str, str]]:
        return [peer.model_dump() for peer in self.daemon.multi_site.sync.peer_sites]

    @property
    def labels(self) -> dict[str, str]:
        """Tags/labels on every resource that takes them (lowercase, cloud-safe)."""
        return {"simple-tftpd-site": self.slug, "managed-by": "pulumi"}

    def sources(self, purpose: Purpose) -> list[str]:
        """Every CIDR allowed for one purpose, in rule order, without repeats."""
        found = [s for rule in self.ingress if rule.purpose == purpose for s in rule.sources]
        return list(dict.fromkeys(found))

    def subnet_cidrs(self, count: int) -> list[str]:
        """`count` equal, non-overlapping subnets carved from the new network's CIDR."""
        network = self.stack.network.cidr
        assert network is not None, "subnet_cidrs is only for new networks"
        prefix = network.prefixlen + max(0, math.ceil(math.log2(count)))
        return [str(subnet) for subnet in list(network.subnets(new_prefix=prefix))[:count]]

    def node_config(self, *, tftp_bind: str, backup_location: str) -> Config:
        """The daemon config each node starts with: the site's, set up for life behind the LB.

        Single-port mode (an L4 load balancer tracks flows by 5-tuple); wildcard binds, except
        for TFTP where a cloud needs the socket on its VIP; an absolute content root; the
        site's own bucket as the backup target (the node identity can write nowhere else).
        node.node_id and clustering.advertise are per node: the node writes them at boot
        (templates/cloud-init/simple-tftpd-node-settings.py); the advertise placeholder keeps
        the file valid until then.
        """
        try:
            return parse_config(
                _node_data(self.daemon, tftp_bind, backup_location, self.content_root),
                source=f"node config of site {self.site_id}",
            )
        except ConfigError as exc:
            raise StackConfigError([f"node config: {p}" for p in exc.problems]) from None

    @property
    def content_root(self) -> PurePosixPath:
        return NODE_STATE_DIR / PurePosixPath(self.daemon.tftp.root.as_posix())

    def writable_dirs(self, config: Config) -> list[PurePosixPath]:
        """Directories the daemon writes outside its state directory (created at boot)."""
        dirs = []
        if config.tftp.write.enabled:
            dirs += [self.content_root / p.strip("/") for p in config.tftp.write.prefixes]
        dirs += [
            PurePosixPath(urlsplit(loc).path)
            for loc in config.backup.locations
            if loc.startswith("file:")
        ]
        if config.clustering.enabled:
            dirs.append(NODE_STATE_DIR / PurePosixPath(config.clustering.state_dir.as_posix()))
        return list(dict.fromkeys(dirs))


# Replaced on the node at boot; ".invalid" never resolves, so a miss cannot go unnoticed.
ADVERTISE_PLACEHOLDER = "node-address.invalid"


def _wildcard(bind: str) -> str:
    return "::" if ":" in bind else "0.0.0.0"


def _node_data(
    daemon: Config, tftp_bind: str, backup_location: str, content_root: PurePosixPath
) -> dict[str, Any]:
    data: dict[str, Any] = daemon.model_dump(mode="json")
    data["tftp"].update(single_port=True, bind=tftp_bind, root=str(content_root))
    data["api"]["bind"] = _wildcard(daemon.api.bind)
    http_boot = data.get("netboot", {}).get("http")
    if http_boot is not None:  # a per-host address in the site file means nothing on a node
        http_boot["bind"] = _wildcard(http_boot["bind"])
    if daemon.clustering.enabled:
        data["clustering"]["advertise"] = f"{ADVERTISE_PLACEHOLDER}:{daemon.api.port}"
    local = [loc for loc in daemon.backup.locations if loc.startswith("file:")]
    data["backup"]["locations"] = [backup_location, *local]
    return data


def load_site(raw: object, base_dir: Path) -> Site:
    """Validate the `site` stack config and its daemon config; raise StackConfigError."""
    try:
        stack = StackConfig.model_validate(raw)
    except ValidationError as exc:
        raise StackConfigError(_problems(exc)) from None
    daemon = _load_daemon(stack, base_dir)
    problems = _site_problems(stack, daemon)
    node_count = stack.node_count if stack.node_count is not None else daemon.clustering.min_nodes
    problems += _node_count_problems(stack, daemon, node_count)
    ingress: tuple[IngressRule, ...] = ()
    if not problems:
        ingress, rule_problems = _ingress_rules(stack, daemon)
        problems += rule_problems
    if not problems:
        # What the nodes will run must be valid too; the bucket is not known yet.
        data = _node_data(daemon, "0.0.0.0", "s3://site-bucket/tftp", PurePosixPath("/"))
        try:
            parse_config(data, source="node config")
        except ConfigError as exc:
            problems += [f"daemon config as run on the nodes: {p}" for p in exc.problems]
    if problems:
        raise StackConfigError(problems)
    site_id = daemon.multi_site.site_id
    return Site(
        site_id=site_id,
        slug=re.sub(r"[^a-z0-9]+", "-", site_id).strip("-"),
        stack=stack,
        daemon=daemon,
        node_count=node_count,
        ingress=ingress,
    )


def _read_json(path: Path) -> object:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [key for key, _ in pairs]
        for key in keys:
            if keys.count(key) > 1:
                raise ValueError(f'duplicate key "{key}" in an object')
        return dict(pairs)

    try:
        return json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=no_duplicates)
    except FileNotFoundError:
        raise ConfigError([f"{path}: configuration file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except ValueError as exc:  # JSONDecodeError is one
        raise ConfigError([f"{path}: invalid JSON: {exc}"]) from None


def _load_daemon(stack: StackConfig, base_dir: Path) -> Config:
    """The site's daemon config, with site.secrets applied, validated by the daemon's model."""
    where = "site.daemon" if stack.daemon is not None else "site.daemon_config"
    try:
        data: object = stack.daemon
        if stack.daemon_config is not None:
            data = _read_json(base_dir / stack.daemon_config)
        if isinstance(data, dict):
            data = copy.deepcopy(data)
            secrets = stack.secrets
            if secrets.api_token is not None:
                data.setdefault("api", {})["token"] = secrets.api_token
            if secrets.sync_token is not None:
                sync = data.setdefault("multi_site", {}).setdefault("sync", {})
                sync["token"] = secrets.sync_token
        return parse_config(data, source=where)
    except ConfigError as exc:
        raise StackConfigError([f"{where}: {p}" for p in exc.problems]) from None


def _site_problems(stack: StackConfig, daemon: Config) -> list[str]:
    problems = []
    if daemon.multi_site.site_id == "default":
        problems.append(
            'daemon config multi_site.site_id: is "default"; set it to this site\'s id '
            '(e.g. "us-east"), it names the site\'s resources and bucket prefix'
        )
    if not daemon.api.enabled:
        problems.append(
            "daemon config api.enabled: is false; the load balancer health checks need the API"
        )
    for index, cidr in enumerate(stack.admin_cidrs):
        if cidr.prefixlen == 0:
            problems.append(
                f"site.admin_cidrs[{index}]: {cidr} is everyone; SSH and the API are open "
                "only to admin networks"
            )
    return problems


def _node_count_problems(stack: StackConfig, daemon: Config, count: int) -> list[str]:
    where = "site.node_count" if stack.node_count is not None else "clustering.min_nodes"
    if count < 3:
        return [f"{where}: {count} nodes is below 3; a site needs at least 3 for quorum"]
    if count > 7:
        return [f"{where}: {count} nodes is above 7; use 3, 5 or 7 (autoscaling adds more)"]
    if count % 2 == 0:
        return [
            f"{where}: {count} is even; even cluster sizes add no fault tolerance, use an odd "
            "number (3, 5 or 7) for quorum"
        ]
    problems = []
    scaling = stack.autoscaling
    if not scaling.min_nodes <= count <= scaling.max_nodes:
        problems.append(
            f"{where}: {count} is outside site.autoscaling min_nodes..max_nodes "
            f"({scaling.min_nodes}..{scaling.max_nodes})"
        )
    clustering = daemon.clustering
    if clustering.enabled and not clustering.min_nodes <= count <= clustering.max_nodes:
        problems.append(
            f"site.node_count: {count} is outside the daemon config's clustering "
            f"min_nodes..max_nodes ({clustering.min_nodes}..{clustering.max_nodes})"
        )
    return problems


# --- ingress rules by purpose ------------------------------------------------------------------


def _subtract(ranges: Iterable[PortRange], cut: PortRange) -> list[PortRange]:
    result = []
    for low, high in ranges:
        if high < cut[0] or low > cut[1]:
            result.append((low, high))
            continue
        if low < cut[0]:
            result.append((low, cut[0] - 1))
        if high > cut[1]:
            result.append((cut[1] + 1, high))
    return result


def _covers(ranges: Iterable[PortRange], port: int) -> bool:
    return any(low <= port <= high for low, high in ranges)


def _bounds(spec: int | str) -> PortRange:
    if isinstance(spec, int):
        return spec, spec
    low, _, high = spec.partition("-")
    return int(low), int(high)


def _by_family(sources: Iterable[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Split sources by address family (clouds keep IPv4 and IPv6 in separate rules)."""
    v4 = tuple(s for s in sources if ":" not in s)
    v6 = tuple(s for s in sources if ":" in s)
    both = bool(v4) and bool(v6)
    return [(suffix if both else "", group) for suffix, group in (("", v4), ("-v6", v6)) if group]


def _purpose(protocol: str, ranges: list[PortRange], daemon: Config) -> Purpose:
    if protocol == "udp" and _covers(ranges, daemon.tftp.port):
        return "tftp"
    if protocol == "tcp" and _covers(ranges, daemon.api.port):
        return "api"
    return "other"


def _ingress_rules(stack: StackConfig, daemon: Config) -> tuple[tuple[IngressRule, ...], list[str]]:
    """The site's ingress rules: the daemon's allow rules as configured, plus SSH/API/etcd.

    Config rules keep their protocol, ports and sources, except for ports the stacks manage
    themselves: SSH (22) comes only from `admin_cidrs` and etcd (2379-2380) only from the
    site's own nodes, whatever a config rule says. Deny rules stay with the daemon: cloud
    firewalls here deny whatever is not allowed.
    """
    problems: list[str] = []
    rules: list[IngressRule] = []
    tcp_managed = [(SSH_PORT, SSH_PORT), ETCD_PORTS]
    for index, rule in enumerate(daemon.security.network.firewall.rules):
        if rule.action != "allow":
            continue
        ranges = [_bounds(spec) for spec in rule.ports]
        if rule.protocol == "tcp":
            for cut in tcp_managed:
                ranges = _subtract(ranges, cut)
        if not ranges:
            continue
        purpose = _purpose(rule.protocol, ranges, daemon)
        problems += _world_problems(index, rule, ranges, purpose, daemon)
        sources = [str(source) for source in rule.sources]
        for suffix, group in _by_family(sources):
            rules.append(
                IngressRule(rule.name + suffix, purpose, rule.protocol, tuple(ranges), group)
            )
    if not any(rule.purpose == "tftp" for rule in rules):
        problems.append(
            f"daemon config security.network.firewall.rules: no allow rule covers udp port "
            f"{daemon.tftp.port}; add one with the client networks (e.g. 10.0.0.0/8)"
        )
    admin = [str(cidr) for cidr in stack.admin_cidrs]
    for suffix, group in _by_family(admin):
        ssh, api = (SSH_PORT, SSH_PORT), (daemon.api.port, daemon.api.port)
        rules.append(IngressRule("ssh-admin" + suffix, "ssh", "tcp", (ssh,), group))
        rules.append(IngressRule("api-admin" + suffix, "api", "tcp", (api,), group))
    rules.append(IngressRule("etcd-nodes", "etcd", "tcp", (ETCD_PORTS,), from_nodes=True))
    return tuple(rules), problems


def _world_problems(
    index: int, rule: FirewallRule, ranges: list[PortRange], purpose: Purpose, daemon: Config
) -> list[str]:
    if purpose != "api" or not any(source.prefixlen == 0 for source in rule.sources):
        return []
    return [
        f"daemon config security.network.firewall.rules[{index}] ({rule.name}): opens the API "
        f"port {daemon.api.port} to everyone; the stacks allow the API only from admin networks"
    ]


# --- error reporting ---------------------------------------------------------------------------


def _location(loc: Iterable[str | int]) -> str:
    text = "site"
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] = StackConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            message = "unknown key"
            if allowed:
                message += f"; allowed keys here: {', '.join(allowed)}"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif isinstance(cause, ValueError):
            message = str(cause)
        else:
            message = error["msg"]
        value = error.get("input")
        if error["type"] not in ("missing", "extra_forbidden") and isinstance(
            value, str | int | float | bool
        ):
            message += f" (got {json.dumps(value)})"
        problems.append(f"{_location(loc)}: {message}")
    return problems
