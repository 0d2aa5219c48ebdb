"""`python -m testbed`: build the base root, or boot test hosts by hand and keep them up.

python -m testbed base                      # build (or reuse) the cached base root
python -m testbed up lb-1 tftp-1 tftp-2     # boot hosts; Ctrl-C or SIGTERM tears down
python -m testbed down                      # clean up what a killed run left behind
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from testbed.base import ensure_base
from testbed.bed import Testbed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    parser.add_argument("--name", default="stb", help="testbed name (prefixes interfaces)")
    parser.add_argument("--subnet", default="10.213.0.0/24")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("base", help="build or reuse the base root")
    up = sub.add_parser("up", help="boot hosts and wait for Ctrl-C")
    up.add_argument("hosts", nargs="+")
    sub.add_parser("down", help="tear down a testbed left behind by a killed run")
    args = parser.parse_args(argv)

    if args.command == "base":
        print(ensure_base())
        return 0
    if args.command == "down":
        Testbed([], name=args.name, subnet=args.subnet).clean()
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Testbed(args.hosts, name=args.name, subnet=args.subnet) as bed:
        print(
            json.dumps(
                {
                    "hosts": {name: spec.address for name, spec in bed.hosts.items()},
                    "ssh_config": str(bed.ssh_config),
                    "identity_file": str(bed.key),
                    "known_hosts": str(bed.known_hosts),
                },
                indent=2,
            ),
            flush=True,
        )
        print("testbed: up; Ctrl-C to tear down", file=sys.stderr, flush=True)
        try:
            while not stop.wait(1):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
