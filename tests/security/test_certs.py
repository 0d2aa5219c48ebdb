"""`fab certs`: the site CA, per-node certificates, renewal and revocation (deploy/certs.py)."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from deploy import certs
from deploy.inventory import Site, load_inventory

TLS: dict[str, Any] = {
    "enabled": True,
    "ca_file": "/etc/simple-tftpd/tls/ca.pem",
    "cert_file": "/etc/simple-tftpd/tls/node.pem",
    "key_file": "/etc/simple-tftpd/tls/node.key",
    "crl_file": "/etc/simple-tftpd/tls/crl.pem",
}


def site(tmp_path: Path, address: str = "10.20.0.11") -> Site:
    inventory = {
        "site": "fra1",
        "config": {
            "security": {"tls": TLS},
            "clustering": {"enabled": True},
            "api": {"token": "a-long-shared-admin-token"},
        },
        "hosts": [
            {"name": "tftp-1", "address": address},
            {"name": "etcd-1", "address": "etcd-1.fra1.example.net", "roles": ["etcd"]},
        ],
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(inventory))
    return load_inventory(path)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_issue_site_creates_the_ca_and_one_certificate_per_host(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    report = certs.issue_site(site(tmp_path), pki)
    assert [(r.name, r.action) for r in report] == [("tftp-1", "issued"), ("etcd-1", "issued")]
    assert mode(pki / "ca.key") == 0o600
    assert mode(pki / "nodes" / "tftp-1.key") == 0o600
    authority = certs.load_authority(pki)
    node = certs.load_cert(pki / "nodes" / "tftp-1.pem")
    assert node.issuer == authority.cert.subject
    node.verify_directly_issued_by(authority.cert)
    dns, ips = certs.san_names(node)
    assert {"tftp-1", "localhost"} <= dns
    assert {ipaddress.ip_address("10.20.0.11"), ipaddress.ip_address("127.0.0.1")} <= ips
    assert certs.san_names(certs.load_cert(pki / "nodes" / "etcd-1.pem"))[0] >= {
        "etcd-1.fra1.example.net"
    }
    assert x509.load_pem_x509_crl((pki / "crl.pem").read_bytes()).is_signature_valid(
        authority.cert.public_key()  # type: ignore[arg-type]
    )


def test_a_second_run_keeps_good_certificates_and_renews_the_rest(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    certs.issue_site(site(tmp_path), pki)
    first = certs.load_cert(pki / "nodes" / "tftp-1.pem")
    assert {r.action for r in certs.issue_site(site(tmp_path), pki)} == {"kept"}
    # A host that moved gets a new certificate; the CA stays the same.
    report = certs.issue_site(site(tmp_path, address="10.20.0.99"), pki)
    assert report[0].action == "renewed (addresses changed)"
    renewed = certs.load_cert(pki / "nodes" / "tftp-1.pem")
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key() != first.public_key()  # a new key, too
    renewed.verify_directly_issued_by(certs.load_authority(pki).cert)
    # Inside the renewal window: renewed; forced: renewed.
    report = certs.issue_site(site(tmp_path, address="10.20.0.99"), pki, renew_within_days=400)
    assert report[0].action.startswith("renewed (expires ")
    forced = certs.issue_site(site(tmp_path, address="10.20.0.99"), pki, force=True)
    assert forced[0].action == "renewed (forced)"


def test_renewal_reasons(tmp_path: Path) -> None:
    authority = certs.create_authority("CA")
    other = certs.create_authority("CA")  # the same name, another key
    path = tmp_path / "n.pem"
    assert certs.renewal_reason(path, authority, ["n"], [], 30) == "new"
    cert, key = certs.issue(other, "n", ["n"])
    certs.write_pair(path, path.with_suffix(".key"), cert, key)
    assert certs.renewal_reason(path, authority, ["n"], [], 30) == "issued by another CA"
    cert, key = certs.issue(authority, "n", ["n"], days=10)
    certs.write_pair(path, path.with_suffix(".key"), cert, key)
    assert (certs.renewal_reason(path, authority, ["n"], [], 30) or "").startswith("expires")
    assert certs.renewal_reason(path, authority, ["n"], [], 5) is None


def test_revocation_lands_in_the_crl(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    certs.ensure_authority(pki, "CA")
    client = certs.issue_client(pki, "ops-admin")
    serial = certs.revoke(pki, client)
    assert serial in certs.revoked_serials(pki)
    # Re-signing keeps what was revoked.
    certs.issue_site(site(tmp_path), pki)
    assert serial in certs.revoked_serials(pki)
    stranger = certs.create_authority("CA")
    cert, key = certs.issue(stranger, "x")
    certs.write_pair(tmp_path / "x.pem", tmp_path / "x.key", cert, key)
    with pytest.raises(certs.CertError, match="not issued by the CA"):
        certs.revoke(pki, tmp_path / "x.pem")


def test_host_files_follow_the_nodes_config(tmp_path: Path) -> None:
    the_site = site(tmp_path)
    pki = tmp_path / "pki"
    node = the_site.node("tftp-1")
    with pytest.raises(certs.CertError, match="run `fab certs` first"):
        certs.host_files(the_site, node, pki)
    certs.issue_site(the_site, pki)
    files = {f.path: f for f in certs.host_files(the_site, node, pki)}
    assert set(files) == {TLS["ca_file"], TLS["cert_file"], TLS["key_file"], TLS["crl_file"]}
    key = files[TLS["key_file"]]
    assert (key.mode, key.owner) == (0o600, the_site.settings.install.user)
    assert files[TLS["cert_file"]].content == (pki / "nodes" / "tftp-1.pem").read_bytes()
    assert b"PRIVATE KEY" not in b"".join(
        f.content for p, f in files.items() if p != TLS["key_file"]
    )
    # An etcd member: its files where etcd-tls.env.j2 points, its key readable by etcd only.
    member = {f.path: f for f in certs.host_files(the_site, the_site.node("etcd-1"), pki)}
    paths = certs.etcd_tls_paths(the_site)
    assert set(member) == {paths.ca, paths.cert, paths.key, paths.crl}
    assert (member[paths.key].mode, member[paths.key].owner) == (0o600, certs.ETCD_USER)
    # Outside the config dir (0750 root:simple-tftpd), which etcd cannot enter.
    assert not paths.key.startswith(the_site.settings.install.config_dir + "/")
    # Keys first: a reader that sees a new certificate finds its key in place.
    assert certs.host_files(the_site, node, pki)[0].is_key
    assert certs.site_files(the_site, pki).keys() == {"tftp-1", "etcd-1"}


def test_a_site_without_tls_needs_no_pki(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "site": "fra1",
                "config": {"clustering": {"enabled": True}, "api": {"token": "x" * 24}},
                "hosts": [{"name": "tftp-1", "address": "10.20.0.11", "roles": ["tftp", "etcd"]}],
            }
        )
    )
    plain = load_inventory(path)
    # No PKI directory at all: nothing to copy, nothing asked of `fab certs`.
    assert certs.site_files(plain, tmp_path / "no-such-pki") == {}
    assert certs.host_files(plain, plain.node("tftp-1"), tmp_path / "no-such-pki") == []


def test_site_files_refuse_a_certificate_of_another_ca(tmp_path: Path) -> None:
    the_site = site(tmp_path)
    pki = tmp_path / "pki"
    certs.issue_site(the_site, pki)
    stranger = certs.create_authority("other CA")
    cert, key = certs.issue(stranger, "tftp-1", ["tftp-1"], ["10.20.0.11"])
    certs.write_pair(pki / "nodes" / "tftp-1.pem", pki / "nodes" / "tftp-1.key", cert, key)
    with pytest.raises(certs.CertError, match="tftp-1: its certificate was not issued by the CA"):
        certs.site_files(the_site, pki)


def test_expired_certificates_can_be_made_for_tests() -> None:
    authority = certs.create_authority("CA")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=100)
    cert, _ = certs.issue(authority, "old", days=30, now=past)
    assert cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC)


def test_the_fab_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMPLE_TFTPD_PKI", str(tmp_path / "pki"))
    the_site = site(tmp_path)
    lines = certs.certs_task(the_site, client="ops-admin")
    directory = tmp_path / "pki" / "fra1"
    assert lines[0] == f"tftp-1: issued ({directory / 'nodes' / 'tftp-1.pem'})"
    assert lines[-1] == f"ops-admin: issued ({directory / 'clients' / 'ops-admin.pem'})"
    assert certs.certs_task(the_site)[0].startswith("tftp-1: kept")
    [line] = certs.certs_task(the_site, revoke_path=str(directory / "clients" / "ops-admin.pem"))
    assert line.startswith("revoked serial ")
    assert len(certs.revoked_serials(directory)) == 1
