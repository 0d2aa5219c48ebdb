"""A site's certificate authority and its TLS certificates (`fab certs`), with `cryptography`.

Layout of a site's PKI directory (on the operator's machine, by default
~/.simple-tftpd/pki/<site> or $SIMPLE_TFTPD_PKI/<site>; `ca.key` never leaves it):

    ca.pem, ca.key          the site CA (ECDSA P-256, 10 years)
    crl.pem                 the CA's revocation list, re-signed on every run
    nodes/<name>.pem|.key   one per host of the site: the daemon's API (server) and its
                            connections to peers, peer sites and etcd (client), and etcd itself
    clients/<name>.pem|.key operators and tools (`simple-tftpd --cert`, Grafana, CI)

Renewal is a new key and certificate from the same CA, written over the old files with a
rename (a reader never sees half a file), then SIGHUP: the daemon swaps its TLS contexts for
new connections and keeps the ones it has. Certificates are renewed when they expire within
`renew_within_days`, when the CA changed, or when a host's addresses changed. Every key file
is 0600.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy import DeployError
from deploy.inventory import Node, Site
from deploy.render import EtcdTlsPaths, HostPaths, etcd_uses_tls

CA_DAYS = 3650
CERT_DAYS = 365
RENEW_WITHIN_DAYS = 30
# A CRL past its next-update date fails every verification that checks it, so it is re-signed
# on every run and lives much longer than the renewal cadence.
CRL_DAYS = 180
# A minute of slack for hosts whose clocks run a little behind the operator's.
BACKDATE = datetime.timedelta(minutes=5)
LOOPBACK = ("127.0.0.1", "::1", "localhost")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CertError(DeployError):
    """A PKI file is missing, unreadable or does not belong to this CA."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: every TLS 1.3 stack here (OpenSSL, gRPC's BoringSSL, etcd's Go) supports it and
    # it is far cheaper than RSA to generate and to handshake with.
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def name(self) -> str:
        return _common_name(self.cert)


def create_authority(
    name: str, days: int = CA_DAYS, now: datetime.datetime | None = None
) -> Authority:
    """A new self-signed CA that may only sign end-entity certificates (path length 0)."""
    now = now or _now()
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(authority=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue(
    authority: Authority,
    common_name: str,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    days: int = CERT_DAYS,
    now: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for both ends of a connection: nodes serve the API and connect to
    peers and etcd with the same identity; operator certificates get the same shape.

    `now` may lie in the past (tests make expired certificates with it)."""
    now = now or _now()
    key = _new_key()
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in _unique(dns_names)]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _unique(ip_addresses)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(authority=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(authority.key, hashes.SHA256()), key


def _key_usage(authority: bool) -> x509.KeyUsage:
    # A CA signs certificates and CRLs only; a leaf signs handshakes (ECDSA) only.
    return x509.KeyUsage(
        digital_signature=not authority,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=authority,
        crl_sign=authority,
        encipher_only=False,
        decipher_only=False,
    )


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


# --- files ---------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with `mode` from the start (a key is never world-readable, not
    even for a moment) and switch it in with one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    # Key first: a reader that sees the new certificate finds its key already in place.
    write_atomic(key_path, key_pem(key), 0o600)
    write_atomic(cert_path, cert_pem(cert), 0o644)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertError(f"{path}: not a readable PEM certificate: {exc}") from None


def load_authority(directory: Path) -> Authority:
    cert = load_cert(directory / "ca.pem")
    try:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertError(f"{directory / 'ca.key'}: not a readable private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertError(f"{directory}: ca.key does not belong to ca.pem")
    return Authority(cert, key)


def ensure_authority(directory: Path, name: str) -> tuple[Authority, bool]:
    """The CA in `directory`, created first if there is none; (authority, created)."""
    if (directory / "ca.pem").exists() or (directory / "ca.key").exists():
        return load_authority(directory), False
    authority = create_authority(name)
    write_pair(directory / "ca.pem", directory / "ca.key", authority.cert, authority.key)
    write_crl(directory, authority)
    return authority, True


# --- revocation ----------------------------------------------------------------------------------


def revoked_serials(directory: Path) -> dict[int, datetime.datetime]:
    path = directory / "crl.pem"
    if not path.exists():
        return {}
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as exc:
        raise CertError(f"{path}: not a PEM CRL: {exc}") from None
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


def write_crl(
    directory: Path,
    authority: Authority,
    revoke: Iterable[int] = (),
    now: datetime.datetime | None = None,
) -> Path:
    """Re-sign the CA's CRL with the serials already in it plus `revoke`."""
    now = now or _now()
    revoked = revoked_serials(directory)
    for serial in revoke:
        revoked.setdefault(serial, now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + datetime.timedelta(days=CRL_DAYS))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    path = directory / "crl.pem"
    crl = builder.sign(authority.key, hashes.SHA256())
    write_atomic(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return path


def revoke(directory: Path, cert_path: Path) -> int:
    """Add the certificate at `cert_path` to the CRL; returns its serial number."""
    authority = load_authority(directory)
    cert = load_cert(cert_path)
    if not issued_by(cert, authority):
        raise CertError(f"{cert_path} was not issued by the CA in {directory}")
    write_crl(directory, authority, [cert.serial_number])
    return int(cert.serial_number)


# --- renewal -------------------------------------------------------------------------------------


def _common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def san_names(cert: x509.Certificate) -> tuple[set[str], set[IpAddress]]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    ips = {ip for ip in sans.get_values_for_type(x509.IPAddress) if isinstance(ip, IpAddress)}
    return set(sans.get_values_for_type(x509.DNSName)), ips


def renewal_reason(
    cert_path: Path,
    authority: Authority,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    within_days: int,
    now: datetime.datetime | None = None,
) -> str | None:
    """Why the certificate at `cert_path` must be (re)issued, or None if it is fine."""
    if not cert_path.exists() or not cert_path.with_suffix(".key").exists():
        return "new"
    cert = load_cert(cert_path)
    if not issued_by(cert, authority):
        return "issued by another CA"
    now = now or _now()
    if cert.not_valid_after_utc - now < datetime.timedelta(days=within_days):
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    dns, ips = san_names(cert)
    wanted_ips = {ipaddress.ip_address(ip) for ip in ip_addresses}
    if dns != set(dns_names) or ips != wanted_ips:
        return "addresses changed"
    return None


def issued_by(cert: x509.Certificate, authority: Authority) -> bool:
    """By the signature, not the name: a re-created CA may carry the same name."""
    try:
        cert.verify_directly_issued_by(authority.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --- a site --------------------------------------------------------------------------------------


def node_names(node: Node) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a host's certificate must cover: everything a peer, a peer
    site, a load balancer, etcd or the local CLI may dial it by."""
    candidates = [node.name, node.address, *LOOPBACK]
    config = node.config
    if config.clustering.advertise:
        candidates.append(config.clustering.advertise.rpartition(":")[0].strip("[]"))
    if config.api.bind not in ("0.0.0.0", "::"):
        candidates.append(config.api.bind)
    dns, ips = [], []
    for name in _unique(candidates):
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return dns, ips


@dataclass(frozen=True)
class Issued:
    name: str
    path: Path
    action: str  # "issued", "renewed (<reason>)" or "kept"


def issue_site(
    site: Site,
    directory: Path,
    renew_within_days: int = RENEW_WITHIN_DAYS,
    force: bool = False,
) -> list[Issued]:
    """Create the site CA if needed and (re)issue every host's certificate that needs it."""
    authority, _ = ensure_authority(directory, f"simple-tftpd {site.site_id} CA")
    report = []
    for node in site.nodes:
        dns, ips = node_names(node)
        cert_path = directory / "nodes" / f"{node.name}.pem"
        reason = renewal_reason(cert_path, authority, dns, ips, renew_within_days)
        if reason is None and not force:
            report.append(Issued(node.name, cert_path, "kept"))
            continue
        cert, key = issue(authority, node.name, dns, ips)
        write_pair(cert_path, cert_path.with_suffix(".key"), cert, key)
        action = "issued" if reason == "new" else f"renewed ({reason or 'forced'})"
        report.append(Issued(node.name, cert_path, action))
    write_crl(directory, authority)
    return report


def issue_client(directory: Path, name: str, days: int = CERT_DAYS) -> Path:
    """A certificate for an operator or a tool; map its name to a role in
    `security.access.certificates`."""
    authority = load_authority(directory)
    cert, key = issue(authority, name, days=days)
    path = directory / "clients" / f"{name}.pem"
    write_pair(path, path.with_suffix(".key"), cert, key)
    return path


def default_directory(site_id: str) -> Path:
    """Outside any checkout, so the CA key is never committed by accident."""
    configured = os.environ.get("SIMPLE_TFTPD_PKI")
    base = Path(configured) if configured else Path.home() / ".simple-tftpd" / "pki"
    return base / site_id


def certs_task(
    site: Site,
    directory: Path | None = None,
    *,
    force: bool = False,
    renew_within_days: int = RENEW_WITHIN_DAYS,
    client: str | None = None,
    revoke_path: str | None = None,
) -> list[str]:
    """`fab certs`: what the task does, as lines to print (the fabfile stays thin)."""
    directory = directory or default_directory(site.site_id)
    if revoke_path is not None:
        serial = revoke(directory, Path(revoke_path))
        return [f"revoked serial {serial:x}; `fab deploy` distributes {directory / 'crl.pem'}"]
    lines = [
        f"{item.name}: {item.action} ({item.path})"
        for item in issue_site(site, directory, renew_within_days, force)
    ]
    if client is not None:
        lines.append(f"{client}: issued ({issue_client(directory, client)})")
    return lines


@dataclass(frozen=True)
class TlsFile:
    """One PKI file for a host: where it goes, its bytes, mode and owner. Keys are 0600 and
    owned by the one user that reads them (the daemon's, or etcd's); the rest is public."""

    path: str
    content: bytes
    mode: int
    owner: str = "root"
    group: str = "root"

    @property
    def is_key(self) -> bool:
        return self.mode & 0o077 == 0


# The user templates/systemd/simple-tftpd-etcd.service.j2 runs etcd as.
ETCD_USER = "etcd"


def etcd_tls_paths(site: Site) -> EtcdTlsPaths:
    return HostPaths(site.settings.install).etcd_tls


def needs_files(site: Site) -> bool:
    """Whether `fab deploy` has PKI files to copy to this site at all."""
    return etcd_uses_tls(site) or any(n.config.security.tls.enabled for n in site.tftp_nodes)


def host_files(site: Site, node: Node, directory: Path) -> list[TlsFile]:
    """What `fab deploy` copies to a host: for the daemon, the CA bundle, CRL, certificate and
    key at the paths of its `security.tls`; for an etcd member of a TLS site, the same at
    etcd_tls_paths. Both use the host's one certificate (its names cover every way it is
    dialled). Keys come first, so a reader that sees a new certificate finds its key."""
    files: list[TlsFile] = []
    tls = node.config.security.tls
    wanted_daemon = node.has("tftp") and tls.enabled
    wanted_etcd = node.has("etcd") and etcd_uses_tls(site)
    if not wanted_daemon and not wanted_etcd:
        return files
    cert_path = directory / "nodes" / f"{node.name}.pem"
    if not cert_path.exists():
        raise CertError(f"no certificate for {node.name} in {directory}; run `fab certs` first")
    try:
        ca, crl = (directory / "ca.pem").read_bytes(), (directory / "crl.pem").read_bytes()
        cert, key = cert_path.read_bytes(), cert_path.with_suffix(".key").read_bytes()
    except OSError as exc:
        raise CertError(f"{directory}: cannot read the PKI files: {exc}") from None
    if wanted_daemon:
        assert tls.ca_file and tls.cert_file and tls.key_file  # the config model requires them
        user = site.settings.install.user
        paths = HostPaths(site.settings.install)  # relative config paths: the state dir
        files += [
            TlsFile(paths.absolute(tls.key_file), key, 0o600, user, user),
            TlsFile(paths.absolute(tls.cert_file), cert, 0o644),
            TlsFile(paths.absolute(tls.ca_file), ca, 0o644),
        ]
        if tls.crl_file is not None:
            files.append(TlsFile(paths.absolute(tls.crl_file), crl, 0o644))
    if wanted_etcd:
        member = etcd_tls_paths(site)
        files += [
            TlsFile(member.key, key, 0o600, ETCD_USER, ETCD_USER),
            TlsFile(member.cert, cert, 0o644),
            TlsFile(member.ca, ca, 0o644),
            TlsFile(member.crl, crl, 0o644),
        ]
    return files


def site_files(site: Site, directory: Path | None = None) -> dict[str, list[TlsFile]]:
    """Every host's PKI files for `fab deploy` ({} for a site without TLS: no PKI needed).
    Checks that each certificate was issued by the site CA before anything is copied."""
    if not needs_files(site):
        return {}
    directory = directory or default_directory(site.site_id)
    authority = load_authority(directory)
    files: dict[str, list[TlsFile]] = {}
    for node in site.nodes:
        found = host_files(site, node, directory)
        if not found:
            continue
        cert = load_cert(directory / "nodes" / f"{node.name}.pem")
        if not issued_by(cert, authority):
            raise CertError(
                f"{node.name}: its certificate was not issued by the CA in {directory}; "
                "run `fab certs`"
            )
        files[node.name] = found
    return files
