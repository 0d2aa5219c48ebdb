"""Render every file a site needs from `templates/`, and check each one before it is used.

Jinja runs with StrictUndefined, so a template that names something the context lacks fails
here instead of writing an empty value to a host. The daemon config is rendered from the
validated model and parsed back with the daemon's own model; structured outputs (YAML) are
parsed back too. Everything a template needs comes from the config model and the inventory:
no port, path or limit is re-declared here.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import yaml

from deploy import TEMPLATES_DIR, DeployError
from deploy.inventory import InstallSettings, Node, Site, deep_merge
from simple_tftpd.config import Config, ConfigError, parse_config

# Seconds systemd waits beyond tftp.drain_timeout before it kills a stopping daemon.
STOP_MARGIN = 15


class RenderError(DeployError):
    """A template failed to render, or rendered something invalid."""


@dataclass(frozen=True)
class RenderedFile:
    """A file for one host: where it goes, what it holds, and who may read it."""

    path: str
    content: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class EtcdTlsPaths:
    """Where an etcd member's TLS files live: the context `etcd_tls` of etcd-tls.env.j2."""

    ca: str
    cert: str
    key: str
    crl: str


@dataclass(frozen=True)
class HostPaths:
    """Where a node's files live on the host (all derived from the inventory's install)."""

    install: InstallSettings

    @property
    def current(self) -> str:
        return f"{self.install.prefix}/current"

    @property
    def releases(self) -> str:
        return f"{self.install.prefix}/releases"

    @property
    def history(self) -> str:
        return f"{self.install.prefix}/history"

    @property
    def handoff(self) -> str:
        # Outside the releases: a broken release must not break the handoff.
        return f"{self.install.prefix}/handoff.py"

    @property
    def binary(self) -> str:
        return f"{self.current}/venv/bin/simple-tftpd"

    @property
    def config(self) -> str:
        return f"{self.install.config_dir}/config.json"

    @property
    def unit(self) -> str:
        return f"/etc/systemd/system/{self.install.service}.service"

    @property
    def state_dir(self) -> str:
        return f"/var/lib/{self.install.service}"

    @property
    def etcd_unit(self) -> str:
        return f"/etc/systemd/system/{self.install.service}-etcd.service"

    @property
    def etcd_env(self) -> str:
        return f"{self.install.config_dir}/etcd.env"

    @property
    def etcd_tls_env(self) -> str:
        return f"{self.install.config_dir}/etcd-tls.env"

    @property
    def etcd_tls(self) -> EtcdTlsPaths:
        # Not under config_dir: that is 0750 root:<daemon user>, which etcd cannot enter.
        base = f"/etc/{self.install.service}-etcd/tls"
        return EtcdTlsPaths(
            f"{base}/ca.pem", f"{base}/member.pem", f"{base}/member.key", f"{base}/crl.pem"
        )

    def absolute(self, path: object) -> str:
        """A config path as the daemon sees it: relative paths are relative to the state
        dir, its working directory."""
        pure = PurePosixPath(str(path))
        return str(pure if pure.is_absolute() else PurePosixPath(self.state_dir) / pure)

    def content_root(self, config: Config) -> str:
        return self.absolute(config.tftp.root)

    def writable(self, config: Config) -> list[str]:
        """What the daemon writes outside its state dir: the content root when uploads or
        replication write there, and the cluster's blob store."""
        paths = []
        if config.tftp.write.enabled or config.clustering.enabled:
            paths.append(self.content_root(config))
        if config.clustering.enabled:
            paths.append(self.absolute(config.clustering.state_dir))
        inside = self.state_dir + "/"
        return [path for path in dict.fromkeys(paths) if not path.startswith(inside)]


def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # Jinja's own tojson escapes <, > and & for HTML, which would change regexes in the config.
    env.filters["json"] = lambda value, indent=2: json.dumps(value, indent=indent)
    env.filters["yaml_str"] = lambda value: json.dumps(str(value))
    return env


def _render(env: jinja2.Environment, name: str, **context: Any) -> str:
    try:
        return env.get_template(name).render(**context)
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {name}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {name}: {exc}") from None


def _local(address: str) -> str:
    """The address a node uses to reach its own listener bound to `address`."""
    if address == "0.0.0.0":
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address


def local_api_url(config: Config) -> str:
    scheme = "https" if config.security.tls.enabled else "http"
    return f"{scheme}://{_url_host(_local(config.api.bind))}:{config.api.port}"


@dataclass(frozen=True)
class Monitoring:
    """Where a node answers health, readiness and Prometheus metrics, and what a prober must
    bring. The one place that decides it (from the daemon's config model) for the deploy
    gate, the handoff, Prometheus, Kubernetes probes and the testinfra suite."""

    bind: str
    port: int
    https: bool
    # The plain listener of api.metrics_port (no TLS, no identities), not the API itself.
    separate: bool
    # The TLS handshake needs a client certificate (security.tls.require_client_cert).
    client_cert: bool
    # Metrics need no identity (health and readiness never do).
    open_metrics: bool

    @property
    def scheme(self) -> str:
        return "https" if self.https else "http"

    def url(self, host: str) -> str:
        return f"{self.scheme}://{_url_host(host)}:{self.port}"

    @property
    def local_url(self) -> str:
        """How the node itself reaches it."""
        return self.url(_local(self.bind))


def monitoring(config: Config) -> Monitoring | None:
    """The plain metrics/health listener (`api.metrics_port`) when configured, else the API
    (https with security.tls); None when the API is off."""
    api = config.api
    if not api.enabled:
        return None
    if api.metrics_port is not None:
        bind = api.metrics_bind or api.bind
        return Monitoring(bind, api.metrics_port, False, True, False, True)
    tls, access = config.security.tls, config.security.access
    anonymous = access.anonymous_read if access.anonymous_read is not None else not tls.enabled
    client_cert = tls.enabled and tls.require_client_cert
    return Monitoring(api.bind, api.port, tls.enabled, False, client_cert, anonymous)


def local_tls_args(config: Config, paths: HostPaths) -> list[str]:
    """`--ca/--cert/--key` for the probe and the handoff (both run as root on the node) when
    the monitoring endpoint is https: they show the node's own certificate, which passes a
    handshake that requires one (health and readiness need no role)."""
    spot = monitoring(config)
    tls = config.security.tls
    if spot is None or not spot.https or not (tls.ca_file and tls.cert_file and tls.key_file):
        return []
    return [
        "--ca",
        paths.absolute(tls.ca_file),
        "--cert",
        paths.absolute(tls.cert_file),
        "--key",
        paths.absolute(tls.key_file),
    ]


def etcd_uses_tls(site: Site) -> bool:
    """etcd speaks TLS (peers and clients) exactly when the site's clustered daemons do: they
    reach it with the certificate of their `security.tls` (deploy.inventory makes their
    endpoints https:// then, and refuses a site whose clustered nodes disagree)."""
    return site.clustering and any(
        node.config.security.tls.enabled
        for node in site.tftp_nodes
        if node.config.clustering.enabled
    )


def local_tftp_address(config: Config) -> str:
    return _local(config.tftp.bind)


def stop_timeout(config: Config) -> int:
    return math.ceil(config.tftp.drain_timeout) + STOP_MARGIN


def handoff_peers(site: Site, node: Node) -> list[str]:
    """The nodes this one hands new requests to while its daemon is down: every other node
    on the same TFTP port with an IPv4 address (nftables DNAT needs addresses, not names)."""
    if not site.settings.rollout.handoff:
        return []
    peers = []
    for other in site.tftp_nodes:
        if other.name == node.name or other.config.tftp.port != node.config.tftp.port:
            continue
        try:
            peers.append(str(ipaddress.IPv4Address(other.address)))
        except ValueError:
            continue
    return peers


def render_config(node: Node, env: jinja2.Environment | None = None) -> str:
    env = env or environment()
    text = _render(env, "simple-tftpd/config.json.j2", config=node.config.model_dump(mode="json"))
    check_config_text(text, node.config, f"{node.name}: rendered config")
    return text


def check_config_text(text: str, expected: Config | None, what: str) -> Config:
    """Parse rendered config with the daemon's model; it must mean what the model meant."""
    try:
        config = parse_config(json.loads(text), source=what)
    except json.JSONDecodeError as exc:
        raise RenderError(f"{what}: not valid JSON ({exc})") from None
    except ConfigError as exc:
        raise RenderError(f"{what}: rejected by the daemon's config model:\n{exc}") from None
    if expected is not None and config != expected:
        raise RenderError(f"{what}: does not match the validated config (template bug)")
    return config


def render_host(
    site: Site, node: Node, env: jinja2.Environment | None = None
) -> dict[str, RenderedFile]:
    """Every file `node` needs, keyed by what it is: config, unit, etcd_env, etcd_unit, nginx."""
    env = env or environment()
    install = site.settings.install
    paths = HostPaths(install)
    files: dict[str, RenderedFile] = {}
    if node.has("tftp"):
        config = node.config
        files["config"] = RenderedFile(
            paths.config, render_config(node, env), 0o640, "root", install.user
        )
        files["unit"] = RenderedFile(
            paths.unit,
            _render(
                env,
                "systemd/simple-tftpd.service.j2",
                site=site.site_id,
                node=node,
                install=install,
                paths=paths,
                writable=paths.writable(config),
                stop_timeout=stop_timeout(config),
                # Every session holds a socket in standard mode; leave room for the API.
                nofile=config.performance.connection_pool.max_connections + 1024,
                etcd_local=node.has("etcd") and config.clustering.enabled,
                python=install.python,
                handoff_peers=",".join(handoff_peers(site, node)),
                api_url=_monitoring_url(config),
                handoff_tls="".join(f" {arg}" for arg in local_tls_args(config, paths)),
                ready_timeout=site.settings.rollout.gate_timeout,
            ),
        )
        _check_unit(files["unit"].content, node.name)
    if node.has("etcd") and site.clustering:
        etcd = site.settings.etcd
        members = site.etcd_nodes
        tls = etcd_uses_tls(site)
        files["etcd_env"] = RenderedFile(
            paths.etcd_env,
            _render(
                env,
                "etcd/etcd.env.j2",
                site=site.site_id,
                node=node,
                etcd=etcd,
                members=members,
                etcd_scheme="https" if tls else "http",
            ),
            0o640,
            "root",
            "etcd",
        )
        if tls:
            files["etcd_tls_env"] = RenderedFile(
                paths.etcd_tls_env,
                _render(
                    env,
                    "etcd/etcd-tls.env.j2",
                    site=site.site_id,
                    node=node,
                    etcd_tls=paths.etcd_tls,
                ),
                0o640,
                "root",
                "etcd",
            )
        files["etcd_unit"] = RenderedFile(
            paths.etcd_unit,
            _render(
                env,
                "systemd/simple-tftpd-etcd.service.j2",
                site=site.site_id,
                etcd=etcd,
                paths=paths,
                etcd_tls=tls,
            ),
        )
        _check_unit(files["etcd_unit"].content, node.name)
    if node.has("lb"):
        files["nginx"] = RenderedFile("/etc/nginx/nginx.conf", render_nginx(site, env))
    return files


def _monitoring_url(config: Config) -> str:
    spot = monitoring(config)
    return spot.local_url if spot is not None else ""


def _check_unit(text: str, host: str) -> None:
    sections = {line.strip() for line in text.splitlines() if line.startswith("[")}
    missing = {"[Unit]", "[Service]", "[Install]"} - sections
    if missing or "\nExecStart=" not in text:
        raise RenderError(f"{host}: rendered unit lacks {sorted(missing) or ['ExecStart=']}")


def render_nginx(site: Site, env: jinja2.Environment | None = None) -> str:
    """nginx `stream` config: UDP on the site's port to every node in single-port mode."""
    env = env or environment()
    upstreams = [
        {"name": node.name, "address": node.address, "port": node.config.tftp.port}
        for node in site.tftp_nodes
    ]
    return _render(
        env,
        "nginx/nginx.conf.j2",
        site=site.site_id,
        lb=site.settings.load_balancer,
        upstreams=upstreams,
    )


def render_prometheus(site: Site, env: jinja2.Environment | None = None) -> str:
    env = env or environment()
    targets = []
    for node in site.tftp_nodes:
        spot = monitoring(node.config)
        if spot is None:
            continue
        if spot.https or not spot.open_metrics:
            raise RenderError(
                f"{node.name}: Prometheus scrapes plain HTTP without an identity, and this "
                "node's metrics need TLS or a role; set api.metrics_port (the plain "
                "health and metrics listener)"
            )
        targets.append({"node": node.name, "target": f"{_url_host(node.address)}:{spot.port}"})
    text = _render(
        env,
        "prometheus/scrape.yml.j2",
        site=site.site_id,
        prometheus=site.settings.prometheus,
        targets=targets,
    )
    _load_yaml(text, "prometheus scrape config")
    return text


def kubernetes_config(site: Site) -> Config:
    """The pods' config: the site-wide config with what a Service in front requires."""
    data = deep_merge(
        site.settings.config,
        {
            "node": {"node_id": f"{site.site_id}-k8s", "cluster_id": site.site_id},
            # A Service is an L4 load balancer: replies must come from the listening port.
            "tftp": {"single_port": True},
            # Both listeners on the pod's address, where the kubelet probes.
            "api": {"bind": "0.0.0.0", "metrics_bind": None},
            "multi_site": {"site_id": site.site_id},
        },
    )
    try:
        return parse_config(data, source="kubernetes config")
    except ConfigError as exc:
        raise RenderError(f"kubernetes: config rejected by the daemon's model:\n{exc}") from None


def render_kubernetes(site: Site, env: jinja2.Environment | None = None) -> str:
    env = env or environment()
    config = kubernetes_config(site)
    k8s = site.settings.kubernetes
    if not k8s.min_replicas <= k8s.max_replicas:
        raise RenderError("kubernetes: min_replicas is larger than max_replicas")
    config_dir = site.settings.install.config_dir
    root = PurePosixPath(str(config.tftp.root))
    spot = monitoring(config)
    if spot is not None and spot.client_cert:
        raise RenderError(
            "kubernetes: the API requires client certificates, which the kubelet's probes do "
            "not have; set api.metrics_port (the plain health and metrics listener)"
        )
    tls = config.security.tls
    # The pods' TLS files come from the Secret <name>-tls (keys ca.pem, node.pem, node.key,
    # crl.pem), each mounted at the path the config names.
    tls_files = [
        {"key": key, "path": str(path)}
        for key, path in (
            ("ca.pem", tls.ca_file),
            ("node.pem", tls.cert_file),
            ("node.key", tls.key_file),
            ("crl.pem", tls.crl_file),
        )
        if tls.enabled and path is not None
    ]
    text = _render(
        env,
        "kubernetes/simple-tftpd.yaml.j2",
        site=site.site_id,
        k8s=k8s,
        config=config,
        config_json=json.dumps(config.model_dump(mode="json"), indent=2),
        config_dir=config_dir,
        content_root=str(
            root if root.is_absolute() else PurePosixPath("/var/lib/simple-tftpd") / root
        ),
        grace_seconds=math.ceil(config.tftp.drain_timeout) + 5,
        health=spot,
        tls_files=tls_files,
    )
    documents = [doc for doc in _load_yaml_all(text, "kubernetes manifests") if doc]
    kinds = [doc.get("kind") for doc in documents]
    if kinds != ["ConfigMap", "Deployment", "HorizontalPodAutoscaler"]:
        raise RenderError(f"kubernetes manifests: unexpected kinds {kinds}")
    check_config_text(documents[0]["data"]["config.json"], config, "kubernetes ConfigMap")
    return text


def _load_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RenderError(f"{what}: rendered invalid YAML: {exc}") from None


def _load_yaml_all(text: str, what: str) -> list[Any]:
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise RenderError(f"{what}: rendered invalid YAML: {exc}") from None


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def render_site(site: Site, out_dir: Path) -> list[Path]:
    """`fab render`: write every host's files and the site-wide ones under out_dir/site."""
    env = environment()
    base = out_dir / site.site_id
    written: list[Path] = []

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    for node in site.nodes:
        for rendered in render_host(site, node, env).values():
            write(base / node.name / rendered.path.lstrip("/"), rendered.content)
    write(base / "prometheus" / "simple-tftpd.yml", render_prometheus(site, env))
    # Pods share one rendered config, so they cannot carry the per-node identity a site
    # cluster needs (node_id, advertise): a clustered site runs on its hosts, not on Kubernetes.
    if not site.clustering:
        write(base / "kubernetes" / "simple-tftpd.yaml", render_kubernetes(site, env))
    return written
