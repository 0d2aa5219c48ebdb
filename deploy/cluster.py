"""Cluster commands: each picks the host and the arguments from the inventory and runs the
daemon's command of the same name there (`simple-tftpd cluster-init`, `cluster-join`,
`cluster-status`, `node-health`, `site-sync-init`), with `--config` so the command finds the
node's admin token, etcd endpoints and TLS files.

`join_node` is the whole of `fab cluster-join --host NEW`: it asks a running member to admit
the new node (which, for a host with the etcd role, adds it to etcd as a member: the
`etcdctl member add` step), starts the new etcd member with `initial-cluster-state=existing`,
installs and starts the daemon on the new host with the deploy's health gate, and waits until
the cluster lists it as a member and it agrees on the leader.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deploy import DeployError
from deploy.certs import TlsFile
from deploy.inventory import Node, Site
from deploy.release import Release
from deploy.remote import Remote, q, sh
from deploy.render import HostPaths, RenderedFile, etcd_uses_tls, render_host
from deploy.rollout import (
    ETCD_CLIENT_CONTEXT,
    ETCD_HEALTH,
    etcd_client_tls_args,
    install_tls,
    prepare_all,
    roll_node,
    split_tls,
    write_rendered,
)

Log = Callable[[str], None]
# Seconds the new node gets, once its daemon passed the gate, to show up in the cluster.
MEMBER_TIMEOUT = 60.0
POLL_INTERVAL = 1.0
# Lists etcd's members through its JSON gateway, trying each endpoint (comma separated in
# argv[1]) until one answers; with TLS it presents the member's own certificate.
ETCD_MEMBERS = (
    ETCD_CLIENT_CONTEXT
    + """
problems = []
for endpoint in [e for e in sys.argv[1].split(",") if e]:
    url = endpoint if "://" in endpoint else "http://" + endpoint
    request = urllib.request.Request(
        url.rstrip("/") + "/v3/cluster/member/list", b"{}",
        {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            print(json.dumps(json.load(response).get("members", [])))
            sys.exit(0)
    except Exception as exc:
        problems.append(f"{url}: {exc}")
print("; ".join(problems) or "no etcd endpoint configured", file=sys.stderr)
sys.exit(1)
"""
)


@dataclass(frozen=True)
class ClusterCommand:
    node: Node
    command: str


def _binary(site: Site) -> str:
    return HostPaths(site.settings.install).binary


def _with_config(site: Site, command: str) -> str:
    """`simple-tftpd <command> --config <the node's config>`: the admin token (joins and
    sync need it), the etcd endpoints (cluster-init) and the TLS files come from it. Run from
    the state dir, as the unit runs the daemon: relative paths in the config resolve alike."""
    paths = HostPaths(site.settings.install)
    return f"cd {q(paths.state_dir)} && {_binary(site)} {command} --config {q(paths.config)}"


def _require_clustering(site: Site) -> None:
    if not site.clustering:
        raise DeployError(
            f"{site.source}: clustering is not enabled (set config.clustering.enabled: true)"
        )


def _api_endpoint(node: Node) -> str:
    host = f"[{node.address}]" if ":" in node.address else node.address
    return f"{host}:{node.config.api.port}"


def _target(site: Site, host: str | None) -> Node:
    node = site.node(host) if host else site.tftp_nodes[0]
    if not node.has("tftp"):
        raise DeployError(f"{node.name}: does not run the daemon (no role tftp)")
    return node


def cluster_init(site: Site, host: str | None = None) -> ClusterCommand:
    """Bootstrap the cluster from one node with every member's API endpoint."""
    _require_clustering(site)
    node = _target(site, host)
    config = node.config
    members = ",".join(config.clustering.nodes)
    return ClusterCommand(
        node,
        _with_config(
            site,
            f"cluster-init --cluster-id {q(config.node.cluster_id)}"
            f" --node-id {q(config.node.node_id)} --nodes {q(members)}",
        ),
    )


def join_command(
    site: Site, new: Node, through: Node, leader: str | None, etcd_peer_url: str | None
) -> ClusterCommand:
    """`simple-tftpd cluster-join` for `new`, run on the member `through` (the new host may not
    have the daemon yet); with a peer URL the member also adds `new` to etcd."""
    config = new.config
    command = (
        f"cluster-join --cluster-id {q(config.node.cluster_id)}"
        f" --node-id {q(config.node.node_id)} --leader {q(leader or _api_endpoint(through))}"
    )
    if etcd_peer_url:
        command += f" --etcd-peer-url {q(etcd_peer_url)}"
    return ClusterCommand(through, _with_config(site, command))


def cluster_status(site: Site, host: str | None = None) -> ClusterCommand:
    _require_clustering(site)
    return ClusterCommand(_target(site, host), _with_config(site, "cluster-status"))


def node_health(site: Site, host: str | None = None) -> list[ClusterCommand]:
    """One command per node (or the named one): every node reports its own health."""
    nodes = [_target(site, host)] if host else site.tftp_nodes
    return [ClusterCommand(node, _with_config(site, "node-health")) for node in nodes]


def site_sync_init(site: Site, host: str | None = None) -> ClusterCommand:
    node = _target(site, host)
    multi_site = node.config.multi_site
    peers = multi_site.sync.peer_sites
    if not peers:
        raise DeployError(f"{site.source}: no peer sites (set config.multi_site.sync.peer_sites)")
    shorthand = ",".join(f"{peer.site_id}:{peer.endpoint}" for peer in peers)
    return ClusterCommand(
        node,
        _with_config(
            site, f"site-sync-init --site-id {q(multi_site.site_id)} --peer-sites {q(shorthand)}"
        ),
    )


# --- joining a new node ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdMember:
    member_id: str
    name: str
    peer_urls: tuple[str, ...]

    @property
    def started(self) -> bool:
        # etcd learns a member's name when the member first starts; an added one has none.
        return bool(self.name)


@dataclass(frozen=True)
class JoinPlan:
    """What `join_node` checked before changing anything."""

    new: Node
    # The running member that admits the new node and answers for the cluster.
    through: Node
    leader: str | None
    already_member: bool


def check_join(site: Site, host: str) -> tuple[Node, list[Node]]:
    """The new node and the members to join through, in inventory order; raises before any
    host is touched when the inventory cannot do it."""
    _require_clustering(site)
    new = _target(site, host)
    if not new.config.clustering.enabled:
        raise DeployError(f"{new.name}: clustering is not enabled in its config")
    others = [node for node in site.tftp_nodes if node.name != new.name]
    if not others:
        raise DeployError(f"{new.name}: no other node in the inventory to join through")
    if new.has("etcd") and not any(node.has("etcd") for node in others):
        raise DeployError(
            f"{new.name}: has the etcd role but no other host does; a site's first etcd "
            "members are made by `fab deploy`, not joined"
        )
    return new, others


def cluster_view(c: Remote, site: Site, node: Node) -> dict[str, Any]:
    """`simple-tftpd cluster-status` on `node`, parsed."""
    result = sh(c, _with_config(site, "cluster-status"), "reading the cluster status", check=False)
    try:
        view = json.loads(result.stdout or "null")
    except ValueError:
        view = None
    if result.failed or not isinstance(view, dict):
        detail = (result.stderr or result.stdout or f"exit {result.exited}").strip()[-500:]
        raise DeployError(f"{node.name}: cluster status unavailable: {detail}")
    return view


def member_ids(view: Mapping[str, Any]) -> set[str]:
    members = view.get("members") or []
    return {str(m.get("node_id") if isinstance(m, dict) else m) for m in members}


def plan_join(
    connections: Mapping[str, Remote],
    site: Site,
    new: Node,
    candidates: Sequence[Node],
    leader: str | None,
    log: Log,
) -> JoinPlan:
    """Find a member with etcd quorum to join through (the first that answers)."""
    problems = []
    for node in candidates:
        try:
            view = cluster_view(connections[node.name], site, node)
        except DeployError as exc:
            problems.append(str(exc))
            continue
        if not view.get("quorum"):
            problems.append(f"{node.name}: no etcd quorum")
            continue
        already = new.config.node.node_id in member_ids(view)
        log(
            f"{new.name}: joining cluster {view.get('cluster_id')} through {node.name}"
            f" (leader {view.get('leader')}, {len(member_ids(view))} members)"
        )
        return JoinPlan(new, node, leader, already)
    raise DeployError(
        f"{new.name}: no member of the cluster answered with etcd quorum; nothing was changed\n  "
        + "\n  ".join(problems)
    )


def check_join_tls(site: Site, new: Node, tls: Sequence[TlsFile]) -> list[TlsFile]:
    """The new etcd member's own TLS files when the site's etcd runs TLS (else none); raises
    before any host is touched when they are missing."""
    if not (new.has("etcd") and etcd_uses_tls(site)):
        return []
    files = split_tls(site, tls)[1]
    if len(files) != len(vars(HostPaths(site.settings.install).etcd_tls)):
        raise DeployError(
            f"{new.name}: the site's etcd runs TLS and the new member needs its certificate: "
            "run `fab certs` (it issues certificates for new hosts and keeps the others), "
            "then pass the PKI directory with --pki"
        )
    return files


def etcd_members(c: Remote, site: Site, node: Node) -> list[EtcdMember]:
    """etcd's member list, asked through the endpoints of `node`'s config (an etcd member:
    with TLS it presents the member's own certificate)."""
    endpoints = ",".join(node.config.clustering.etcd_endpoints)
    result = sh(
        c,
        f"python3 -c {q(ETCD_MEMBERS)} {q(endpoints)}{etcd_client_tls_args(site)}",
        "listing the etcd members",
        timeout=60,
    )
    try:
        raw = json.loads(result.stdout)
    except ValueError:
        raise DeployError(f"{node.name}: unreadable etcd member list: {result.stdout!r}") from None
    return [
        EtcdMember(str(m.get("ID", "")), str(m.get("name", "")), tuple(m.get("peerURLs", [])))
        for m in raw
    ]


def etcd_peer_url(site: Site, node: Node) -> str:
    """The peer URL the member on `node` advertises, as the deploy renders it."""
    return _env_value(render_host(site, node)["etcd_env"], "ETCD_INITIAL_ADVERTISE_PEER_URLS")


def initial_cluster(members: Sequence[EtcdMember], new: Node, peer_url: str) -> str:
    """ETCD_INITIAL_CLUSTER for a member joining a running cluster: every current member
    (the added one has no name yet: it takes the new node's), each with its peer URLs."""
    pairs = []
    for member in members:
        name = member.name or (new.name if peer_url in member.peer_urls else "")
        if not name:
            raise DeployError(
                f"etcd member {member.member_id} ({', '.join(member.peer_urls)}) was added but "
                "never started; remove it (etcdctl member remove) or start it first"
            )
        pairs += [f"{name}={url}" for url in member.peer_urls]
    return ",".join(pairs)


def _env_value(env: RenderedFile, key: str) -> str:
    for line in env.content.splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise DeployError(f"{env.path}: rendered without {key} (template bug)")


def joining_etcd_files(site: Site, node: Node, initial: str) -> list[RenderedFile]:
    """The new member's etcd files as `fab deploy` renders them, except that its env joins
    the running cluster (its real member list, state `existing`) instead of bootstrapping."""
    files = render_host(site, node)
    env = files["etcd_env"]
    replaced = ("ETCD_INITIAL_CLUSTER=", "ETCD_INITIAL_CLUSTER_STATE=")
    lines = [line for line in env.content.splitlines() if not line.startswith(replaced)]
    lines += [
        "# Joined by `fab cluster-join`: the members of the running cluster.",
        f"ETCD_INITIAL_CLUSTER={initial}",
        "ETCD_INITIAL_CLUSTER_STATE=existing",
    ]
    files["etcd_env"] = dataclasses.replace(env, content="\n".join(lines) + "\n")
    # Every etcd file the deploy renders, env first, then the unit.
    others = [f for key, f in files.items() if key.startswith("etcd_") and key != "etcd_env"]
    return [files["etcd_env"], *others]


def start_etcd_member(
    c: Remote,
    site: Site,
    node: Node,
    files: Sequence[RenderedFile],
    fresh: bool,
    log: Log,
    tls: Sequence[TlsFile] = (),
) -> None:
    """Write the member's TLS files (if any) and rendered files and start it; `fresh` empties
    its data dir first (only ever for a member that etcd has never seen start, so nothing
    there belongs to this cluster)."""
    etcd = site.settings.etcd
    unit = f"{site.settings.install.service}-etcd"
    install_tls(c, node, tls, "etcd", log)
    for rendered in files:
        write_rendered(c, rendered)
    wipe = f" && rm -rf {q(etcd.data_dir)}/member" if fresh else ""
    sh(
        c,
        # Debian's own etcd.service would hold the same ports.
        "systemctl disable --now --quiet etcd.service 2>/dev/null;"
        f" systemctl stop {q(unit)} 2>/dev/null;"
        f" install -d -m 0700 -o etcd -g etcd {q(etcd.data_dir)}{wipe}"
        f" && systemctl daemon-reload && systemctl enable --quiet {q(unit)}"
        f" && {{ systemctl reset-failed {q(unit)} 2>/dev/null;"
        f" systemctl start --no-block {q(unit)}; }}",
        "starting the etcd member",
    )
    url = _env_value(files[0], "ETCD_ADVERTISE_CLIENT_URLS").split(",")[0] + "/health"
    health = sh(
        c,
        f"python3 -c {q(ETCD_HEALTH)} {q(url)}{etcd_client_tls_args(site)}",
        "waiting for the etcd member",
        check=False,
        timeout=120,
    )
    if health.failed:
        journal = sh(
            c, f"journalctl -u {q(unit)} -n 15 --no-pager -o cat; true", "reading the journal"
        ).stdout.strip()
        raise DeployError(
            f"{node.name}: the new etcd member did not become healthy; the daemon was not "
            f"started. Last log lines of {unit}:\n    " + journal.replace("\n", "\n    ")
        )
    log(f"{node.name}: etcd member started and healthy")


def _admit(c: Remote, site: Site, plan: JoinPlan, peer_url: str | None) -> None:
    command = join_command(site, plan.new, plan.through, plan.leader, peer_url)
    result = sh(c, command.command, "asking the cluster to admit the node", check=False)
    if result.failed:
        answer = (result.stdout + result.stderr).strip()[-1000:]
        raise DeployError(
            f"{plan.new.name}: {plan.through.name} refused the join (exit {result.exited}):"
            f"\n  {answer}"
        )


def join_etcd(
    connections: Mapping[str, Remote],
    site: Site,
    plan: JoinPlan,
    log: Log,
    tls: Sequence[TlsFile] = (),
) -> bool:
    """Make the new node an etcd member (add it, then start it, with its own TLS files when
    etcd runs TLS); True if the daemon's join (which did the add) was already asked."""
    new, through = plan.new, plan.through
    via = through if through.has("etcd") else next(n for n in site.etcd_nodes if n.name != new.name)
    peer_url = etcd_peer_url(site, new)
    members = etcd_members(connections[via.name], site, via)
    mine = [m for m in members if peer_url in m.peer_urls]
    admitted = False
    if not mine:
        if plan.already_member:
            raise DeployError(
                f"{new.name}: its daemon is a member already but its etcd is not; add it with "
                f"`etcdctl member add {new.name} --peer-urls={peer_url}` and run this again"
            )
        _admit(connections[through.name], site, plan, peer_url)
        admitted = True
        log(f"{new.name}: added to etcd as a member ({peer_url})")
        members = etcd_members(connections[via.name], site, via)
        mine = [m for m in members if peer_url in m.peer_urls]
        if not mine:
            raise DeployError(f"{new.name}: join accepted, but etcd does not list {peer_url}")
    if mine[0].started:
        log(f"{new.name}: already an etcd member")
        # Running members keep their data; only make sure the unit runs.
        unit = f"{site.settings.install.service}-etcd"
        sh(
            connections[new.name],
            f"systemctl is-active --quiet {q(unit)} || systemctl start {q(unit)}",
            "starting the etcd member",
            timeout=120,
        )
        return admitted
    files = joining_etcd_files(site, new, initial_cluster(members, new, peer_url))
    start_etcd_member(connections[new.name], site, new, files, fresh=True, log=log, tls=tls)
    return admitted


def wait_for_member(
    connections: Mapping[str, Remote],
    site: Site,
    plan: JoinPlan,
    log: Log,
    timeout: float = MEMBER_TIMEOUT,
) -> dict[str, Any]:
    """Until the member joined through lists the new node and both name the same leader."""
    new, through = plan.new, plan.through
    node_id = new.config.node.node_id
    deadline = time.monotonic() + timeout
    seen = "no answer"
    while True:
        try:
            theirs = cluster_view(connections[through.name], site, through)
            ours = cluster_view(connections[new.name], site, new)
            seen = (
                f"{through.name} sees members {sorted(member_ids(theirs))}, leader "
                f"{theirs.get('leader')}; {new.name} sees leader {ours.get('leader')}, "
                f"quorum {ours.get('quorum')}"
            )
            if (
                node_id in member_ids(theirs)
                and ours.get("quorum")
                and ours.get("leader")
                and ours.get("leader") == theirs.get("leader")
            ):
                log(
                    f"{new.name}: member of cluster {ours.get('cluster_id')}"
                    f" ({len(member_ids(theirs))} members, leader {ours.get('leader')})"
                )
                return ours
        except DeployError as exc:
            seen = str(exc)
        if time.monotonic() > deadline:
            raise DeployError(
                f"{new.name}: not a member of the cluster after {timeout:.0f}s: {seen}"
            )
        time.sleep(POLL_INTERVAL)


def join_node(
    connections: Mapping[str, Remote],
    site: Site,
    host: str,
    release: Release,
    files: Mapping[str, RenderedFile],
    log: Log,
    *,
    leader: str | None = None,
    tls: Sequence[TlsFile] = (),
    member_timeout: float = MEMBER_TIMEOUT,
) -> dict[str, Any]:
    """`fab cluster-join --host NEW`; returns the new node's view of the cluster.

    Order matters: etcd admits the member before it starts (else it would bootstrap a
    cluster of its own), and the daemon starts last, against an etcd that already has it."""
    new, candidates = check_join(site, host)
    etcd_tls = check_join_tls(site, new, tls)
    plan = plan_join(connections, site, new, candidates, leader, log)
    admitted = join_etcd(connections, site, plan, log, etcd_tls) if new.has("etcd") else False
    if plan.already_member:
        log(f"{new.name}: already a member of the cluster")
    elif not admitted:
        _admit(connections[plan.through.name], site, plan, None)
    prepare_all(connections, site, [new], release, log)
    roll_node(connections[new.name], site, new, release, files, log, tls)
    view = wait_for_member(connections, site, plan, log, member_timeout)
    log(
        f"{new.name}: joined. Run `fab deploy` to add it to the load balancer and to the "
        "other nodes' member and etcd endpoint lists"
    )
    return view
