"""Hand new TFTP requests over to peer nodes while the daemon on this node is down.

Runs ON a node as root, with the system python3 (standard library only). A plain L4 UDP load
balancer such as nginx `stream` has no health checks: a request it sends to a node whose
daemon is stopped fails (nginx answers the client with an empty datagram after the ICMP error
and marks the node down only when the session times out). So the node itself hands new
requests on: nftables DNATs each new RRQ/WRQ (opcode 1 or 2, the first two payload bytes) that
arrives from the network to a peer, and masquerades it, so the peer's replies come back through
this node with this node's address, the one the load balancer expects. Datagrams of running
transfers are left alone, and flows already handed over stay with their peer (conntrack) after
the handoff ends.

The unit turns it on in ExecStopPost (any stop or crash) and off in ExecStartPost once the
daemon is ready; `fab deploy` holds it on (a hold file) until a restarted node passed its gate.

    handoff.py on --port 69 --peers 10.0.0.12,10.0.0.13 --address 10.0.0.11
    handoff.py off
    handoff.py off-when-ready --port 69 --api http://127.0.0.1:9180 --timeout 30 \
        [--ca CA.pem --cert NODE.pem --key NODE.key]
    handoff.py hold on|off

`--api` is where the node answers readiness (deploy.render.monitoring): the plain listener of
api.metrics_port when there is one, else the API; an https API gets the node's own
certificate (`--ca --cert --key`), since it may require one.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TABLE = "simple_tftpd_handoff"
# Present while `fab deploy` restarts this node: ExecStartPost then leaves the handoff on.
HOLD = Path("/run/simple-tftpd-handoff.hold")
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
# Present once this helper switched IPv4 forwarding on: the host then forwards only handed-over
# flows. A host that forwarded before keeps its own forwarding policy.
FORWARDING_OURS = Path("/run/simple-tftpd-handoff.forwarding")


def ruleset(port: int, peers: list[str], guard_forwarding: bool = False) -> str:
    targets = ", ".join(f"{index} : {peer}" for index, peer in enumerate(peers))
    peer_set = ", ".join(peers)
    guard = (
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy drop;\n"
        "    ct status dnat accept\n"
        "  }\n"
        if guard_forwarding
        else ""
    )
    return (
        f"table ip {TABLE}\n"
        f"delete table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f'    iifname != "lo" udp dport {port} @th,64,16 {{ 1, 2 }} counter'
        f" dnat to numgen inc mod {len(peers)} map {{ {targets} }}\n"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip daddr {{ {peer_set} }} udp dport {port} ct status dnat counter masquerade\n"
        "  }\n"
        f"{guard}"
        "}\n"
    )


def _nft(script: str) -> None:
    done = subprocess.run(
        ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"nft: {done.stderr.strip()}")


def forget_local_flows(address: str, port: int) -> None:
    """Delete the conntrack entries of flows this node's daemon answered itself.

    A new request whose addresses and ports match such an entry (the load balancer reuses its
    source ports) would skip the DNAT rule, which applies to new flows only, and reach the
    stopped daemon. Handed-over flows (their replies come from a peer) are kept."""
    if shutil.which("conntrack") is None:
        print(
            "handoff: conntrack not installed; reused ports may miss the handoff", file=sys.stderr
        )
        return
    subprocess.run(
        [
            "conntrack",
            "-D",
            "-p",
            "udp",
            "--orig-dst",
            address,
            "--orig-port-dst",
            str(port),
            "--reply-src",
            address,
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )


def handoff_on(port: int, peers: list[str], address: str) -> int:
    peers = [str(ipaddress.IPv4Address(peer)) for peer in peers]
    if not peers:
        print("handoff: no peers to hand requests to", file=sys.stderr)
        return 0
    if FORWARDING.read_text().strip() != "1":
        try:
            FORWARDING.write_text("1\n")
        except OSError as exc:
            print(f"handoff: cannot enable IPv4 forwarding: {exc}", file=sys.stderr)
            return 1
        FORWARDING_OURS.touch()
    _nft(ruleset(port, peers, guard_forwarding=FORWARDING_OURS.exists()))
    forget_local_flows(address, port)
    print(f"handoff: new requests on UDP {port} go to {', '.join(peers)}")
    return 0


def handoff_off() -> int:
    # Only the DNAT rule goes: the table and its NAT chains stay. The kernel translates a
    # flow's packets only while some NAT chain is hooked in, so deleting the table would cut
    # the transfers still running through a peer.
    subprocess.run(
        ["nft", "flush", "chain", "ip", TABLE, "prerouting"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return 0


def _udp_bound(port: int) -> bool:
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local = line.split()[1]
            if int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def tls_context(api: str, ca: str, cert: str, key: str) -> ssl.SSLContext | None:
    if not api.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


def _ready(api: str, port: int, context: ssl.SSLContext | None = None) -> bool:
    if not _udp_bound(port):
        return False
    if not api:
        return True
    try:
        with urllib.request.urlopen(f"{api}/api/v1/ready", timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def off_when_ready(
    port: int, api: str, timeout: float, context: ssl.SSLContext | None = None
) -> int:
    """End the handoff once the daemon serves; never fail the unit over it."""
    if HOLD.exists():
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ready(api, port, context):
            return handoff_off()
        time.sleep(0.2)
    print("handoff: daemon not ready in time; requests stay with the peers", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="handoff.py")
    sub = parser.add_subparsers(dest="command", required=True)
    on = sub.add_parser("on")
    on.add_argument("--port", type=int, required=True)
    on.add_argument("--peers", default="", help="comma-separated IPv4 addresses")
    on.add_argument("--address", required=True, help="this node's address")
    sub.add_parser("off")
    hold = sub.add_parser("hold", help="keep the handoff on across restarts (deploy)")
    hold.add_argument("state", choices=["on", "off"])
    ready = sub.add_parser("off-when-ready")
    ready.add_argument("--port", type=int, required=True)
    ready.add_argument("--api", default="")
    ready.add_argument("--timeout", type=float, default=30.0)
    ready.add_argument("--ca", default="", help="CA bundle that verifies an https --api")
    ready.add_argument("--cert", default="", help="client certificate for an https --api")
    ready.add_argument("--key", default="", help="key of --cert")
    args = parser.parse_args(argv)
    if args.command == "on":
        try:
            return handoff_on(args.port, [p for p in args.peers.split(",") if p], args.address)
        except (OSError, RuntimeError, ValueError) as exc:
            print(f"handoff: not turned on: {exc}", file=sys.stderr)
            return 1
    if args.command == "off":
        return handoff_off()
    if args.command == "hold":
        if args.state == "on":
            HOLD.touch()
        else:
            HOLD.unlink(missing_ok=True)
        return 0
    try:
        context = tls_context(args.api, args.ca, args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        print(f"handoff: cannot load the TLS files: {exc}", file=sys.stderr)
        return 0  # never fail the unit over it; the handoff stays on
    return off_when_ready(args.port, args.api, args.timeout, context)


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
