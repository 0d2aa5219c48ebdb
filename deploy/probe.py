"""Health probe that runs ON a node: readiness, active sessions, and a real TFTP fetch.

Shipped inside every release and run with that release's venv Python, because tftpy (the
project's TFTP client) is a daemon dependency; everything else is the standard library. Each
command prints one JSON object and exits 0 only when the check passed.

    probe.py gate --unit simple-tftpd --api http://127.0.0.1:8080 --tftp 127.0.0.1 --port 69 \
        --file simple-tftpd-canary.bin --sha256 HEX --timeout 30
    probe.py sessions --api http://127.0.0.1:8080
    probe.py fetch --tftp 10.0.0.5 --port 69 --file NAME [--sha256 HEX]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
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


def _get(url: str, timeout: float = 3.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
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
    while True:
        state = _unit_state(args.unit)
        if state.get("ActiveState") == "failed" or int(state.get("NRestarts") or 0) > 0:
            return _emit(False, check="unit", state=state)
        if state.get("ActiveState") == "active":
            if not args.api:
                break
            status, detail = _get(f"{args.api}/api/v1/ready")
            if status == 200:
                break
        if time.monotonic() > deadline:
            return _emit(False, check="ready", state=state, last=detail, timeout=args.timeout)
        time.sleep(POLL)
    ok, details = _fetch_check(args)
    return _emit(ok, **details)


def sessions(args: argparse.Namespace) -> int:
    status, body = _get(f"{args.api}/api/v1/status")
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
    args = parser.parse_args(argv)
    handlers = {"gate": gate, "fetch": fetch_command, "sessions": sessions}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
