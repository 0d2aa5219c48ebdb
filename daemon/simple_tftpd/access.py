"""Who may do what on the management API.

An identity comes from a verified client certificate (its common name or a DNS or IP SAN
mapped in `security.access.certificates`) or from a bearer token: `security.access.tokens`,
`api.token` (admin: the nodes of a site pull blobs from each other with it) and
`multi_site.sync.token` (what peer sites present). Each route needs one permission, decided
here by one middleware rather than by each handler:

- none: health and readiness (load balancers and the test harness poll them);
- READ: every other GET (status, listings, logs, metrics), unless reads are anonymous;
- BLOBS: blob transfer (the nodes of the site with the admin role, peer sites);
- CHANGES: the manifest change feed, for peer sites only;
- ADMIN: every other method (uploads, deletes, joins, sync and backup commands), and
  reads a route declares admin-only.

No identity is 401, an identity without the permission is 403. HTTP boot routes (outside
/api/) are the access list's business, not this module's.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import Counter

from simple_tftpd.config import Config
from simple_tftpd.tls import normalize_name, peer_names

log = logging.getLogger("simple_tftpd.access")


class Permission(enum.Enum):
    # The value is the hint a refusal gives.
    READ = "reading needs the role read_only or admin"
    BLOBS = "blob transfer needs the admin role or a peer site's site-sync token"
    CHANGES = "the change feed needs a peer site's site-sync token"
    ADMIN = "this needs the admin role"


ROLE_GRANTS: dict[str, frozenset[Permission]] = {
    "read_only": frozenset({Permission.READ}),
    "admin": frozenset({Permission.READ, Permission.BLOBS, Permission.ADMIN}),
    # What a peer site needs to replicate this one, and nothing else.
    "site_sync": frozenset({Permission.BLOBS, Permission.CHANGES}),
}
_RANK = {"read_only": 0, "site_sync": 1, "admin": 2}


@dataclass(frozen=True)
class Identity:
    name: str  # "cert:<name>", "token:<name>", "api.token", "multi_site.sync.token"
    role: str

    @property
    def grants(self) -> frozenset[Permission]:
        return ROLE_GRANTS[self.role]


class AccessPolicy:
    """The identities and roles of one version of the config."""

    def __init__(self, config: Config) -> None:
        access = config.security.access
        tls = config.security.tls
        self.anonymous_read = (
            access.anonymous_read if access.anonymous_read is not None else not tls.enabled
        )
        self.certificates: dict[str, str] = {}
        for entry in access.certificates:
            self.certificates[normalize_name(entry.name)] = entry.role
        tokens = [(t.token, Identity(f"token:{t.name}", t.role)) for t in access.tokens]
        if config.api.token:
            tokens.append((config.api.token, Identity("api.token", "admin")))
        if config.multi_site.sync.token:
            sync = Identity("multi_site.sync.token", "site_sync")
            tokens.append((config.multi_site.sync.token, sync))
        self.tokens = [(secret.encode(), identity) for secret, identity in tokens]

    def certificate_identity(self, peercert: dict[str, Any] | None) -> Identity | None:
        known = [
            (name, self.certificates[name])
            for name in peer_names(peercert)
            if name in self.certificates
        ]
        if not known:
            return None
        name, role = max(known, key=lambda item: _RANK[item[1]])
        return Identity(f"cert:{name}", role)

    def token_identity(self, authorization: str) -> Identity | None:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        found = None
        for secret, identity in self.tokens:
            # Compare against every token, so timing tells nothing about which one is close.
            if hmac.compare_digest(given.encode(), secret):
                found = identity
        return found

    def identities(self, request: web.Request) -> list[Identity]:
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        found = [
            self.certificate_identity(peercert),
            self.token_identity(request.headers.get("Authorization", "")),
        ]
        return [identity for identity in found if identity is not None]

    def granted(self, identities: list[Identity]) -> frozenset[Permission]:
        grants = frozenset({Permission.READ}) if self.anonymous_read else frozenset()
        for identity in identities:
            grants |= identity.grants
        return grants


# --- what routes need ----------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
_PUBLIC = object()
_DECLARED: dict[Handler, Permission | object] = {}


def requires(permission: Permission) -> Callable[[H], H]:
    """Declare a route's permission where the method alone would decide wrongly."""

    def declare(handler: H) -> H:
        _DECLARED[handler] = permission
        return handler

    return declare


def public(handler: H) -> H:
    _DECLARED[handler] = _PUBLIC
    return handler


def required(request: web.Request) -> Permission | None:
    declared = _DECLARED.get(request.match_info.handler)
    if declared is _PUBLIC:
        return None
    if isinstance(declared, Permission):
        return declared
    return Permission.READ if request.method in ("GET", "HEAD") else Permission.ADMIN


POLICY_KEY: web.AppKey[Callable[[], AccessPolicy]] = web.AppKey("access_policy")
REFUSED_KEY: web.AppKey[Counter] = web.AppKey("access_refused")
IDENTITY_KEY = "simple_tftpd.identity"


def identity_of(request: web.Request) -> str:
    """Who made the request, for the log line of every change."""
    identities: list[Identity] = request.get(IDENTITY_KEY, [])
    return ", ".join(identity.name for identity in identities) or "anonymous"


@web.middleware
async def enforce(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    permission = required(request)
    if permission is None:
        return await handler(request)
    # The app holds a getter: SIGHUP replaces the policy without rebuilding the app.
    policy = request.app[POLICY_KEY]()
    identities = policy.identities(request)
    request[IDENTITY_KEY] = identities
    if permission in policy.granted(identities):
        if permission is Permission.ADMIN:
            log.info("%s %s by %s", request.method, request.path, identity_of(request))
        return await handler(request)
    refused = request.app[REFUSED_KEY]
    if not identities:
        refused.labels("401").inc()
        return web.json_response(
            {
                "error": "authentication required (a client certificate or a token); "
                + permission.value
            },
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    refused.labels("403").inc()
    who = ", ".join(f"{i.name} (role {i.role})" for i in identities)
    return web.json_response({"error": f"not allowed for {who}: {permission.value}"}, status=403)
