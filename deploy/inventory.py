"""A site's inventory: its hosts, their roles, and each node's daemon config, validated whole.

An inventory is a YAML file (or the JSON that `pulumi stack output --json` prints for a site's
stack, optionally merged into a YAML file with `pulumi_outputs:`). It is checked completely
before any host is touched: the inventory's own keys by a pydantic model, and every node's
daemon config by the daemon's model (`simple_tftpd.config.parse_config`). Every problem is
reported at once, each with the key path and the host it belongs to.

Values the site already knows are filled in when a host's config leaves them out: the node id
(the host name), the cluster and site ids (the inventory's `site`), and with clustering on the
member list and etcd endpoints from the hosts that have those roles.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from deploy import DeployError, stack_outputs
from simple_tftpd.config import ApiConfig, Config, ConfigError, Identifier, parse_config

Role = Literal["tftp", "lb", "etcd"]
_HOST_NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
_DNS_RE = re.compile(
    r"(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*"
)


class InventoryError(DeployError):
    """The inventory is unusable; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: invalid inventory\n" + "\n".join(f"  {p}" for p in problems))
        self.source = source
        self.problems = problems


def _check_host_name(value: str) -> str:
    if not _HOST_NAME_RE.fullmatch(value):
        raise ValueError("must be 1-63 characters of lowercase letters, digits, '.' or '-'")
    return value


def _check_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if _DNS_RE.fullmatch(value):
            return value
    raise ValueError("must be an IP address or a DNS name")


def _check_abs_path(value: str) -> str:
    if not value.startswith("/") or "\x00" in value or "//" in value or value != value.strip():
        raise ValueError('must be an absolute path such as "/opt/simple-tftpd"')
    return value.rstrip("/") or "/"


HostName = Annotated[str, AfterValidator(_check_host_name)]
Address = Annotated[str, AfterValidator(_check_address)]
AbsPath = Annotated[str, AfterValidator(_check_abs_path)]
Port = Annotated[int, Field(ge=1, le=65535)]
UnitName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshSettings(_Model):
    user: str = Field(default="root", min_length=1)
    port: Port = 22
    identity_file: str | None = None
    # A known_hosts file to trust instead of ~/.ssh/known_hosts.
    known_hosts: str | None = None
    # "reject": unknown host keys stop the task (safe default); "accept-new": trust on first
    # use for fresh cloud hosts, without writing the key anywhere.
    host_key_policy: Literal["reject", "accept-new"] = "reject"
    connect_timeout: float = Field(default=10, gt=0, le=300)


class SshOverride(_Model):
    user: str | None = None
    port: Port | None = None
    identity_file: str | None = None


class InstallSettings(_Model):
    prefix: AbsPath = "/opt/simple-tftpd"
    config_dir: AbsPath = "/etc/simple-tftpd"
    service: UnitName = "simple-tftpd"
    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "simple-tftpd"
    # At least 2: the running release and the one a rollback returns to.
    keep_releases: int = Field(default=3, ge=2, le=20)
    python: str = "python3"


class ReleaseTarget(_Model):
    """The hosts' Python, for choosing binary wheels (Debian bookworm by default)."""

    python_version: Annotated[str, Field(pattern=r"^3\.[0-9]{1,2}$")] = "3.11"
    glibc: Annotated[str, Field(pattern=r"^2\.[0-9]{1,2}$")] = "2.36"
    arch: Literal["x86_64", "aarch64"] = "x86_64"


class RolloutSettings(_Model):
    # Seconds a restarted node gets to become ready and serve the health file.
    gate_timeout: float = Field(default=30, gt=0, le=600)
    # Relative to tftp.root; deploy writes it with known content, the gate fetches it.
    health_file: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,200}$")] = (
        "simple-tftpd-canary.bin"
    )
    # While a node's daemon is down (deploy, stop, crash) its kernel hands new TFTP requests
    # to the other nodes (deploy/handoff.py), so a load balancer without health checks never
    # sends a client into a dead end. Needs nftables on the nodes.
    handoff: bool = True


class LoadBalancerSettings(_Model):
    # An external load balancer (a cloud one) that `fab verify` fetches through; nginx load
    # balancers are the hosts with role "lb".
    address: Address | None = None
    port: Port = 69
    # Idle seconds before nginx forgets a UDP session; a TFTP transfer is never idle longer
    # than its retransmit timeout times its retries.
    proxy_timeout: int = Field(default=10, ge=1, le=600)
    # After a node answers with ICMP unreachable, nginx skips it for this long.
    fail_timeout: int = Field(default=5, ge=1, le=600)
    worker_processes: int | Literal["auto"] = "auto"


class EtcdSettings(_Model):
    client_port: Port = 2379
    peer_port: Port = 2380
    data_dir: AbsPath = "/var/lib/simple-tftpd-etcd"
    binary: AbsPath = "/usr/bin/etcd"


class PrometheusSettings(_Model):
    job_name: str = "simple-tftpd"
    scrape_interval: Annotated[str, Field(pattern=r"^[0-9]+(ms|s|m|h)$")] = "15s"


Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$")]


class Resources(_Model):
    cpu: Quantity
    memory: Quantity


class KubernetesSettings(_Model):
    namespace: str = "simple-tftpd"
    image: str = "simple-tftpd:latest"
    replicas: int = Field(default=3, ge=1)
    min_replicas: int = Field(default=3, ge=1)
    max_replicas: int = Field(default=20, ge=1)
    cpu_target: int = Field(default=70, ge=1, le=100)
    memory_target: int = Field(default=80, ge=1, le=100)
    # From docs/benchmarks.md: two workers take about 60-75 MiB PSS under a 200-client storm,
    # plus each worker's hot-file cache (performance.cache.max_size_mb). 512Mi holds that with
    # room; the limits leave bursts and cluster blob transfers room. Override per site.
    requests: Resources = Resources(cpu="500m", memory="512Mi")
    limits: Resources = Resources(cpu="2", memory="2Gi")


class HostEntry(_Model):
    name: HostName
    # Optional only for hosts that a pulumi_outputs file supplies.
    address: Address | None = None
    roles: list[Role] = Field(default=["tftp"], min_length=1)
    ssh: SshOverride | None = None
    # Deep-merged over the site-wide `config` for this host.
    config: dict[str, Any] = {}


class InventoryDocument(_Model):
    site: Identifier
    pulumi_outputs: str | None = None
    ssh: SshSettings = SshSettings()
    install: InstallSettings = InstallSettings()
    release: ReleaseTarget = ReleaseTarget()
    rollout: RolloutSettings = RolloutSettings()
    load_balancer: LoadBalancerSettings = LoadBalancerSettings()
    etcd: EtcdSettings = EtcdSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    # The daemon config (the schema of docs/configuration.md) shared by every node.
    config: dict[str, Any] = {}
    hosts: list[HostEntry] = []


@dataclass(frozen=True)
class Node:
    """One host of the site, with its daemon config resolved and validated."""

    name: str
    address: str
    roles: frozenset[str]
    ssh: SshSettings
    config: Config

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class Site:
    site_id: str
    source: Path
    settings: InventoryDocument
    nodes: tuple[Node, ...]

    @property
    def tftp_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.has("tftp")]

    @property
    def lb_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.has("lb")]

    @property
    def etcd_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.has("etcd")]

    @property
    def clustering(self) -> bool:
        return any(node.config.clustering.enabled for node in self.tftp_nodes)

    @property
    def load_balancer_address(self) -> str | None:
        """Where clients reach the site: an nginx host of the site, else the external LB."""
        if self.lb_nodes:
            return self.lb_nodes[0].address
        return self.settings.load_balancer.address

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(node.name for node in self.nodes)
        raise DeployError(f"{self.source}: no host named {name!r} (hosts: {known})")

    def select(self, names: Iterable[str] | None) -> list[Node]:
        """The named hosts in inventory order, or all of them for None."""
        if names is None:
            return list(self.nodes)
        wanted = {self.node(name).name for name in names}
        return [node for node in self.nodes if node.name in wanted]


# --- loading -------------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """SafeLoader that refuses duplicate keys: PyYAML keeps the last one silently."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            mark = key_node.start_mark
            raise _DuplicateKey(f'duplicate key "{key}" at line {mark.line + 1}')
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f'duplicate key "{key}"')
        result[key] = value
    return result


def _read_data(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InventoryError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(str(path), [f"cannot read: {exc}"]) from None
    try:
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=_reject_duplicates)
        return yaml.load(text, Loader=_StrictLoader)
    except json.JSONDecodeError as exc:
        problem = f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        raise InventoryError(str(path), [problem]) from None
    except yaml.YAMLError as exc:
        raise InventoryError(str(path), [f"invalid YAML: {exc}"]) from None
    except _DuplicateKey as exc:
        raise InventoryError(str(path), [str(exc)]) from None


def from_pulumi_outputs(
    outputs: Mapping[str, Any], source: str, hosts: Sequence[str] | None = None
) -> dict[str, Any]:
    """Map the outputs of a site's stack (`pulumi stack output --json`) to inventory keys,
    running its node_list_command unless `hosts` names the nodes (deploy/stack_outputs.py)."""
    try:
        return stack_outputs.inventory_document(outputs, hosts=hosts)
    except stack_outputs.StackOutputError as exc:
        raise InventoryError(source, exc.problems) from None


def _merge_pulumi(document: dict[str, Any], outputs_doc: dict[str, Any]) -> dict[str, Any]:
    """Hosts from the stack first; YAML host entries of the same name override their fields,
    and the YAML's settings and config override the stack's."""
    merged = dict(document)
    merged.setdefault("site", outputs_doc["site"])
    for key in ("load_balancer", "ssh", "release", "config"):
        if key in outputs_doc:
            merged[key] = deep_merge(outputs_doc[key], merged.get(key) or {})
    overrides = {h.get("name"): h for h in merged.get("hosts") or [] if isinstance(h, dict)}
    hosts = []
    for host in outputs_doc["hosts"]:
        hosts.append({**host, **overrides.pop(host["name"], {})})
    hosts += list(overrides.values())
    merged["hosts"] = hosts
    return merged


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_loc(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validation_problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        where = _format_loc(error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        value = error.get("input")
        if error["type"] not in ("missing", "extra_forbidden") and isinstance(
            value, str | int | float | bool
        ):
            message += f" (got {json.dumps(value)})"
        problems.append(f"{where}: {message}")
    return problems


def load_inventory(path: Path | str, *, hosts: Sequence[str] | None = None) -> Site:
    """Read, merge and validate an inventory; raise InventoryError listing every problem.

    `hosts` (addresses, `fab deploy --hosts`) names the nodes of stack outputs instead of
    their node_list_command."""
    path = Path(path)
    data = _read_data(path)
    if stack_outputs.is_stack_outputs(data):
        assert isinstance(data, dict)
        data = from_pulumi_outputs(data, str(path), hosts)
    elif isinstance(data, dict) and isinstance(data.get("pulumi_outputs"), str):
        outputs_path = path.parent / data["pulumi_outputs"]
        outputs = _read_data(outputs_path)
        if not isinstance(outputs, dict):
            raise InventoryError(str(outputs_path), ["expected a JSON object of stack outputs"])
        data = _merge_pulumi(data, from_pulumi_outputs(outputs, str(outputs_path), hosts))
    elif hosts:
        raise InventoryError(
            str(path), ["--hosts: only for stack outputs; list the hosts in the inventory"]
        )
    if not isinstance(data, dict):
        raise InventoryError(str(path), ["expected a mapping with keys site, hosts, config, ..."])
    try:
        document = InventoryDocument.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(str(path), _validation_problems(exc)) from None
    return resolve(document, path)


def resolve(document: InventoryDocument, source: Path) -> Site:
    """Check the hosts against each other and build every node's validated config."""
    problems: list[str] = []
    hosts = document.hosts
    if not any("tftp" in host.roles for host in hosts):
        problems.append('hosts: no host has the role "tftp"; a site needs at least one node')
    seen_names: set[str] = set()
    seen_addresses: dict[str, str] = {}
    for host in hosts:
        where = f"hosts[{host.name}]"
        if host.name in seen_names:
            problems.append(f"{where}: duplicate host name")
        seen_names.add(host.name)
        if host.address is None:
            problems.append(f"{where}.address: required key is missing")
        elif host.address in seen_addresses:
            problems.append(
                f"{where}.address: {host.address} is already used by {seen_addresses[host.address]}"
            )
        else:
            seen_addresses[host.address] = host.name
        if len(set(host.roles)) != len(host.roles):
            problems.append(f"{where}.roles: a role is listed twice")
        if host.config and "tftp" not in host.roles:
            problems.append(f'{where}.config: only hosts with the role "tftp" run the daemon')
    if problems:
        raise InventoryError(str(source), problems)

    raw_configs = {
        host.name: deep_merge(document.config, host.config)
        for host in hosts
        if "tftp" in host.roles
    }
    configs = _node_configs(document, raw_configs, problems)
    behind_lb = any("lb" in host.roles for host in hosts) or document.load_balancer.address
    for host in hosts:
        config = configs.get(host.name)
        if config is None:
            continue
        if behind_lb and not config.tftp.single_port:
            problems.append(
                f"hosts[{host.name}].config.tftp.single_port: must be true behind the load "
                "balancer (an L4 load balancer drops replies sent from a fresh port)"
            )
        if "lb" in host.roles and config.tftp.port == document.load_balancer.port:
            problems.append(
                f"hosts[{host.name}].roles: lb and tftp on one host both need UDP port "
                f"{config.tftp.port}"
            )
    if problems:
        raise InventoryError(str(source), problems)

    nodes = []
    for host in hosts:
        assert host.address is not None
        override = host.ssh or SshOverride()
        ssh = document.ssh.model_copy(
            update={k: v for k, v in override.model_dump().items() if v is not None}
        )
        nodes.append(
            Node(
                name=host.name,
                address=host.address,
                roles=frozenset(host.roles),
                ssh=ssh,
                config=configs.get(host.name, Config()),
            )
        )
    return Site(document.site, source, document, tuple(nodes))


def _node_configs(
    document: InventoryDocument, raw: dict[str, dict[str, Any]], problems: list[str]
) -> dict[str, Config]:
    """Fill in what the site knows, then validate each node's config with the daemon's model."""
    addresses = {host.name: host.address or "" for host in document.hosts}
    etcd_hosts = [host for host in document.hosts if "etcd" in host.roles]
    default_api_port = ApiConfig.model_fields["port"].default
    endpoints = {}
    for name, data in raw.items():
        api = data.get("api")
        port = api.get("port", default_api_port) if isinstance(api, dict) else default_api_port
        endpoints[name] = f"{_url_host(addresses[name])}:{port}"
    members = list(endpoints.values())
    configs: dict[str, Config] = {}
    for name, data in raw.items():
        node = data.setdefault("node", {})
        node.setdefault("node_id", name)
        node.setdefault("cluster_id", document.site)
        data.setdefault("multi_site", {}).setdefault("site_id", document.site)
        clustering = data.get("clustering")
        if isinstance(clustering, dict) and clustering.get("enabled"):
            clustering.setdefault("nodes", members)
            # Where the other nodes reach this one's API (its bind address may be 0.0.0.0).
            clustering.setdefault("advertise", endpoints[name])
            if etcd_hosts:
                # The site's etcd speaks TLS exactly when its nodes do (deploy.certs).
                scheme = "https" if _tls_enabled(data) else "http"
                port = document.etcd.client_port
                clustering.setdefault(
                    "etcd_endpoints", [f"{scheme}://{host.address}:{port}" for host in etcd_hosts]
                )
        try:
            configs[name] = parse_config(data, source=f"hosts[{name}].config")
        except ConfigError as exc:
            problems += [f"hosts[{name}].config.{problem}" for problem in exc.problems]
    clustered = {c.security.tls.enabled for c in configs.values() if c.clustering.enabled}
    if etcd_hosts and len(clustered) > 1:
        problems.append(
            "config.security.tls.enabled: the clustered nodes disagree; the site's etcd speaks "
            "TLS to all of them or to none"
        )
    return configs


def _tls_enabled(data: dict[str, Any]) -> bool:
    security = data.get("security")
    tls = security.get("tls") if isinstance(security, dict) else None
    return isinstance(tls, dict) and tls.get("enabled") is True


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
