"""Policy checks over the resources a stack declares, on any of the three clouds.

The checks read resources as Pulumi hands them to providers (type token, name, inputs with
camelCase keys), so the same functions run over the resources recorded by the unit tests'
mocks, and could run in a CrossGuard policy pack over `args.props`.

- `no_world_admin_ingress`: no ingress from everyone (0.0.0.0/0, ::/0, `*`, `Internet`) to SSH,
  the API or etcd.
- `buckets_private_and_encrypted`: every bucket blocks public access and is encrypted at rest.
- `load_balancers_internal`: every load balancer is internal unless the site allows public.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stacks.site import ETCD_PORTS, SSH_PORT

__all__ = [
    "DeclaredResource",
    "Ingress",
    "Violation",
    "buckets_private_and_encrypted",
    "check_all",
    "ingress_rules",
    "load_balancers_internal",
    "no_world_admin_ingress",
]

ALL_PORTS = (0, 65535)
_WORLD_WORDS = {"*", "any", "internet"}


@dataclass(frozen=True)
class DeclaredResource:
    type: str
    name: str
    inputs: Mapping[str, Any]
    id: str | None = None
    custom: bool = True
    # Top-level inputs that were marked secret (their plain values are in `inputs`).
    secret_inputs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str
    message: str

    def __str__(self) -> str:
        return f"{self.policy}: {self.resource}: {self.message}"


@dataclass(frozen=True)
class Ingress:
    """One allowed inbound path, normalised across clouds."""

    resource: str
    protocol: str  # "tcp", "udp" or "all"
    ports: tuple[int, int]
    sources: tuple[str, ...]

    def reaches(self, low: int, high: int, protocol: str = "tcp") -> bool:
        if self.protocol not in ("all", protocol):
            return False
        return self.ports[0] <= high and low <= self.ports[1]

    @property
    def from_world(self) -> bool:
        return any(_is_world(source) for source in self.sources)


def _is_world(source: str) -> bool:
    if source.lower() in _WORLD_WORDS:
        return True
    try:
        return ipaddress.ip_network(source, strict=False).prefixlen == 0
    except ValueError:
        return False


def _port_range(text: object) -> tuple[int, int]:
    value = str(text).strip()
    if value in ("", "*"):
        return ALL_PORTS
    low, _, high = value.partition("-")
    return int(low), int(high or low)


def _protocol(value: object) -> str:
    text = str(value).lower()
    return "all" if text in ("-1", "*", "all") else text


# --- ingress, per cloud ------------------------------------------------------------------------


def _aws_ingress(resource: DeclaredResource) -> Iterator[Ingress]:
    inputs = resource.inputs
    if resource.type == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        entries: Iterable[Mapping[str, Any]] = [inputs]
    elif resource.type == "aws:ec2/securityGroup:SecurityGroup":
        entries = inputs.get("ingress") or []
    elif resource.type == "aws:ec2/securityGroupRule:SecurityGroupRule":
        entries = [inputs] if inputs.get("type") == "ingress" else []
    else:
        return
    for entry in entries:
        sources = [entry.get("cidrIpv4"), entry.get("cidrIpv6")]
        sources += list(entry.get("cidrBlocks") or []) + list(entry.get("ipv6CidrBlocks") or [])
        protocol = _protocol(entry.get("ipProtocol") or entry.get("protocol"))
        ports = ALL_PORTS
        if protocol != "all":
            ports = (int(entry.get("fromPort", 0)), int(entry.get("toPort", 65535)))
        yield Ingress(resource.name, protocol, ports, tuple(s for s in sources if s))


def _azure_ingress(resource: DeclaredResource) -> Iterator[Ingress]:
    if resource.type == "azure-native:network:NetworkSecurityGroup":
        rules: Iterable[Mapping[str, Any]] = resource.inputs.get("securityRules") or []
    elif resource.type == "azure-native:network:SecurityRule":
        rules = [resource.inputs]
    else:
        return
    for rule in rules:
        if rule.get("direction") != "Inbound" or rule.get("access") != "Allow":
            continue
        sources = [rule.get("sourceAddressPrefix"), *(rule.get("sourceAddressPrefixes") or [])]
        ports = [rule.get("destinationPortRange"), *(rule.get("destinationPortRanges") or [])]
        for port in (p for p in ports if p is not None):
            yield Ingress(
                f"{resource.name}/{rule.get('name')}",
                _protocol(rule.get("protocol")),
                _port_range(port),
                tuple(s for s in sources if s),
            )


def _gcp_ingress(resource: DeclaredResource) -> Iterator[Ingress]:
    if resource.type != "gcp:compute/firewall:Firewall":
        return
    inputs = resource.inputs
    if inputs.get("direction", "INGRESS") != "INGRESS" or inputs.get("disabled"):
        return
    sources = tuple(inputs.get("sourceRanges") or [])
    if not sources and not inputs.get("sourceTags") and not inputs.get("sourceServiceAccounts"):
        sources = ("0.0.0.0/0",)  # GCP's default source for ingress rules
    for allow in inputs.get("allows") or []:
        for port in allow.get("ports") or ["*"]:
            yield Ingress(
                resource.name, _protocol(allow.get("protocol")), _port_range(port), sources
            )


def ingress_rules(resources: Iterable[DeclaredResource]) -> list[Ingress]:
    found: list[Ingress] = []
    for resource in resources:
        for extract in (_aws_ingress, _azure_ingress, _gcp_ingress):
            found += extract(resource)
    return found


# --- the policies ------------------------------------------------------------------------------


def no_world_admin_ingress(
    resources: Sequence[DeclaredResource], api_port: int = 8080
) -> list[Violation]:
    guarded = {
        "SSH": (SSH_PORT, SSH_PORT),
        "the API": (api_port, api_port),
        "etcd": ETCD_PORTS,
    }
    violations = []
    for ingress in ingress_rules(resources):
        if not ingress.from_world:
            continue
        for what, (low, high) in guarded.items():
            if ingress.reaches(low, high):
                violations.append(
                    Violation(
                        "no-world-admin-ingress",
                        ingress.resource,
                        f"opens {what} ({low}-{high}) to everyone ({', '.join(ingress.sources)})",
                    )
                )
    return violations


def _for_bucket(
    resources: Sequence[DeclaredResource], typ: str, bucket: DeclaredResource
) -> list[DeclaredResource]:
    return [r for r in resources if r.type == typ and r.inputs.get("bucket") == bucket.id]


def _aws_bucket(resources: Sequence[DeclaredResource], bucket: DeclaredResource) -> list[str]:
    problems = []
    blocks = _for_bucket(
        resources, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket
    )
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    if not any(all(block.inputs.get(flag) is True for flag in flags) for block in blocks):
        problems.append("no public access block with all four settings on")
    if str(bucket.inputs.get("acl", "private")).startswith("public"):
        problems.append(f"has a public ACL ({bucket.inputs['acl']})")
    encryption = _for_bucket(
        resources,
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        bucket,
    )
    algorithms = [
        rule.get("applyServerSideEncryptionByDefault", {}).get("sseAlgorithm")
        for config in encryption
        for rule in config.inputs.get("rules") or []
    ]
    if not any(algorithms):
        problems.append("no server-side encryption configuration")
    return problems


def _azure_account(account: DeclaredResource) -> list[str]:
    problems = []
    if account.inputs.get("allowBlobPublicAccess") is not False:
        problems.append("allowBlobPublicAccess is not false")
    encryption = account.inputs.get("encryption") or {}
    blob = (encryption.get("services") or {}).get("blob") or {}
    if blob.get("enabled") is not True or not encryption.get("keySource"):
        problems.append("blob encryption is not declared (encryption.services.blob, keySource)")
    return problems


def _gcp_bucket(bucket: DeclaredResource) -> list[str]:
    problems = []
    if bucket.inputs.get("publicAccessPrevention") != "enforced":
        problems.append("publicAccessPrevention is not enforced")
    if bucket.inputs.get("uniformBucketLevelAccess") is not True:
        problems.append("uniformBucketLevelAccess is off (object ACLs could be public)")
    # Cloud Storage encrypts every object at rest (Google-managed keys unless a CMEK is set).
    return problems


def _gcp_public_grant(grant: DeclaredResource) -> list[str]:
    # Any bucket's grant to everyone is a violation, whichever bucket it names.
    principals = [grant.inputs.get("member"), *(grant.inputs.get("members") or [])]
    if {"allUsers", "allAuthenticatedUsers"} & set(principals):
        return [f"grants {grant.inputs.get('role')} on {grant.inputs.get('bucket')} to everyone"]
    return []


def buckets_private_and_encrypted(resources: Sequence[DeclaredResource]) -> list[Violation]:
    violations = []
    for resource in resources:
        if resource.type == "aws:s3/bucket:Bucket":
            problems = _aws_bucket(resources, resource)
        elif resource.type == "azure-native:storage:StorageAccount":
            problems = _azure_account(resource)
        elif resource.type == "azure-native:storage:BlobContainer":
            access = resource.inputs.get("publicAccess")
            problems = [] if access == "None" else [f"publicAccess is {access!r}, not 'None'"]
        elif resource.type == "gcp:storage/bucket:Bucket":
            problems = _gcp_bucket(resource)
        elif resource.type.startswith("gcp:storage/bucketIAM"):
            problems = _gcp_public_grant(resource)
        else:
            continue
        violations += [
            Violation("buckets-private-and-encrypted", resource.name, problem)
            for problem in problems
        ]
    return violations


def load_balancers_internal(
    resources: Sequence[DeclaredResource], public_allowed: bool = False
) -> list[Violation]:
    if public_allowed:
        return []
    violations = []
    for resource in resources:
        inputs = resource.inputs
        if (
            resource.type == "aws:lb/loadBalancer:LoadBalancer"
            and inputs.get("internal") is not True
        ):
            violations.append(Violation("load-balancers-internal", resource.name, "not internal"))
        elif resource.type == "azure-native:network:LoadBalancer":
            for frontend in inputs.get("frontendIPConfigurations") or []:
                if frontend.get("publicIPAddress") or frontend.get("publicIPPrefix"):
                    message = f"frontend {frontend.get('name')} has a public address"
                    violations.append(Violation("load-balancers-internal", resource.name, message))
        elif resource.type == "gcp:compute/forwardingRule:ForwardingRule":
            scheme = inputs.get("loadBalancingScheme", "EXTERNAL")
            if not str(scheme).startswith("INTERNAL"):
                message = f"load balancing scheme is {scheme}"
                violations.append(Violation("load-balancers-internal", resource.name, message))
    return violations


def check_all(
    resources: Sequence[DeclaredResource],
    *,
    api_port: int = 8080,
    public_load_balancers: bool = False,
) -> list[Violation]:
    """Every policy over one stack's resources; an empty list means compliant."""
    return [
        *no_world_admin_ingress(resources, api_port),
        *buckets_private_and_encrypted(resources),
        *load_balancers_internal(resources, public_load_balancers),
    ]
