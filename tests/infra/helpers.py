"""What the infra tests run on a node: a TFTP fetch with tftpy from the deployed venv (the
project's TFTP client), and an API request with the system python3."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import testinfra.host

from deploy.render import HostPaths

FETCH = """
import hashlib, logging, os, sys, tempfile
import tftpy
logging.getLogger("tftpy").setLevel(logging.CRITICAL)
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "fetched")
    tftpy.TftpClient(host, port, {"blksize": 1468}).download(name, path, timeout=2, retries=5)
    with open(path, "rb") as handle:
        print(hashlib.sha256(handle.read()).hexdigest())
"""

GET_JSON = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
    print(json.dumps({"status": response.status, "body": json.load(response)}))
"""


def fetch_sha256(
    host: testinfra.host.Host, paths: HostPaths, address: str, port: int, name: str
) -> str:
    python = f"{paths.current}/venv/bin/python"
    return str(host.check_output("%s -c %s %s %s %s", python, FETCH, address, str(port), name))


def get_json(host: testinfra.host.Host, url: str) -> tuple[int, Any]:
    answer = json.loads(host.check_output("python3 -c %s %s", GET_JSON, url))
    return int(answer["status"]), answer["body"]


@contextlib.contextmanager
def as_root(host: testinfra.host.Host) -> Iterator[None]:
    """Run the commands inside as root: through sudo, unless the login user is root already
    (hosts reached as root need not have sudo at all)."""
    if host.check_output("id -u") == "0":
        yield
        return
    with host.sudo():
        yield
