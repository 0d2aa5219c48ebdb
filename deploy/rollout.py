"""Health-gated rolling deploy and rollback of a site, one host at a time.

On a host, releases live side by side and a symlink says which one runs:

    /opt/simple-tftpd/releases/<release-id>/{venv,wheels,probe.py,release.json,.complete}
    /opt/simple-tftpd/current -> releases/<release-id>
    /opt/simple-tftpd/history    activated release ids, newest last (what rollback walks back)
    /opt/simple-tftpd/handoff.py the handoff helper the unit runs (see deploy/handoff.py)

`deploy_site` first installs the release on every node in parallel, which changes nothing that
serves; a failure there stops the deploy before any restart. Then, node by node: drain (the
node's kernel hands new TFTP requests to its peers while running transfers finish), stop,
switch config, unit and release, start, and pass the health gate (unit active,
`/api/v1/ready`, a real TFTP fetch of the health file with the right sha256). A node that
fails the gate goes back to its previous release and config, and the deploy stops there,
leaving the other nodes serving.

With TLS, each host's PKI files (deploy.certs.site_files) are copied atomically, keys first:
etcd's with the members, the daemon's in its node's step before the daemon (re)starts; a node
whose only change is renewed files is reloaded (SIGHUP) instead of restarted. The gate and the
drain probe where deploy.render.monitoring says: the plain metrics listener when configured.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from deploy import DeployError
from deploy.certs import TlsFile
from deploy.inventory import Node, Site
from deploy.release import Release
from deploy.remote import Remote, RemoteError, put, q, read_facts, sh, write_file
from deploy.render import (
    HostPaths,
    RenderedFile,
    etcd_uses_tls,
    handoff_peers,
    local_api_url,
    local_tftp_address,
    local_tls_args,
    monitoring,
    stop_timeout,
)

Log = Callable[[str], None]
HANDOFF = Path(__file__).with_name("handoff.py")
INSTALL_TIMEOUT = 600
# The start of the on-host scripts that talk to etcd (the hosts have python3, not etcdctl):
# with TLS, argv[2:5] are the member's CA, certificate and key (etcd wants a client
# certificate); `context` is None without.
ETCD_CLIENT_CONTEXT = """
import json, ssl, sys, time, urllib.request
context = None
if len(sys.argv) > 2:
    context = ssl.create_default_context(cafile=sys.argv[2])
    context.load_cert_chain(sys.argv[3], sys.argv[4])
"""
# Polls an etcd member's /health (argv[1]) for up to 90 s.
ETCD_HEALTH = (
    ETCD_CLIENT_CONTEXT
    + """
deadline = time.time() + 90
while time.time() < deadline:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=3, context=context) as response:
            if json.load(response).get("health") == "true":
                sys.exit(0)
    except Exception:
        pass
    time.sleep(1)
sys.exit(1)
"""
)
CANARY_SIZE = 70_001  # several blocks at any block size, and not a multiple of any


def write_rendered(c: Remote, rendered: RenderedFile) -> None:
    """A rendered file onto the host, atomically, with its owner and mode."""
    write_file(
        c,
        rendered.path,
        rendered.content,
        mode=rendered.mode,
        owner=rendered.owner,
        group=rendered.group,
    )


def canary_bytes() -> bytes:
    """The health file's content: deterministic, so the gate knows its sha256 in advance."""
    out = bytearray()
    counter = 0
    while len(out) < CANARY_SIZE:
        out += hashlib.sha256(b"simple-tftpd canary %d" % counter).digest()
        counter += 1
    return bytes(out[:CANARY_SIZE])


CANARY_SHA256 = hashlib.sha256(canary_bytes()).hexdigest()


class GateFailed(DeployError):
    """A node failed its health gate; `rolled_back_to` is the release it runs again, if any."""

    def __init__(self, host: str, detail: str, rolled_back_to: str | None = None) -> None:
        if rolled_back_to:
            outcome = f"rolled back to {rolled_back_to} and serving"
        else:
            outcome = "no earlier release to return to: the daemon is stopped on this host"
        super().__init__(f"{host}: health gate failed: {detail}\n{host}: {outcome}")
        self.host = host
        self.detail = detail
        self.rolled_back_to = rolled_back_to


@dataclass(frozen=True)
class HostState:
    current: str
    config_sha: str
    unit_sha: str
    active: str
    enabled: str
    history: list[str]
    releases: list[str]

    @property
    def running(self) -> bool:
        return self.active in ("active", "activating", "reloading", "deactivating")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _file_sha(path: str, key: str) -> str:
    return f"if [ -f {q(path)} ]; then echo {key}=$(sha256sum < {q(path)} | cut -c1-64); fi"


def host_state(c: Remote, site: Site) -> HostState:
    install = site.settings.install
    paths = HostPaths(install)
    service = q(install.service)
    script = "; ".join(
        [
            f'echo current=$(basename "$(readlink {q(paths.current)} 2>/dev/null)")',
            _file_sha(paths.config, "config"),
            _file_sha(paths.unit, "unit"),
            f"echo active=$(systemctl is-active {service} 2>/dev/null)",
            f"echo enabled=$(systemctl is-enabled {service} 2>/dev/null)",
            f"echo history=$(tail -n 100 {q(paths.history)} 2>/dev/null | tr '\\n' ' ')",
            f"echo releases=$(ls {q(paths.releases)} 2>/dev/null | tr '\\n' ' ')",
            "true",
        ]
    )
    facts = read_facts(c, script, "reading the host's state")
    current = facts.get("current", "")
    return HostState(
        current="" if current in ("", ".", "current") else current,
        config_sha=facts.get("config", ""),
        unit_sha=facts.get("unit", ""),
        active=facts.get("active", ""),
        enabled=facts.get("enabled", ""),
        history=facts.get("history", "").split(),
        releases=facts.get("releases", "").split(),
    )


# --- prepare: install a release beside the running one --------------------------------------------


def prepare_node(c: Remote, site: Site, node: Node, release: Release, log: Log) -> None:
    """Install `release` on `node` and make sure its user, dirs and health file exist.

    Touches nothing that serves: the running release and its config stay as they are."""
    install = site.settings.install
    paths = HostPaths(install)
    user = q(install.user)
    release_dir = f"{paths.releases}/{release.release_id}"
    root = paths.content_root(node.config)
    health = f"{root}/{site.settings.rollout.health_file}"
    facts = read_facts(
        c,
        "; ".join(
            [
                f"getent group {user} >/dev/null || groupadd --system {user}",
                f"id -u {user} >/dev/null 2>&1 || useradd --system --gid {user} "
                f"--home-dir {q(paths.state_dir)} --no-create-home "
                f"--shell /usr/sbin/nologin {user}",
                f"install -d -m 0750 -o root -g {user} {q(install.config_dir)}",
                f"install -d -m 0755 {q(install.prefix)} {q(paths.releases)}",
                f"test -f {q(release_dir)}/.complete && echo installed=yes",
                _file_sha(health, "health"),
                _file_sha(paths.handoff, "handoff"),
                "true",
            ]
        ),
        "preparing user and directories",
    )
    if facts.get("installed") == "yes":
        log(f"{node.name}: release {release.release_id} already installed")
    else:
        _install_release(c, site, node, release, release_dir)
        log(f"{node.name}: installed release {release.release_id}")
    # ReadWritePaths= in the unit needs these to exist, owned by the daemon's user.
    writable = paths.writable(node.config)
    owner = install.user if root in writable else "root"
    commands = [
        # The state dir as the unit's StateDirectory= makes it, before anything (TLS files at
        # relative paths) goes into it: systemd chowns the whole tree to the daemon's user at
        # start when the top directory is not owned by it, which would hand the root-owned
        # certificate, CA and CRL to the daemon (and make every later deploy rewrite them).
        f"install -d -m 0750 -o {user} -g {user} {q(paths.state_dir)}",
        f"install -d -m 0755 -o {q(owner)} -g {user} {q(root)}",
    ]
    commands += [f"install -d -m 0750 -o {user} -g {user} {q(path)}" for path in writable]
    sh(c, " && ".join(commands), "creating the content root")
    if facts.get("health") != CANARY_SHA256:
        write_file(c, health, canary_bytes(), mode=0o644)
    if facts.get("handoff") != hashlib.sha256(HANDOFF.read_bytes()).hexdigest():
        write_file(c, paths.handoff, HANDOFF.read_bytes(), mode=0o755)


def _install_release(c: Remote, site: Site, node: Node, release: Release, release_dir: str) -> None:
    staged = put(c, release.archive, f"release {release.release_id}")
    check = sh(
        c,
        f"echo {release.sha256}'  '{q(staged)} | sha256sum --check --status",
        "checking the uploaded release",
        check=False,
    )
    if check.failed:
        sh(c, f"rm -f {q(staged)}", "removing a corrupt upload", check=False)
        raise RemoteError(
            node.name, f"upload of release {release.release_id}", "checksum mismatch on the host"
        )
    venv = f"{release_dir}/venv"
    python = site.settings.install.python
    pip = f"{q(venv)}/bin/pip install --quiet --no-cache-dir --no-index --no-deps"
    script = " && ".join(
        [
            f"rm -rf {q(release_dir)}",  # an earlier attempt that did not complete
            f"mkdir -p {q(release_dir)}",
            f"tar -xf {q(staged)} -C {q(release_dir)}",
            f"rm -f {q(staged)}",
            # The venv is made at its final path: its scripts hard-code that path.
            f"{q(python)} -m venv {q(venv)}",
            f"{pip} --require-hashes --find-links {q(release_dir)}/wheels "
            f"-r {q(release_dir)}/requirements.txt",
            f"{pip} {q(release_dir)}/wheels/{q(release.wheel)}",
            f"{q(venv)}/bin/pip check --no-cache-dir >/dev/null",
            f"touch {q(release_dir)}/.complete",
        ]
    )
    try:
        sh(c, script, f"installing release {release.release_id}", timeout=INSTALL_TIMEOUT)
    except RemoteError as exc:
        hint = ""
        if "ensurepip" in exc.detail or "venv" in exc.detail:
            hint = f" (the host needs {python} with venv support: apt-get install python3-venv)"
        raise RemoteError(node.name, exc.what, exc.detail + hint) from None


def prepare_all(
    connections: Mapping[str, Remote],
    site: Site,
    nodes: Sequence[Node],
    release: Release,
    log: Log,
) -> None:
    """Install the release on every node at once; any failure stops the deploy here, before
    a single node has been restarted."""
    if not nodes:
        return

    def one(node: Node) -> str | None:
        try:
            prepare_node(connections[node.name], site, node, release, log)
        except DeployError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
        failures = [failure for failure in pool.map(one, nodes) if failure]
    if failures:
        raise DeployError(
            "release not installed everywhere; no node was restarted:\n" + "\n".join(failures)
        )


# --- drain, gate, switch ------------------------------------------------------------------------


def _handoff(site: Site, *args: str) -> str:
    paths = HostPaths(site.settings.install)
    return " ".join([q(site.settings.install.python), q(paths.handoff), *map(q, args)])


def drain(c: Remote, site: Site, node: Node, state: HostState, log: Log) -> bool:
    """Hand new requests to the peers, then wait (up to tftp.drain_timeout) until the
    transfers running here have finished. False when there is no peer to hand over to."""
    peers = handoff_peers(site, node)
    if not peers:
        why = "no peer to hand requests to" if site.settings.rollout.handoff else "handoff is off"
        log(f"{node.name}: {why}; only the daemon's own drain applies")
        return False
    port = str(node.config.tftp.port)
    on = _handoff(site, "on", "--port", port, "--peers", ",".join(peers), "--address", node.address)
    sh(c, f"{_handoff(site, 'hold', 'on')} && {on}", "handing new requests to the peers")
    spot = monitoring(node.config)
    if state.active != "active" or not state.current or spot is None:
        return True
    paths = HostPaths(site.settings.install)
    release_dir = f"{paths.releases}/{state.current}"
    probe = f"{q(release_dir)}/venv/bin/python {q(release_dir)}/probe.py sessions "
    if spot.separate:
        # The plain listener serves no status, but metrics without an identity.
        probe += f"--metrics --api {q(spot.local_url)}"
    else:
        # With TLS, /api/v1/status needs a role the node's certificate does not carry: the
        # probe presents the daemon's api.token from the config (without one the count
        # fails and the daemon's own SIGTERM drain covers the transfers).
        probe += f"--api {q(local_api_url(node.config))} --config {q(paths.config)}"
    probe += "".join(f" {q(arg)}" for arg in local_tls_args(node.config, paths))
    deadline = time.monotonic() + node.config.tftp.drain_timeout
    while True:
        result = sh(c, probe, "counting running transfers", check=False, timeout=30)
        try:
            active = int(json.loads(result.stdout or "{}").get("active_sessions", 0))
        except (ValueError, AttributeError):
            active = 0  # no answer: the daemon's SIGTERM drain still covers the transfers
        if active == 0 or time.monotonic() > deadline:
            return True
        time.sleep(0.5)


def undrain(c: Remote, site: Site, serving: bool = True) -> None:
    """End the deploy's hold; end the handoff too if the daemon here serves again (if it
    does not, its requests keep going to the peers)."""
    off = f"{_handoff(site, 'off')}; " if serving else ""
    sh(c, f"{off}{_handoff(site, 'hold', 'off')}; true", "ending the handoff", check=False)


def gate(c: Remote, site: Site, node: Node, release_id: str) -> None:
    """Pass, or raise GateFailed with the probe's verdict and the unit's last log lines."""
    install = site.settings.install
    rollout = site.settings.rollout
    paths = HostPaths(install)
    release_dir = f"{paths.releases}/{release_id}"
    config = node.config
    spot = monitoring(config)
    api = spot.local_url if spot is not None else ""
    tls = "".join(f" {q(arg)}" for arg in local_tls_args(config, paths))
    command = (
        f"{q(release_dir)}/venv/bin/python {q(release_dir)}/probe.py gate"
        f" --unit {q(install.service)} --api {q(api)}{tls}"
        f" --tftp {q(local_tftp_address(config))} --port {config.tftp.port}"
        f" --file {q(rollout.health_file)} --sha256 {CANARY_SHA256}"
        f" --timeout {rollout.gate_timeout:g}"
    )
    result = sh(c, command, "health gate", check=False, timeout=rollout.gate_timeout + 30)
    if result.ok:
        return
    verdict = (result.stdout or result.stderr or f"exit {result.exited}").strip()
    journal = sh(
        c,
        f"journalctl -u {q(install.service)} -n 15 --no-pager -o cat 2>/dev/null; true",
        "reading the journal",
        check=False,
    ).stdout.strip()
    raise GateFailed(
        node.name, f"{verdict}\n  last log lines:\n    " + journal.replace("\n", "\n    ")
    )


def _switch(c: Remote, site: Site, release_id: str) -> None:
    """Point `current` at `release_id` with a rename, which is atomic."""
    paths = HostPaths(site.settings.install)
    link = paths.current
    sh(
        c,
        f"test -f {q(paths.releases)}/{q(release_id)}/.complete"
        f" && ln -sfn releases/{q(release_id)} {q(link)}.new && mv -Tf {q(link)}.new {q(link)}",
        f"switching to release {release_id}",
    )


def _start(c: Remote, site: Site) -> None:
    service = q(site.settings.install.service)
    # A failed start is judged by the gate (with the journal), not reported twice.
    sh(
        c,
        f"systemctl daemon-reload && systemctl enable --quiet {service}"
        f" && systemctl reset-failed {service} 2>/dev/null; systemctl start {service}",
        "starting the daemon",
        check=False,
        timeout=120,
    )


def _stop(c: Remote, site: Site, node: Node) -> None:
    sh(
        c,
        f"systemctl stop {q(site.settings.install.service)}",
        "stopping the daemon",
        timeout=stop_timeout(node.config) + 30,
    )


def _record(c: Remote, site: Site, state: HostState, release_id: str) -> None:
    """Push `release_id` on the history and delete releases beyond `keep_releases`."""
    install = site.settings.install
    paths = HostPaths(install)
    history = list(state.history)
    if not history or history[-1] != release_id:
        history.append(release_id)
    history = history[-50:]
    keep: list[str] = []
    for entry in reversed(history):
        if entry not in keep:
            keep.append(entry)
        if len(keep) == install.keep_releases:
            break
    write_file(c, paths.history, "\n".join(history) + "\n")
    doomed = [r for r in state.releases if r not in keep and r != release_id]
    if doomed:
        targets = " ".join(q(f"{paths.releases}/{r}") for r in doomed)
        sh(c, f"rm -rf -- {targets}", "removing old releases", check=False)


# --- TLS material --------------------------------------------------------------------------------


def install_tls(c: Remote, node: Node, files: Sequence[TlsFile], what: str, log: Log) -> bool:
    """Copy the PKI files that differ (content, mode or owner) to the host, each atomically
    and keys first; True when any was written. One round trip when nothing changed."""
    if not files:
        return False
    checks = [
        f"if [ -f {q(f.path)} ]; then echo f{index}=$(sha256sum < {q(f.path)} | cut -c1-64)"
        f":$(stat -c %a:%U:%G {q(f.path)}); fi"
        for index, f in enumerate(files)
    ]
    facts = read_facts(c, "; ".join([*checks, "true"]), f"reading the {what} TLS files")
    changed = [
        f
        for index, f in enumerate(files)
        if facts.get(f"f{index}")
        != f"{hashlib.sha256(f.content).hexdigest()}:{f.mode:o}:{f.owner}:{f.group}"
    ]
    for f in sorted(changed, key=lambda f: not f.is_key):
        write_file(c, f.path, f.content, mode=f.mode, owner=f.owner, group=f.group)
    if changed:
        log(f"{node.name}: installed {len(changed)} {what} TLS files")
    return bool(changed)


def split_tls(site: Site, files: Sequence[TlsFile]) -> tuple[list[TlsFile], list[TlsFile]]:
    """(the daemon's files, etcd's files) of one host."""
    member = vars(HostPaths(site.settings.install).etcd_tls).values()
    etcd = [f for f in files if f.path in member]
    return [f for f in files if f.path not in member], etcd


def etcd_client_tls_args(site: Site) -> str:
    """Arguments for ETCD_HEALTH and the member listing: the CA, certificate and key of the
    host's etcd member when etcd runs TLS, else none."""
    if not etcd_uses_tls(site):
        return ""
    member = HostPaths(site.settings.install).etcd_tls
    return f" {q(member.ca)} {q(member.cert)} {q(member.key)}"


def _reload(c: Remote, site: Site) -> None:
    """SIGHUP: new certificates for new connections, running transfers untouched."""
    sh(c, f"systemctl reload {q(site.settings.install.service)}", "reloading the daemon")


# --- one node -------------------------------------------------------------------------------------


def roll_node(
    c: Remote,
    site: Site,
    node: Node,
    release: Release,
    files: Mapping[str, RenderedFile],
    log: Log,
    tls: Sequence[TlsFile] = (),
) -> str:
    """Bring one node to `release`, its rendered files and its TLS files; returns what was
    done. New TLS files are in place before the daemon (re)starts; a node that needs nothing
    else only reloads them (SIGHUP, no restart)."""
    state = host_state(c, site)
    tls_changed = install_tls(c, node, split_tls(site, tls)[0], "daemon", log)
    config, unit = files["config"], files["unit"]
    unchanged = (
        state.current == release.release_id
        and state.config_sha == _sha(config.content)
        and state.unit_sha == _sha(unit.content)
        and state.active == "active"
        and state.enabled == "enabled"
    )
    if unchanged:
        try:
            if tls_changed:
                _reload(c, site)
            gate(c, site, node, release.release_id)
            if tls_changed:
                log(f"{node.name}: reloaded its TLS files and healthy ({release.release_id})")
                return "reloaded"
            log(f"{node.name}: unchanged and healthy ({release.release_id})")
            return "unchanged"
        except GateFailed as failure:
            log(f"{node.name}: unchanged but unhealthy, restarting: {failure.detail}")
    previous = state.current or None
    try:
        drain(c, site, node, state, log)
    except DeployError:
        undrain(c, site)  # nothing was stopped: the daemon here still serves
        raise
    try:
        if state.running:
            _stop(c, site, node)
        _activate(c, site, release.release_id, config, unit)
        _start(c, site)
        gate(c, site, node, release.release_id)
    except DeployError as failure:
        detail = failure.detail if isinstance(failure, GateFailed) else str(failure)
        try:
            _roll_back_node(c, site, node, previous, detail, log)
        except GateFailed as rolled:
            undrain(c, site, serving=rolled.rolled_back_to is not None)
            raise
        except DeployError:
            undrain(c, site, serving=False)
            raise
    undrain(c, site)
    _record(c, site, state, release.release_id)
    log(f"{node.name}: now serving {release.release_id}")
    return "upgraded"


def _activate(
    c: Remote, site: Site, release_id: str, config: RenderedFile, unit: RenderedFile
) -> None:
    # Keep what ran before: a failed gate puts it back.
    for path in (config.path, unit.path):
        sh(c, f"if [ -f {q(path)} ]; then cp -p {q(path)} {q(path)}.prev; fi", "saving " + path)
    for rendered in (config, unit):
        write_rendered(c, rendered)
    _switch(c, site, release_id)


def _roll_back_node(
    c: Remote, site: Site, node: Node, previous: str | None, detail: str, log: Log
) -> NoReturn:
    """Put the previous release, config and unit back and gate them; always raises."""
    install = site.settings.install
    paths = HostPaths(install)
    if previous is None:
        sh(
            c,
            f"systemctl stop {q(install.service)}; true",
            "stopping the failed daemon",
            check=False,
        )
        raise GateFailed(node.name, detail)
    log(f"{node.name}: gate failed, rolling back to {previous}")
    try:
        sh(c, f"systemctl stop {q(install.service)}; true", "stopping the failed daemon")
        for path in (paths.config, paths.unit):
            sh(
                c,
                f"if [ -f {q(path)}.prev ]; then mv -f {q(path)}.prev {q(path)}; fi",
                "restoring " + path,
            )
        _switch(c, site, previous)
        _start(c, site)
        gate(c, site, node, previous)
    except DeployError as second:
        raise DeployError(
            f"{node.name}: health gate failed: {detail}\n"
            f"{node.name}: and the rollback to {previous} failed too: {second}\n"
            f"{node.name}: this node is not serving; the others were not touched"
        ) from None
    raise GateFailed(node.name, detail, rolled_back_to=previous)


# --- load balancer and etcd ---------------------------------------------------------------------


def deploy_lb(
    c: Remote,
    node: Node,
    nginx: RenderedFile,
    log: Log,
) -> None:
    """Install the nginx stream config, checked by `nginx -t` before it replaces the old one.

    nginx reloads only when the config changed: a reload moves UDP sessions to new workers,
    which breaks the transfers running through it at that moment."""
    facts = read_facts(
        c,
        f"{_file_sha(nginx.path, 'config')}; echo active=$(systemctl is-active nginx); true",
        "reading the nginx state",
    )
    if facts.get("config") == _sha(nginx.content) and facts.get("active") == "active":
        log(f"{node.name}: load balancer config unchanged")
        return
    staged = put(c, nginx.content.encode(), nginx.path)
    candidate = f"{nginx.path}.new"
    sh(
        c,
        f"install -m 0644 {q(staged)} {q(candidate)}; rm -f {q(staged)};"
        f" nginx -t -q -c {q(candidate)} || {{ rm -f {q(candidate)}; exit 1; }}",
        "checking the nginx config (nginx -t)",
    )
    sh(
        c,
        f"mv -f {q(candidate)} {q(nginx.path)} && systemctl enable --quiet nginx"
        " && systemctl reload-or-restart nginx",
        "reloading nginx",
    )
    log(f"{node.name}: load balancer config installed")


def check_lb(c: Remote, site: Site, via: Node, address: str, attempts: int = 3) -> None:
    """A fetch through the load balancer, run on node `via` (which has the TFTP client)."""
    paths = HostPaths(site.settings.install)
    command = (
        f"{q(paths.current)}/venv/bin/python {q(paths.current)}/probe.py fetch"
        f" --tftp {q(address)} --port {site.settings.load_balancer.port}"
        f" --file {q(site.settings.rollout.health_file)} --sha256 {CANARY_SHA256}"
    )
    result = None
    for _ in range(attempts):
        result = sh(c, command, "fetching through the load balancer", check=False, timeout=60)
        if result.ok:
            return
        time.sleep(1)
    assert result is not None
    raise DeployError(
        f"load balancer {address}: fetch from {via.name} failed: {result.stdout.strip()}"
    )


def deploy_etcd(
    connections: Mapping[str, Remote],
    site: Site,
    files: Mapping[str, Mapping[str, RenderedFile]],
    log: Log,
    tls: Mapping[str, Sequence[TlsFile]] | None = None,
) -> None:
    """Install etcd's files and start its members. A new site's members start together (a
    member waits for its peers' quorum, so one by one would block); on a running site only the
    members whose files changed restart, one at a time, each healthy before the next, so the
    site keeps its quorum. With TLS, each member's certificate, key (readable by etcd only),
    CA and CRL first."""
    etcd = site.settings.etcd
    unit_name = f"{site.settings.install.service}-etcd"
    secure = etcd_uses_tls(site)
    member = HostPaths(site.settings.install).etcd_tls
    keys = ["etcd_env", "etcd_tls_env", "etcd_unit"] if secure else ["etcd_env", "etcd_unit"]
    plan: dict[str, tuple[bool, list[RenderedFile]]] = {}
    for node in site.etcd_nodes:
        if secure:
            etcd_files = split_tls(site, (tls or {}).get(node.name, ()))[1]
            if len(etcd_files) != len(vars(member)):
                raise DeployError(f"{node.name}: etcd runs TLS but its files are missing")
        plan[node.name] = _etcd_state(
            connections[node.name], unit_name, [files[node.name][key] for key in keys]
        )
    bootstrap = not any(active for active, _ in plan.values())
    scheme = "https" if secure else "http"
    tls_args = etcd_client_tls_args(site)

    def wait_healthy(node: Node) -> None:
        url = f"{scheme}://{_url_host(node.address)}:{etcd.client_port}/health"
        sh(
            connections[node.name],
            f"python3 -c {q(ETCD_HEALTH)} {q(url)}{tls_args}",
            f"waiting for etcd member {node.name}",
            timeout=120,
        )

    for node in site.etcd_nodes:
        c = connections[node.name]
        active, stale = plan[node.name]
        renewed = False
        if secure:
            etcd_files = split_tls(site, (tls or {}).get(node.name, ()))[1]
            renewed = install_tls(c, node, etcd_files, "etcd", log)
        for file in stale:
            write_rendered(c, file)
        if active and not stale and not renewed:
            continue
        sh(
            c,
            # Debian's own etcd.service would hold the same ports.
            "systemctl disable --now --quiet etcd.service 2>/dev/null;"
            f" install -d -m 0700 -o etcd -g etcd {q(etcd.data_dir)}"
            f" && systemctl daemon-reload && systemctl enable --quiet {unit_name}"
            f" && systemctl restart --no-block {unit_name}",
            "starting etcd",
        )
        if not bootstrap:
            wait_healthy(node)
            log(f"{node.name}: etcd member restarted, healthy")
    for node in site.etcd_nodes:
        wait_healthy(node)
    log(f"etcd: {len(site.etcd_nodes)} members healthy")


def _etcd_state(
    c: Remote, unit: str, rendered: Sequence[RenderedFile]
) -> tuple[bool, list[RenderedFile]]:
    """(the member runs, its rendered files that differ from the host's); one round trip."""
    checks = [
        f"if [ -f {q(f.path)} ]; then echo f{index}=$(sha256sum < {q(f.path)} | cut -c1-64)"
        f":$(stat -c %a:%U:%G {q(f.path)}); fi"
        for index, f in enumerate(rendered)
    ]
    script = "; ".join([f"echo active=$(systemctl is-active {q(unit)})", *checks, "true"])
    facts = read_facts(c, script, "reading etcd's state")
    stale = [
        f
        for index, f in enumerate(rendered)
        if facts.get(f"f{index}")
        != f"{hashlib.sha256(f.content.encode()).hexdigest()}:{f.mode:o}:{f.owner}:{f.group}"
    ]
    return facts.get("active") == "active", stale


# --- the site -----------------------------------------------------------------------------------


def deploy_site(
    site: Site,
    connections: Mapping[str, Remote],
    release: Release,
    files: Mapping[str, Mapping[str, RenderedFile]],
    log: Log,
    only: Sequence[str] | None = None,
    tls: Mapping[str, Sequence[TlsFile]] | None = None,
) -> dict[str, str]:
    """The whole rollout; returns what happened per host. Raises on the first failed node.

    `tls`: each host's PKI files (deploy.certs.site_files; empty for a site without TLS)."""
    selected = site.select(only)
    tftp = [node for node in selected if node.has("tftp")]
    tls = tls or {}
    outcome: dict[str, str] = {}
    prepare_all(connections, site, tftp, release, log)
    if site.clustering and any(node.has("etcd") for node in selected):
        deploy_etcd(connections, site, files, log, tls)
    for node in tftp:
        outcome[node.name] = roll_node(
            connections[node.name],
            site,
            node,
            release,
            files[node.name],
            log,
            tls.get(node.name, ()),
        )
    lb_nodes = [node for node in selected if node.has("lb")]
    for node in lb_nodes:
        deploy_lb(connections[node.name], node, files[node.name]["nginx"], log)
        outcome[node.name] = "load balancer"
    if lb_nodes and site.tftp_nodes:
        via = site.tftp_nodes[0]
        for node in lb_nodes:
            check_lb(connections[via.name], site, via, node.address)
        log(f"load balancer: serving the health file via {', '.join(n.name for n in lb_nodes)}")
    return outcome


def rollback_site(
    site: Site,
    connections: Mapping[str, Remote],
    log: Log,
    only: Sequence[str] | None = None,
) -> dict[str, str]:
    """`fab rollback`: every node back to the release it ran before the current one.

    Only the release changes; the config stays (to undo a config change, revert the
    inventory and deploy). Gated like a deploy; a node that fails returns to its release."""
    outcome: dict[str, str] = {}
    for node in [n for n in site.select(only) if n.has("tftp")]:
        c = connections[node.name]
        state = host_state(c, site)
        target = _rollback_target(state)
        if target is None:
            raise DeployError(
                f"{node.name}: no earlier release installed to roll back to "
                f"(history: {' '.join(state.history) or 'empty'})"
            )
        drain(c, site, node, state, log)
        try:
            if state.running:
                _stop(c, site, node)
            _switch(c, site, target)
            _start(c, site)
            gate(c, site, node, target)
        except GateFailed as failure:
            log(f"{node.name}: {target} failed its gate, returning to {state.current}")
            try:
                _switch(c, site, state.current)
                sh(c, f"systemctl restart {q(site.settings.install.service)}", "restarting")
                gate(c, site, node, state.current)
            except DeployError:
                undrain(c, site, serving=False)
                raise
            undrain(c, site)
            raise GateFailed(node.name, failure.detail, rolled_back_to=state.current) from None
        undrain(c, site)
        history = list(state.history)
        while history and history[-1] == state.current:
            history.pop()
        if not history or history[-1] != target:
            history.append(target)
        write_file(c, HostPaths(site.settings.install).history, "\n".join(history) + "\n")
        log(f"{node.name}: rolled back {state.current} -> {target}")
        outcome[node.name] = target
    return outcome


def _rollback_target(state: HostState) -> str | None:
    """The newest release in the history before the current one that is still installed."""
    history = list(state.history)
    while history and history[-1] == state.current:
        history.pop()
    for entry in reversed(history):
        if entry != state.current and entry in state.releases:
            return entry
    return None


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
