"""Replicated content on a real 3-node site: uploads, replaces, deletes, bad input, catch-up,
atomic switches under churn, and a 4th node joining."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests.cluster.conftest import TOKEN, Site, sha
from tests.interop.conftest import needs_clients
from tests.support.daemon import wait_for

pytestmark = [pytest.mark.cluster, needs_clients]


def test_upload_is_served_by_every_node(site: Site) -> None:
    data = os.urandom(300_000)
    status, body = site.upload(site.nodes[0], "boot/ipxe.efi", data)
    assert status == 201, body
    assert body["digest"] == sha(data)
    assert site.wait_served_everywhere("boot/ipxe.efi", data)


def test_replace_and_delete_propagate(site: Site) -> None:
    first, second = os.urandom(5000), os.urandom(7000)
    assert site.upload(site.nodes[1], "cfg/switch-a.conf", first)[0] == 201
    assert site.wait_served_everywhere("cfg/switch-a.conf", first)
    assert site.upload(site.nodes[2], "cfg/switch-a.conf", second)[0] == 201
    assert site.wait_served_everywhere("cfg/switch-a.conf", second)
    status, body = site.delete(site.nodes[0], "cfg/switch-a.conf")
    assert status == 200, body
    assert site.wait_served_everywhere("cfg/switch-a.conf", None)
    _, listing = site.request(site.nodes[1], "GET", "/api/v1/files")
    assert "cfg/switch-a.conf" not in [f["path"] for f in listing["files"]]


@pytest.mark.parametrize(
    ("path", "headers", "token", "expected"),
    [
        ("evil.bin", {}, "wrong-token-0123456789", 401),
        ("evil.bin", {}, None, 401),
        ("../escape.bin", {}, TOKEN, 400),
        ("boot/../../escape.bin", {}, TOKEN, 400),
        ("mismatch.bin", {"X-Content-SHA256": "0" * 64}, TOKEN, 400),
        ("badhash.bin", {"X-Content-SHA256": "xyz"}, TOKEN, 400),
    ],
)
def test_bad_uploads_change_nothing(
    site: Site, path: str, headers: dict[str, str], token: str | None, expected: int
) -> None:
    _, before = site.request(site.nodes[0], "GET", "/api/v1/files")
    status, body = site.request(
        site.nodes[0], "PUT", f"/api/v1/files/{path}", b"payload", headers, token=token
    )
    assert status == expected, body
    assert "error" in body
    _, after = site.request(site.nodes[0], "GET", "/api/v1/files")
    assert after == before
    for node in site.nodes:
        assert not list(node.root.rglob("*escape*"))
        assert site.fetch(node, path.split("/")[-1]) is None


def test_stopped_node_catches_up(site: Site) -> None:
    late = site.nodes[1]
    late.stop()
    data = os.urandom(40_000)
    assert site.upload(site.nodes[0], "late/arrival.bin", data)[0] == 201
    assert site.upload(site.nodes[0], "boot/ipxe.efi", data)[0] == 201  # a replace while away
    late.start()
    assert site.wait_served_everywhere("late/arrival.bin", data)
    assert site.wait_served_everywhere("boot/ipxe.efi", data)


def test_no_client_ever_gets_a_mixed_file(site: Site) -> None:
    """Clients fetch while versions are replaced: every fetch is exactly one version."""
    versions = [os.urandom(200_000) for _ in range(4)]
    digests = {sha(v) for v in versions}
    assert site.upload(site.nodes[0], "churn.bin", versions[0])[0] == 201
    assert site.wait_served_everywhere("churn.bin", versions[0])
    seen: list[str] = []
    stop = threading.Event()

    def fetch_loop() -> None:
        while not stop.is_set():
            for node in site.running():
                data = site.fetch(node, "churn.bin")
                if data is not None:
                    seen.append(sha(data))

    fetcher = threading.Thread(target=fetch_loop)
    fetcher.start()
    try:
        for index, version in enumerate(versions[1:], start=1):
            assert site.upload(site.nodes[index % 3], "churn.bin", version)[0] == 201
        assert site.wait_served_everywhere("churn.bin", versions[-1])
    finally:
        stop.set()
        fetcher.join(60)
    assert seen
    assert set(seen) <= digests


def test_cli_status_logs_and_files(site: Site, tmp_path: object) -> None:
    node = site.nodes[0]
    env = {**os.environ, "SIMPLE_TFTPD_TOKEN": TOKEN}
    api = f"127.0.0.1:{node.api_port}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "simple_tftpd", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    local = node.workdir / "cli-upload.bin"
    local.write_bytes(os.urandom(1234))
    assert cli("files", "put", str(local), "cli/upload.bin", "--api", api).returncode == 0
    listing = cli("files", "ls", "--api", api)
    assert "cli/upload.bin" in listing.stdout
    status = cli("cluster-status", "--api", api)
    assert status.returncode == 0 and '"quorum": true' in status.stdout
    logs = cli("cluster-logs", "--api", api)
    assert "stored cli/upload.bin" in logs.stdout and "elected" in logs.stdout
    health = cli("node-health", "--api", api)
    assert health.returncode == 0
    assert cli("files", "rm", "cli/upload.bin", "--api", api).returncode == 0
    assert site.wait_served_everywhere("cli/upload.bin", None)


def test_cluster_join_brings_a_fourth_node(site: Site) -> None:
    member = site.nodes[0]
    result = subprocess.run(
        [sys.executable, "-m", "simple_tftpd", "cluster-join", "--cluster-id", "site-a",
         "--node-id", "node3", "--leader", f"127.0.0.1:{member.api_port}", "--token", TOKEN],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "simple_tftpd", "cluster-join", "--cluster-id", "other",
         "--node-id", "node9", "--leader", f"127.0.0.1:{member.api_port}", "--token", TOKEN],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert wrong.returncode == 1 and "not 'other'" in wrong.stdout
    fourth = site.add_node()
    assert wait_for(lambda: len(site.status(member)["members"]) == 4, 20)
    _, listing = site.request(member, "GET", "/api/v1/files")
    for entry in listing["files"]:
        expected = site.fetch(member, entry["path"])
        assert wait_for(lambda e=entry, x=expected: site.fetch(fourth, e["path"]) == x, 20)
