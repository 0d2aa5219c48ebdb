"""A site CA for tests, made with the same code as `fab certs` (deploy/certs.py)."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import certs

LOOPBACK_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Issued:
    name: str
    cert_file: Path
    key_file: Path


class Pki:
    def __init__(self, directory: Path, name: str = "test site CA") -> None:
        self.directory = directory
        self.authority, _ = certs.ensure_authority(directory, name)

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def crl_file(self) -> Path:
        return self.directory / "crl.pem"

    def issue(
        self,
        name: str,
        days: int = 30,
        now: datetime.datetime | None = None,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = LOOPBACK_IPS,
    ) -> Issued:
        """A node or client certificate for loopback (written over an earlier one: renewal)."""
        cert, key = certs.issue(self.authority, name, dns, ips, days=days, now=now)
        issued = Issued(name, self.directory / f"{name}.pem", self.directory / f"{name}.key")
        certs.write_pair(issued.cert_file, issued.key_file, cert, key)
        return issued

    def revoke(self, issued: Issued) -> None:
        certs.revoke(self.directory, issued.cert_file)

    def tls_config(self, node: Issued, **extra: Any) -> dict[str, Any]:
        """The daemon's `security.tls` section for a node certificate of this CA."""
        return {
            "enabled": True,
            "ca_file": str(self.ca_file),
            "cert_file": str(node.cert_file),
            "key_file": str(node.key_file),
            "crl_file": str(self.crl_file),
            **extra,
        }

    def client_context(
        self,
        identity: Issued | None = None,
        maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ) -> ssl.SSLContext:
        """Verifies servers against this CA; shows `identity`'s certificate if given."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.maximum_version = maximum
        if identity is not None:
            context.load_cert_chain(str(identity.cert_file), str(identity.key_file))
        return context
