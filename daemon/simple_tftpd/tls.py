"""TLS 1.3 with the site CA (`security.tls`): the API's server context, this node's client
context (blob pulls from peers, site sync) and its etcd credentials, reloadable on SIGHUP.

Reloading drops nothing: the API listens with one SSLContext for its whole life, and that
context's SNI callback, which OpenSSL runs for every handshake (with or without a server
name), hands the connection the newest context. Connections already open keep what they
started with; every new handshake gets the renewed certificate, CA bundle and CRL at once.
What OpenSSL copies from the listening context into each connection before the callback runs
(whether a client certificate is required, whether CRLs are checked) takes effect on restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simple_tftpd.config import TlsConfig

log = logging.getLogger("simple_tftpd.tls")

# The guide promises TLS 1.3 for every connection; nothing the daemon talks to needs less.
MIN_VERSION = ssl.TLSVersion.TLSv1_3


class TlsError(Exception):
    """A TLS file is missing, unreadable, or does not fit the others."""


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes of one generation of files (gRPC takes bytes, not paths)."""

    ca: bytes
    cert: bytes
    key: bytes
    not_after: float  # when this node's certificate expires (Unix time)


def _read(path: Path | None, what: str) -> bytes:
    if path is None:
        raise TlsError(f"security.tls.{what} is not set")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"security.tls.{what}: cannot read {path}: {exc.strerror or exc}") from None


def read_material(config: TlsConfig) -> TlsMaterial:
    # cryptography only when TLS is on: a plain daemon does not carry its pages.
    from cryptography import x509

    cert = _read(config.cert_file, "cert_file")
    try:
        leaf = x509.load_pem_x509_certificate(cert)
    except ValueError as exc:
        raise TlsError(
            f"security.tls.cert_file: {config.cert_file}: not a PEM certificate: {exc}"
        ) from None
    return TlsMaterial(
        ca=_read(config.ca_file, "ca_file"),
        cert=cert,
        key=_read(config.key_file, "key_file"),
        not_after=leaf.not_valid_after_utc.timestamp(),
    )


def _load(context: ssl.SSLContext, config: TlsConfig) -> None:
    try:
        context.load_cert_chain(str(config.cert_file), str(config.key_file))
        context.load_verify_locations(cafile=str(config.ca_file))
        if config.crl_file is not None:
            # A PEM file of CRLs loads into the same store as the CAs.
            context.load_verify_locations(cafile=str(config.crl_file))
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"security.tls: cannot load the certificate, key, CA or CRL: {exc}"
        ) from None


def server_context(config: TlsConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    _load(context, config)
    # Optional still verifies a certificate that is sent; it lets token clients in without one.
    context.verify_mode = ssl.CERT_REQUIRED if config.require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(config: TlsConfig) -> ssl.SSLContext:
    """For this node's own requests: the server must prove a name the URL holds (an IP or a
    DNS SAN), and the node proves its own identity with the same certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MIN_VERSION
    _load(context, config)
    return context


def peer_names(peercert: dict[str, Any] | None) -> list[str]:
    """The names a verified peer certificate proves: subject common names, DNS and IP SANs."""
    if not peercert:
        return []
    names = [
        str(value)
        for rdn in peercert.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    ]
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            names.append(str(value))
        elif kind == "IP Address":
            names.append(normalize_name(str(value)))
    return names


def normalize_name(name: str) -> str:
    """IP addresses in one canonical spelling (ssl prints IPv6 SANs in full and uppercase)."""
    try:
        return str(ipaddress.ip_address(name.strip()))
    except ValueError:
        return name


class TlsState:
    """The TLS contexts of the process that serves the API; `reload` swaps in new ones."""

    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        self._build(config)
        # The listening context lives as long as the listener; see the module docstring.
        self.listening = self._server
        self.listening.sni_callback = self._select

    def _build(self, config: TlsConfig) -> None:
        # Build everything before assigning anything: a bad file changes nothing.
        material = read_material(config)
        server, client = server_context(config), client_context(config)
        self._server, self.client, self.material = server, client, material
        self.config = config

    def _select(self, connection: Any, server_name: str | None, listening: Any) -> None:
        connection.context = self._server

    def reload(self, config: TlsConfig) -> bool:
        """Load the files again (renewed certificate, CA bundle, CRL); False if they are
        unusable, in which case the running contexts stay."""
        try:
            self._build(config)
        except TlsError as exc:
            log.error("SIGHUP: TLS files not reloaded, keeping the running ones: %s", exc)
            return False
        log.info("SIGHUP: TLS certificate reloaded (valid until %s)", self.expires())
        return True

    def expires(self) -> str:
        moment = datetime.datetime.fromtimestamp(self.material.not_after, datetime.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def restart_only_changes(running: TlsConfig, new: TlsConfig) -> Iterable[str]:
    """Keys of `security.tls` whose change needs a restart (see the module docstring)."""
    if new.enabled != running.enabled:
        yield "enabled"
    if new.require_client_cert != running.require_client_cert:
        yield "require_client_cert"
    if (new.crl_file is None) != (running.crl_file is None):
        yield "crl_file (set or unset)"
