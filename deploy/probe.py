"""Health probe that runs ON a node: readiness, active sessions, and a real TFTP fetch.

Shipped inside every release and run with that release's venv Python, because tftpy (the
project's TFTP client) is a daemon dependency; everything else is the standard library. Each
command prints one JSON object and exits 0 only when the check passed.

    probe.py gate --unit simple-tftpd --api http://127.0.0.1:8080 --tftp 127.0.0.1 --port 69 \
        --file simple-tftpd-canary.bin --sha256 HEX --timeout 30
    probe.py sessions --api http://127.0.0.1:9180 --metrics
    probe.py fetch --tftp 10.0.0.5 --port 69 --file NAME [--sha256 HEX]

`--api` is where the node answers health (deploy.render.monitoring): the plain listener of
api.metrics_port when there is one, else the API. An https URL takes `--ca --cert --key`: the
node's own files, shown to an API that requires client certificates (health and readiness
need no role). `sessions --metrics` counts transfers from the Prometheus metrics, which the
plain listener serves without an identity; without it, from /api/v1/status.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

POLL = 0.3


def _emit(ok: bool, **details: Any) -> int:
    print(json.dumps({"ok": ok, **details}, sort_keys=True))
    return 0 if ok else 1


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """For https: verify the node against the site CA, show the node's own certificate."""
    if not args.api.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=args.ca or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if args.cert:
        context.load_cert_chain(args.cert, args.key or None)
    return context


def _read(url: str, context: ssl.SSLContext | None, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _get(
    url: str,
    context: ssl.SSLContext | None = None,
    timeout: float = 3.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError) as exc:
        return 0, {"error": str(exc)}


def _unit_state(unit: str) -> dict[str, str]:
    done = subprocess.run(
        ["systemctl", "show", unit, "-p", "ActiveState,SubState,NRestarts,Result"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def fetch(host: str, port: int, name: str, timeout: float = 2.0) -> tuple[str, int]:
    """(sha256, size) of `name` downloaded over TFTP."""
    import tftpy  # the release's own dependency; imported late so `sessions` works without it

    logging.getLogger("tftpy").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="simple-tftpd-probe-") as tmp:
        local = os.path.join(tmp, "fetched")
        client = tftpy.TftpClient(host, port, {"blksize": 1468})
        client.download(name, local, timeout=timeout, retries=3)
        with open(local, "rb") as handle:
            data = handle.read()
    return hashlib.sha256(data).hexdigest(), len(data)


def _fetch_check(args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    try:
        digest, size = fetch(args.tftp, args.port, args.file)
    except Exception as exc:  # tftpy raises several unrelated types; all mean "failed"
        return False, {"check": "fetch", "error": f"{type(exc).__name__}: {exc}"}
    if args.sha256 and digest != args.sha256:
        return False, {"check": "fetch", "error": "sha256 mismatch", "sha256": digest}
    return True, {"sha256": digest, "bytes": size}


def gate(args: argparse.Namespace) -> int:
    """Wait until the unit is active and /ready says ready, then fetch the health file.

    Fails fast when systemd has restarted the unit (a crash loop will not become ready)."""
    deadline = time.monotonic() + args.timeout
    detail: dict[str, Any] = {}
    try:
        context = tls_context(args)
    except (OSError, ssl.SSLError) as exc:
        return _emit(False, check="tls", error=f"{type(exc).__name__}: {exc}")
    while True:
        state = _unit_state(args.unit)
        if state.get("ActiveState") == "failed" or int(state.get("NRestarts") or 0) > 0:
            return _emit(False, check="unit", state=state)
        if state.get("ActiveState") == "active":
            if not args.api:
                break
            status, detail = _get(f"{args.api}/api/v1/ready", context)
            if status == 200:
                break
        if time.monotonic() > deadline:
            return _emit(False, check="ready", state=state, last=detail, timeout=args.timeout)
        time.sleep(POLL)
    ok, details = _fetch_check(args)
    return _emit(ok, **details)


def active_sessions(text: str) -> int:
    """Transfers in progress, from the Prometheus text format (summed over any labels)."""
    name = "simple_tftpd_active_sessions"
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in (" ", "{"):
            continue
        # name{labels} value [timestamp]: the labels may hold spaces, the value does not.
        rest = line[line.rindex("}") + 1 :] if line[len(name)] == "{" else line[len(name) :]
        total += float(rest.split()[0])
    return int(total)


def _bearer(config_path: str) -> dict[str, str]:
    """The daemon's own `api.token` (admin) from its config on this host, as a header: with
    TLS, the node's certificate passes the handshake but carries no role for the status.
    Read here, as root, so the token never appears on a command line."""
    if not config_path:
        return {}
    try:
        with open(config_path, encoding="utf-8") as handle:
            token = (json.load(handle).get("api") or {}).get("token")
    except (OSError, ValueError, AttributeError):
        return {}
    return {"Authorization": f"Bearer {token}"} if isinstance(token, str) and token else {}


def sessions(args: argparse.Namespace) -> int:
    try:
        context = tls_context(args)
        if args.metrics:
            status, raw = _read(f"{args.api}/api/v1/metrics/prometheus", context)
            if status != 200:
                return _emit(False, check="metrics", status=status)
            return _emit(True, active_sessions=active_sessions(raw.decode(errors="replace")))
    except (OSError, ssl.SSLError, ValueError) as exc:
        return _emit(False, check="metrics", error=f"{type(exc).__name__}: {exc}")
    status, body = _get(f"{args.api}/api/v1/status", context, headers=_bearer(args.config))
    if status != 200:
        return _emit(False, check="status", status=status, body=body)
    return _emit(True, active_sessions=int(body.get("active_sessions", 0)))


def fetch_command(args: argparse.Namespace) -> int:
    ok, details = _fetch_check(args)
    return _emit(ok, **details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe.py")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("gate", "fetch"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--tftp", required=True)
        cmd.add_argument("--port", type=int, required=True)
        cmd.add_argument("--file", required=True)
        cmd.add_argument("--sha256", default="")
    gate_cmd = sub.choices["gate"]
    gate_cmd.add_argument("--unit", required=True)
    gate_cmd.add_argument("--api", default="", help="API base URL; empty when the API is off")
    gate_cmd.add_argument("--timeout", type=float, default=30.0)
    sessions_cmd = sub.add_parser("sessions")
    sessions_cmd.add_argument("--api", required=True)
    sessions_cmd.add_argument(
        "--metrics", action="store_true", help="count from the Prometheus metrics"
    )
    sessions_cmd.add_argument(
        "--config", default="", help="the daemon's config: its api.token authenticates"
    )
    for cmd in (gate_cmd, sessions_cmd):
        cmd.add_argument("--ca", default="", help="CA bundle that verifies an https --api")
        cmd.add_argument("--cert", default="", help="client certificate for an https --api")
        cmd.add_argument("--key", default="", help="key of --cert")
    args = parser.parse_args(argv)
    handlers = {"gate": gate, "fetch": fetch_command, "sessions": sessions}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
