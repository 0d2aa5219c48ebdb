"""Backups of a real site (etcd + daemons on loopback) to a local directory, S3 (moto) and
Azure Blob (Azurite) at once: point-in-time restore, tampering, wrong keys, site loss, and
retention."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore
import pytest

from simple_tftpd.backup.crypto import IntegrityError
from simple_tftpd.backup.recovery import prune, restore_to_dir, state_at, verify
from simple_tftpd.backup.repository import MissingObject, Repository
from tests.backup.conftest import Stores
from tests.cluster.conftest import TOKEN, Site, sha
from tests.interop.conftest import needs_clients
from tests.support.daemon import Daemon, wait_for
from tests.support.etcd import EtcdCluster, etcd_available

pytestmark = [
    pytest.mark.cluster,
    needs_clients,
    pytest.mark.skipif(not etcd_available(), reason="etcd-server is installed by make test"),
]

KEY = bytes(range(100, 132))
KINDS = ["file", "s3", "az"]
BIG = os.urandom(1_500_000)  # more than one sealed segment
FILES0 = {
    "boot/ipxe.efi": BIG,
    "boot/grub.cfg": b"set timeout=5\n",
    "cfg/old.cfg": b"old config\n",
    "empty.bin": b"",
}


def backup_section(urls: list[str], **key: str) -> dict[str, Any]:
    return {
        "enabled": True,
        "schedule": "0 0 1 1 *",  # on demand only, during the test
        "retention_days": 30,
        "locations": urls,
        "encryption": True,
        "journal_seconds": 0.3,
        **key,
    }


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simple_tftpd", "backup", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "SIMPLE_TFTPD_TOKEN": TOKEN},
    )  # fmt: skip


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def repo_of(url: str, key: bytes = KEY) -> Repository:
    repository: Repository = run(Repository.open(url, key))
    return repository


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


def leader_of(site: Site) -> Daemon:
    leader_id = site.leader(site.running()[0])
    return next(n for n in site.running() if n.config["node"]["node_id"] == leader_id)


def backup_status(site: Site) -> dict[str, Any]:
    _, status = leader_of(site).get_json("/api/v1/backup/status")
    return dict(status)


def journaled(site: Site, revision: int) -> bool:
    locations = backup_status(site)["locations"]
    return all((loc["journal"]["revision"] or 0) >= revision for loc in locations)


def start_site(workdir: Path, stores: Stores, **key: str) -> tuple[Site, EtcdCluster]:
    etcd = EtcdCluster(workdir, size=1).start()
    site = Site(workdir, etcd)
    for _ in range(2):
        node = site.create_node()
        node.config["backup"] = backup_section(list(stores.urls.values()), **key)
        node.start()
    assert wait_for(lambda: all(site.status(n).get("leader") for n in site.nodes), 20)
    return site, etcd


def stop_site(site: Site, etcd: EtcdCluster) -> None:
    # A clean exit: no object-store call left in flight to abort the interpreter's shutdown.
    codes = [node.stop() for node in site.nodes]
    etcd.stop()
    assert all(code in (0, None) for code in codes), codes


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def manifest_of(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [
        {"path": path, "digest": sha(data), "size": len(data), "mode": "0o644"}
        for path, data in sorted(files.items())
    ]


@dataclass
class History:
    site: Site
    etcd: EtcdCluster
    stores: Stores
    moments: dict[str, float | None]
    states: dict[str, dict[str, bytes]]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, stores: Stores) -> Iterator[History]:
    """A site whose content changes between a snapshot and journaled changes:

    t0: FILES0 (journal only)  -> `backup now` (snapshot) -> t1: FILES0
    grub.cfg replaced, old.cfg deleted, added.bin v1 -> t2
    added.bin v2 -> t3; grub.cfg deleted, late.cfg added -> latest
    """
    os.environ["SIMPLE_TFTPD_BACKUP_KEY"] = KEY.hex()
    site, etcd = start_site(
        tmp_path_factory.mktemp("site-a"), stores, key_env="SIMPLE_TFTPD_BACKUP_KEY"
    )
    try:
        node = site.nodes[0]
        # The journal starts with a base snapshot of the empty cluster.
        assert wait_for(lambda: journaled(site, 1), 30), backup_status(site)

        def change(files: dict[str, bytes | None]) -> int:
            version = 0
            for path, data in files.items():
                status, body = (
                    site.delete(node, path) if data is None else site.upload(node, path, data)
                )
                assert status in (200, 201), body
                version = max(version, int(body["version"]))
            return version

        states: dict[str, dict[str, bytes]] = {}
        moments: dict[str, float | None] = {}
        version = change(dict(FILES0))  # type: ignore[arg-type]
        assert wait_for(lambda: journaled(site, version), 30)
        moments["t0"], states["t0"] = time.time(), dict(FILES0)
        now = cli("now", "--api", f"127.0.0.1:{node.api_port}")
        assert now.returncode == 0, now.stdout + now.stderr
        moments["t1"], states["t1"] = time.time(), dict(FILES0)
        time.sleep(0.05)
        change({"boot/grub.cfg": b"set timeout=1\n", "cfg/old.cfg": None, "new/added.bin": b"v1"})
        state = {k: v for k, v in FILES0.items() if k != "cfg/old.cfg"}
        state.update({"boot/grub.cfg": b"set timeout=1\n", "new/added.bin": b"v1"})
        moments["t2"], states["t2"] = time.time(), dict(state)
        time.sleep(0.05)
        version = change({"new/added.bin": b"v2 replaced"})
        assert wait_for(lambda: journaled(site, version), 30)
        state["new/added.bin"] = b"v2 replaced"
        moments["t3"], states["t3"] = time.time(), dict(state)
        time.sleep(0.05)
        version = change({"boot/grub.cfg": None, "cfg/late.cfg": b"late\n"})
        assert wait_for(lambda: journaled(site, version), 30)
        del state["boot/grub.cfg"]
        state["cfg/late.cfg"] = b"late\n"
        moments["latest"], states["latest"] = None, dict(state)
        yield History(site, etcd, stores, moments, states)
    finally:
        stop_site(site, etcd)
        os.environ.pop("SIMPLE_TFTPD_BACKUP_KEY", None)


@pytest.mark.parametrize("kind", KINDS)
def test_restore_to_any_point_in_time(history: History, kind: str, tmp_path: Path) -> None:
    url = history.stores.url(kind)
    repo = repo_of(url)
    for name, at in history.moments.items():
        target = tmp_path / name
        point = run(restore_to_dir(repo, at, target))
        expected = history.states[name]
        assert read_tree(target) == expected, name
        assert point.summary()["files"] == manifest_of(expected), name
    # The same through the CLI, reading the location directly (as after a site loss).
    target = tmp_path / "cli"
    moment = history.moments["t2"]
    assert moment is not None
    restored = cli("restore", "--location", url, "--at", iso(moment), "--to", str(target))
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["files"] == manifest_of(history.states["t2"])
    assert read_tree(target) == history.states["t2"]


def test_status_metrics_and_list_per_location(history: History) -> None:
    site = history.site
    leader = leader_of(site)
    status = cli("status", "--api", f"127.0.0.1:{site.nodes[0].api_port}")
    assert status.returncode == 0, status.stderr
    locations = {loc["url"]: loc for loc in json.loads(status.stdout)["locations"]}
    assert set(locations) == set(history.stores.urls.values())
    metrics = leader.metrics()
    for url, loc in locations.items():
        assert loc["state"] == "ok", loc
        assert loc["last_backup"]["outcome"] == "ok" and loc["last_backup"]["files"] == 4
        label = f'{{location="{url}"}}'
        assert metrics[f"simple_tftpd_backup_last_outcome{label}"] == 1
        assert metrics[f"simple_tftpd_backup_last_success_timestamp_seconds{label}"] > 0
        assert metrics[f"simple_tftpd_backup_last_size_bytes{label}"] == sum(
            len(d) for d in FILES0.values()
        )
        assert metrics[f"simple_tftpd_backup_last_duration_seconds{label}"] >= 0
        t3 = history.moments["t3"]
        assert t3 is not None
        assert metrics[f"simple_tftpd_backup_journal_timestamp_seconds{label}"] > t3
    listing = cli("list", "--api", f"127.0.0.1:{leader.api_port}")
    assert listing.returncode == 0, listing.stderr
    for entry in json.loads(listing.stdout)["locations"]:
        assert [s["files"] for s in entry["snapshots"]] == [0, 4], entry
    direct = cli("list", "--location", history.stores.url("file"))
    assert direct.returncode == 0 and json.loads(direct.stdout)["encryption"] == "aes-256-gcm"


@pytest.mark.parametrize("kind", KINDS)
def test_verify_passes_then_names_tampered_truncated_and_missing_objects(
    history: History, kind: str, tmp_path: Path
) -> None:
    url = history.stores.url(kind)
    repo = repo_of(url)
    clean = cli("verify", "--location", url)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["ok"] is True
    store = repo.store

    def damage(name: str, change: Any) -> bytes:
        original = bytes(obstore.get(store, name).bytes())
        obstore.put(store, name, change(original))
        return original

    # A flipped bit in a blob: same size, so only reading it shows it.
    blob = repo.blob_key(hashlib.sha256(BIG).hexdigest())
    original = damage(blob, lambda b: b[:1000] + bytes([b[1000] ^ 1]) + b[1001:])
    try:
        report = run(verify(repo))
        assert any(p.startswith(blob) and "boot/ipxe.efi" in p for p in report.problems)
        assert run(verify(repo, full=False)).ok
        with pytest.raises(IntegrityError, match=blob):
            run(restore_to_dir(repo, None, tmp_path / "tampered"))
        assert not (tmp_path / "tampered").exists()
        failed = cli("verify", "--location", url)
        assert failed.returncode == 1 and blob in failed.stdout
        restore = cli("restore", "--location", url, "--at", "latest", "--to", str(tmp_path / "c"))
        assert restore.returncode == 1 and blob in restore.stderr, restore.stderr
        assert not (tmp_path / "c").exists()
    finally:
        obstore.put(store, blob, original)

    # A truncated journal segment: the one holding added.bin v2.
    segments = run(repo.segments())
    segment = next(
        ref
        for ref in segments
        if any(
            r.entry is not None and r.entry.digest == sha(b"v2 replaced")
            for r in run(repo.read_segment(ref)).records
        )
    )
    original = damage(segment.name, lambda b: b[:-10])
    try:
        assert any(p.startswith(segment.name) for p in run(verify(repo)).problems)
        for moment in ("t3", "latest"):
            with pytest.raises(IntegrityError, match=segment.name):
                run(state_at(repo, history.moments[moment]))
        # A snapshot's own moment needs no journal.
        snapshot_time = run(repo.read_index()).snapshots[-1].ts
        assert len(run(state_at(repo, snapshot_time)).entries) == len(FILES0)
    finally:
        obstore.put(store, segment.name, original)

    # A missing snapshot: the one `backup now` took.
    index = run(repo.read_index())
    snapshot = index.snapshots[-1]
    original = damage(snapshot.name, lambda b: b)
    obstore.delete(store, snapshot.name)
    try:
        report = run(verify(repo))
        assert f"{snapshot.name}: missing (listed in the index)" in report.problems
        with pytest.raises(MissingObject, match=snapshot.name):
            run(state_at(repo, history.moments["t1"]))
    finally:
        obstore.put(store, snapshot.name, original)
    assert run(verify(repo)).ok


def test_a_wrong_key_fails_cleanly(history: History, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text(bytes(32).hex())
    for kind in history.stores.urls:
        url = history.stores.url(kind)
        check = cli("verify", "--location", url, "--key-file", str(wrong))
        assert check.returncode == 1 and "wrong key" in check.stderr, check.stderr
        target = tmp_path / f"restore-{kind}"
        restore = cli(
            "restore", "--location", url, "--key-file", str(wrong), "--at", "latest",
            "--to", str(target),
        )  # fmt: skip
        assert restore.returncode == 1 and "wrong key" in restore.stderr
        assert not target.exists()


def test_site_loss_restore_into_an_empty_new_cluster(
    history: History, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stop_site(history.site, history.etcd)
    workdir = tmp_path_factory.mktemp("site-a-rebuilt")
    key_file = workdir / "backup.key"
    key_file.write_text(KEY.hex())
    site, etcd = start_site(workdir, history.stores, key_file=str(key_file))
    try:
        # An empty new cluster does not bury the old backups under an empty snapshot.
        assert wait_for(
            lambda: all(loc["state"] == "waiting" for loc in backup_status(site)["locations"]), 20
        ), backup_status(site)
        t3 = history.moments["t3"]
        assert t3 is not None
        follower = next(n for n in site.nodes if n is not leader_of(site))
        restored = cli(
            "restore", "--into-cluster", "--at", iso(t3), "--location", history.stores.url("s3"),
            "--api", f"127.0.0.1:{follower.api_port}",  # answered by the leader
        )  # fmt: skip
        assert restored.returncode == 0, restored.stdout + restored.stderr
        result = json.loads(restored.stdout)["result"]
        assert result["files"] == len(history.states["t3"])
        for path, data in history.states["t3"].items():
            assert site.wait_served_everywhere(path, data), site.describe(path)
        for path in set(history.states["latest"]) - set(history.states["t3"]):
            assert site.wait_served_everywhere(path, None)
        _, listing = site.request(site.nodes[0], "GET", "/api/v1/files")
        assert manifest_of(history.states["t3"]) == [
            {"path": f["path"], "digest": f["digest"], "size": f["size"], "mode": f["mode"]}
            for f in listing["files"]
        ]
        # Backups of the new cluster go on from the restored state, in a new epoch.
        for loc in backup_status(site)["locations"]:
            assert loc["state"] == "ok", loc
        for url in history.stores.urls.values():
            point = run(state_at(repo_of(url), None))
            assert len(point.entries) == len(history.states["t3"])
    finally:
        stop_site(site, etcd)


def test_retention_removes_expired_snapshots_and_only_unreferenced_blobs(
    history: History,
) -> None:
    url = history.stores.url("file")
    repo = repo_of(url)
    before = run(state_at(repo, None))
    index = run(repo.read_index())
    newest = max(index.snapshots, key=lambda s: s.ts)
    result = run(prune(repo, time.time() + 31 * 86400, days=30, grace=0))
    assert result["kept_snapshots"] == [newest.name]
    assert result["dropped_blobs"] > 0
    remaining = set(run(repo.listing("blobs/")))
    assert repo.blob_key(sha(BIG)) in remaining  # uploaded first, still needed
    assert repo.blob_key(sha(FILES0["cfg/old.cfg"])) not in remaining
    kept = run(repo.read_snapshot(newest)).live()
    for entry in kept.values():
        assert repo.blob_key(entry.digest) in remaining
    assert run(verify(repo)).ok
    after = run(state_at(repo, None))
    assert {p: e.digest for p, e in after.entries.items()} == {
        p: e.digest for p, e in before.entries.items()
    }
