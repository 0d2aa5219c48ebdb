"""Identities, roles and TLS contexts without sockets."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from simple_tftpd.access import AccessPolicy, Identity, Permission
from simple_tftpd.config import TlsConfig, parse_config
from simple_tftpd.tls import TlsError, TlsState, peer_names, restart_only_changes, server_context
from tests.support.pki import Issued, Pki

API_TOKEN = "api-token-0123456789abcdef"
SYNC = "sync-token-0123456789abcdef"
READER = "reader-token-0123456789abc"


def policy(tls: bool = False, **access: Any) -> AccessPolicy:
    tls_section = (
        {"enabled": True, "ca_file": "/ca", "cert_file": "/c", "key_file": "/k"} if tls else {}
    )
    return AccessPolicy(
        parse_config(
            {
                "api": {"token": API_TOKEN},
                "multi_site": {"sync": {"token": SYNC}},
                "security": {"tls": tls_section, "access": access},
            }
        )
    )


def peercert(common_name: str, *sans: tuple[str, str]) -> dict[str, Any]:
    # The shape ssl's getpeercert() returns for a verified certificate.
    return {"subject": ((("commonName", common_name),),), "subjectAltName": sans}


def test_reads_are_open_without_tls_and_closed_with_it() -> None:
    assert policy().granted([]) == {Permission.READ}
    assert policy(tls=True).granted([]) == frozenset()
    assert policy(tls=True, anonymous_read=True).granted([]) == {Permission.READ}
    assert policy(anonymous_read=False).granted([]) == frozenset()


def test_tokens_map_to_roles() -> None:
    p = policy(tokens=[{"name": "grafana", "token": READER, "role": "read_only"}])
    assert p.token_identity(f"Bearer {API_TOKEN}") == Identity("api.token", "admin")
    assert p.token_identity(f"bearer {SYNC}") == Identity("multi_site.sync.token", "site_sync")
    assert p.token_identity(f"Bearer {READER}") == Identity("token:grafana", "read_only")
    for header in ("", "Bearer", f"Basic {API_TOKEN}", f"Bearer {API_TOKEN}x", "Bearer "):
        assert p.token_identity(header) is None, header


def test_roles_grant_what_they_say() -> None:
    admin, reader, peer = (
        Identity("a", "admin"),
        Identity("r", "read_only"),
        Identity("s", "site_sync"),
    )
    closed = policy(tls=True)
    assert closed.granted([reader]) == {Permission.READ}
    assert closed.granted([admin]) == {Permission.READ, Permission.BLOBS, Permission.ADMIN}
    assert closed.granted([peer]) == {Permission.BLOBS, Permission.CHANGES}
    # A certificate and a token together: the union.
    assert Permission.ADMIN in closed.granted([reader, admin])


def test_certificates_match_common_name_or_san_and_the_highest_role_wins() -> None:
    p = policy(
        certificates=[
            {"name": "ops.example.net", "role": "read_only"},
            {"name": "2001:db8::7", "role": "admin"},
            {"name": "dashboard", "role": "read_only"},
        ]
    )
    assert p.certificate_identity(peercert("dashboard")) == Identity("cert:dashboard", "read_only")
    by_dns = peercert("someone", ("DNS", "ops.example.net"))
    assert p.certificate_identity(by_dns) == Identity("cert:ops.example.net", "read_only")
    # ssl spells IPv6 SANs in full and in capitals; both sides are normalised.
    both = peercert("someone", ("DNS", "ops.example.net"), ("IP Address", "2001:DB8:0:0:0:0:0:7"))
    assert p.certificate_identity(both) == Identity("cert:2001:db8::7", "admin")
    assert p.certificate_identity(peercert("nobody", ("DNS", "x.example.net"))) is None
    assert p.certificate_identity(None) is None
    assert peer_names(both) == ["someone", "ops.example.net", "2001:db8::7"]


@pytest.fixture(scope="module")
def local_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Issued]:
    pki = Pki(tmp_path_factory.mktemp("policy-pki"))
    return pki, pki.issue("node")


def test_contexts_are_tls13_only(local_pki: tuple[Pki, Issued]) -> None:
    pki, node = local_pki
    config = TlsConfig.model_validate(pki.tls_config(node))
    state = TlsState(config)
    assert state.listening.minimum_version == ssl.TLSVersion.TLSv1_3
    assert state.client.minimum_version == ssl.TLSVersion.TLSv1_3
    assert state.listening.verify_mode == ssl.CERT_REQUIRED
    assert state.client.check_hostname
    optional = config.model_copy(update={"require_client_cert": False})
    assert server_context(optional).verify_mode == ssl.CERT_OPTIONAL


def test_unusable_files_are_reported_by_key(local_pki: tuple[Pki, Issued], tmp_path: Path) -> None:
    pki, node = local_pki
    config = TlsConfig.model_validate(pki.tls_config(node))
    with pytest.raises(TlsError, match=r"security\.tls\.key_file: cannot read"):
        TlsState(config.model_copy(update={"key_file": tmp_path / "missing.key"}))
    other = pki.issue("other")
    with pytest.raises(TlsError, match="cannot load the certificate, key"):
        TlsState(config.model_copy(update={"key_file": other.key_file}))  # not node's key
    state = TlsState(config)
    assert not state.reload(config.model_copy(update={"cert_file": tmp_path / "missing.pem"}))
    assert state.config == config  # the running files stay


def test_what_needs_a_restart() -> None:
    on = TlsConfig(enabled=True, ca_file=Path("/ca"), cert_file=Path("/c"), key_file=Path("/k"))
    assert list(restart_only_changes(on, on.model_copy(update={"cert_file": Path("/d")}))) == []
    changed = on.model_copy(update={"require_client_cert": False, "crl_file": Path("/crl")})
    assert list(restart_only_changes(on, changed)) == [
        "require_client_cert",
        "crl_file (set or unset)",
    ]
