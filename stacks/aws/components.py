"""AWS components of a site: network, backup bucket, node identity, firewall, NLB, node group."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_aws import autoscaling, ec2, iam, lb, s3, vpc

from stacks.aws.config import ROOT_DEVICE, USER_DATA_LIMIT, AwsSettings
from stacks.component import SiteComponent, backup_location
from stacks.inventory import aws_node_list_command
from stacks.site import HEALTH_CHECK_PATH, IngressRule, Site

__all__ = [
    "BackupBucket",
    "Firewall",
    "LoadBalancer",
    "Network",
    "NodeGroup",
    "NodeIdentity",
    "Placement",
    "existing_placement",
    "user_data_base64",
]


class AwsComponent(SiteComponent):
    cloud = "aws"


def _policy(**statement: Any) -> dict[str, Any]:
    """An IAM policy document of one statement."""
    return {"Version": "2012-10-17", "Statement": [statement]}


def _tags(site: Site, name: str) -> dict[str, str]:
    return {**site.labels, "Name": name}


@dataclass(frozen=True)
class Placement:
    vpc_id: pulumi.Input[str]
    # Where the nodes run (private) and where an internet-facing NLB would sit (public).
    subnet_ids: Sequence[pulumi.Input[str]]
    public_subnet_ids: Sequence[pulumi.Input[str]] = ()

    def load_balancer_subnets(self, internal: bool) -> Sequence[pulumi.Input[str]]:
        return self.subnet_ids if internal else self.public_subnet_ids


def existing_placement(site: Site) -> Placement:
    network = site.stack.network
    assert network.id is not None
    return Placement(vpc_id=network.id, subnet_ids=list(network.subnet_ids))


class Network(AwsComponent):
    """A new VPC: a private node subnet and a public subnet per zone, egress through one NAT
    gateway (the public subnets hold it and, if config asks, an internet-facing NLB)."""

    def __init__(
        self, site: Site, settings: AwsSettings, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(site, "network", opts)
        zones = settings.zones
        cidrs = site.subnet_cidrs(2 * len(zones))
        network = ec2.Vpc(
            site.name("vpc"),
            cidr_block=str(site.stack.network.cidr),
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags=_tags(site, site.name("vpc")),
            opts=self.child,
        )
        gateway = ec2.InternetGateway(
            site.name("igw"), vpc_id=network.id, tags=_tags(site, site.name("igw")), opts=self.child
        )
        public_routes = ec2.RouteTable(
            site.name("public"),
            vpc_id=network.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
            tags=_tags(site, site.name("public")),
            opts=self.child,
        )
        public = [
            self._subnet(site, f"public-{zone}", network, zone, cidr, public_routes)
            for zone, cidr in zip(zones, cidrs[len(zones) :], strict=True)
        ]
        address = ec2.Eip(
            site.name("nat"), domain="vpc", tags=_tags(site, site.name("nat")), opts=self.child
        )
        nat = ec2.NatGateway(
            site.name("nat"),
            allocation_id=address.id,
            subnet_id=public[0].id,
            tags=_tags(site, site.name("nat")),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]),
        )
        private_routes = ec2.RouteTable(
            site.name("nodes"),
            vpc_id=network.id,
            routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
            tags=_tags(site, site.name("nodes")),
            opts=self.child,
        )
        nodes = [
            self._subnet(site, f"nodes-{zone}", network, zone, cidr, private_routes)
            for zone, cidr in zip(zones, cidrs[: len(zones)], strict=True)
        ]
        self.placement = Placement(
            vpc_id=network.id,
            subnet_ids=[subnet.id for subnet in nodes],
            public_subnet_ids=[subnet.id for subnet in public],
        )
        self.register_outputs({"vpc_id": network.id, "subnet_ids": self.placement.subnet_ids})

    def _subnet(
        self,
        site: Site,
        name: str,
        network: ec2.Vpc,
        zone: str,
        cidr: str,
        routes: ec2.RouteTable,
    ) -> ec2.Subnet:
        subnet = ec2.Subnet(
            site.name(name),
            vpc_id=network.id,
            cidr_block=cidr,
            availability_zone=zone,
            map_public_ip_on_launch=False,
            tags=_tags(site, site.name(name)),
            opts=self.child,
        )
        ec2.RouteTableAssociation(
            site.name(name), subnet_id=subnet.id, route_table_id=routes.id, opts=self.child
        )
        return subnet


class BackupBucket(AwsComponent):
    """The site's backup bucket: private, versioned, encrypted, old versions expire."""

    def __init__(self, site: Site, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(site, "backup", opts)
        # Auto-named (globally unique); the name leaves room for the random suffix.
        bucket = s3.Bucket(site.name("backup", 55), tags=site.labels, opts=self.child)
        s3.BucketOwnershipControls(
            site.name("backup"),
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},  # no ACLs at all
            opts=self.child,
        )
        public_access = s3.BucketPublicAccessBlock(
            site.name("backup"),
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=self.child,
        )
        versioning = s3.BucketVersioning(
            site.name("backup"),
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=self.child,
        )
        s3.BucketServerSideEncryptionConfiguration(
            site.name("backup"),
            bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=self.child,
        )
        days = site.retention_days
        s3.BucketLifecycleConfiguration(
            site.name("backup"),
            bucket=bucket.id,
            rules=[
                {
                    # Nodes may only write, so expiry is the bucket's job.
                    "id": "expire-after-retention",
                    "status": "Enabled",
                    "filter": {"prefix": ""},
                    "expiration": {"days": days},
                    "noncurrent_version_expiration": {"noncurrent_days": days},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                },
                {
                    "id": "remove-expired-delete-markers",
                    "status": "Enabled",
                    "filter": {"prefix": ""},
                    "expiration": {"expired_object_delete_marker": True},
                },
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )
        s3.BucketPolicy(
            site.name("backup"),
            bucket=bucket.id,
            policy=pulumi.Output.json_dumps(
                _policy(
                    Sid="DenyInsecureTransport",
                    Effect="Deny",
                    Principal="*",
                    Action="s3:*",
                    Resource=[bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
                    Condition={"Bool": {"aws:SecureTransport": "false"}},
                )
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_access]),
        )
        self.name: pulumi.Output[str] = bucket.bucket
        self.arn: pulumi.Output[str] = bucket.arn
        self.location = backup_location(site, "s3", bucket.bucket)
        self.register_outputs({"name": bucket.bucket, "arn": bucket.arn})


class NodeIdentity(AwsComponent):
    """The nodes' IAM role: it may write objects into the site's bucket and do nothing else."""

    def __init__(
        self, site: Site, bucket: BackupBucket, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(site, "identity", opts)
        role = iam.Role(
            site.name("node", 50),
            assume_role_policy=json.dumps(
                _policy(
                    Effect="Allow",
                    Principal={"Service": "ec2.amazonaws.com"},
                    Action="sts:AssumeRole",
                )
            ),
            tags=site.labels,
            opts=self.child,
        )
        iam.RolePolicy(
            site.name("write-backups"),
            role=role.id,
            policy=pulumi.Output.json_dumps(
                _policy(
                    Sid="WriteSiteBackups",
                    Effect="Allow",
                    Action=["s3:PutObject", "s3:AbortMultipartUpload"],
                    Resource=pulumi.Output.concat(bucket.arn, "/*"),
                )
            ),
            opts=self.child,
        )
        profile = iam.InstanceProfile(site.name("node", 50), role=role.name, opts=self.child)
        self.profile_arn: pulumi.Output[str] = profile.arn
        self.register_outputs({"role": role.name, "instance_profile": profile.arn})


class Firewall(AwsComponent):
    """Security groups of the nodes and of the NLB, rule by rule from the site's ingress."""

    def __init__(
        self, site: Site, placement: Placement, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(site, "firewall", opts)
        self._site = site
        self._seen: set[tuple[str, int, int, str]] = set()
        nodes = ec2.SecurityGroup(
            site.name("nodes"),
            vpc_id=placement.vpc_id,
            description=f"simple-tftpd nodes of site {site.site_id}",
            tags=_tags(site, site.name("nodes")),
            opts=self.child,
        )
        balancer = ec2.SecurityGroup(
            site.name("lb"),
            vpc_id=placement.vpc_id,
            description=f"simple-tftpd load balancer of site {site.site_id}",
            tags=_tags(site, site.name("lb")),
            opts=self.child,
        )
        for rule in site.ingress:
            self._node_rules(rule, nodes)
        # Client traffic and health checks arrive through the NLB; with client IP
        # preservation, referencing its security group still admits them.
        for name, protocol, port in site.listeners:
            self._rule(f"lb-{name}", nodes, protocol, port, port, group_id=balancer.id)
            for index, source in enumerate(site.sources(name)):
                self._rule(f"clients-{name}-{index}", balancer, protocol, port, port, source)
            vpc.SecurityGroupEgressRule(
                site.name(f"lb-to-nodes-{name}"),
                security_group_id=balancer.id,
                referenced_security_group_id=nodes.id,
                ip_protocol=protocol,
                from_port=port,
                to_port=port,
                opts=self.child,
            )
        # Package installs and backups leave through the NAT gateway.
        vpc.SecurityGroupEgressRule(
            site.name("nodes-egress"),
            security_group_id=nodes.id,
            ip_protocol="-1",
            cidr_ipv4="0.0.0.0/0",
            opts=self.child,
        )
        self.node_group_id: pulumi.Output[str] = nodes.id
        self.balancer_group_id: pulumi.Output[str] = balancer.id
        self.register_outputs({"nodes": nodes.id, "load_balancer": balancer.id})

    def _node_rules(self, rule: IngressRule, group: ec2.SecurityGroup) -> None:
        for low, high in rule.ports:
            if rule.from_nodes:
                self._rule(f"{rule.name}-{low}", group, rule.protocol, low, high, group_id=group.id)
            for index, source in enumerate(rule.sources):
                # EC2 refuses a rule that repeats another (e.g. an admin network that a
                # config rule already lets reach the API).
                if (rule.protocol, low, high, source) in self._seen:
                    continue
                self._seen.add((rule.protocol, low, high, source))
                self._rule(f"{rule.name}-{low}-{index}", group, rule.protocol, low, high, source)

    def _rule(
        self,
        name: str,
        group: ec2.SecurityGroup,
        protocol: str,
        low: int,
        high: int,
        source: str | None = None,
        *,
        group_id: pulumi.Input[str] | None = None,
    ) -> None:
        """One ingress rule: from a CIDR `source`, or from the security group `group_id`."""
        ipv6 = source is not None and ":" in source
        vpc.SecurityGroupIngressRule(
            self._site.name(name),
            security_group_id=group.id,
            ip_protocol=protocol,
            from_port=low,
            to_port=high,
            cidr_ipv4=None if ipv6 else source,
            cidr_ipv6=source if ipv6 else None,
            referenced_security_group_id=group_id,
            description=name,
            opts=self.child,
        )


class LoadBalancer(AwsComponent):
    """NLB: UDP listener for TFTP and TCP for the API; both health-checked on the API."""

    def __init__(
        self,
        site: Site,
        placement: Placement,
        firewall: Firewall,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "lb", opts)
        # Names of NLBs and target groups are at most 32 characters with the random suffix.
        balancer = lb.LoadBalancer(
            site.name("nlb", 24),
            load_balancer_type="network",
            internal=site.internal_load_balancer,
            subnets=placement.load_balancer_subnets(site.internal_load_balancer),
            security_groups=[firewall.balancer_group_id],
            enable_cross_zone_load_balancing=True,
            tags=site.labels,
            opts=self.child,
        )
        health: lb.TargetGroupHealthCheckArgsDict = {
            "enabled": True,
            "protocol": "HTTP",
            "port": str(site.api_port),
            "path": HEALTH_CHECK_PATH,
            "matcher": "200",
            "interval": 10,
            "healthy_threshold": 3,
            "unhealthy_threshold": 3,
        }
        self.target_group_arns: list[pulumi.Output[str]] = []
        for name, protocol, port in site.listeners:
            group = lb.TargetGroup(
                site.name(name, 24),
                port=port,
                protocol=protocol.upper(),
                vpc_id=placement.vpc_id,
                target_type="instance",
                deregistration_delay=site.drain_seconds,
                connection_termination=protocol == "udp",
                health_check=health,
                tags=site.labels,
                opts=self.child,
            )
            lb.Listener(
                site.name(name),
                load_balancer_arn=balancer.arn,
                port=port,
                protocol=protocol.upper(),
                default_actions=[{"type": "forward", "target_group_arn": group.arn}],
                tags=site.labels,
                opts=self.child,
            )
            self.target_group_arns.append(group.arn)
        self.address: pulumi.Output[str] = balancer.dns_name
        self.register_outputs({"dns_name": balancer.dns_name})


def user_data_base64(text: str) -> str:
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"user data is {len(text.encode())} bytes; EC2 allows {USER_DATA_LIMIT}")
    return base64.b64encode(text.encode()).decode()


class NodeGroup(AwsComponent):
    """Launch template + autoscaling group behind the NLB, scaled on average CPU."""

    def __init__(
        self,
        site: Site,
        settings: AwsSettings,
        placement: Placement,
        *,
        user_data: pulumi.Input[str],
        firewall: Firewall,
        identity: NodeIdentity,
        balancer: LoadBalancer,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "nodes", opts)
        template = ec2.LaunchTemplate(
            site.name("node"),
            image_id=settings.image_id,
            instance_type=settings.instance_type,
            user_data=user_data,
            iam_instance_profile={"arn": identity.profile_arn},
            vpc_security_group_ids=[firewall.node_group_id],
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",  # IMDSv2 only
                "http_put_response_hop_limit": 1,
            },
            block_device_mappings=[
                {
                    "device_name": ROOT_DEVICE,
                    "ebs": {
                        "volume_size": site.stack.machine.disk_gb,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            tag_specifications=[
                {"resource_type": "instance", "tags": _tags(site, site.name("node"))},
                {"resource_type": "volume", "tags": _tags(site, site.name("node"))},
            ],
            update_default_version=True,
            tags=site.labels,
            opts=self.child,
        )
        scaling = site.autoscaling
        group = autoscaling.Group(
            site.name("nodes"),
            min_size=scaling.min_nodes,
            max_size=scaling.max_nodes,
            desired_capacity=site.node_count,
            vpc_zone_identifiers=placement.subnet_ids,
            target_group_arns=balancer.target_group_arns,
            health_check_type="ELB",
            health_check_grace_period=300,
            launch_template={
                "id": template.id,
                "version": template.latest_version.apply(str),
            },
            instance_refresh={"strategy": "Rolling", "preferences": {"min_healthy_percentage": 66}},
            tags=[
                {"key": key, "value": value, "propagate_at_launch": True}
                for key, value in site.labels.items()
            ],
            # The scaling policy owns the running size once the group exists.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["desiredCapacity"]),
        )
        autoscaling.Policy(
            site.name("cpu-target"),
            autoscaling_group_name=group.name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration={
                "predefined_metric_specification": {
                    "predefined_metric_type": "ASGAverageCPUUtilization"
                },
                "target_value": float(scaling.cpu_target_percent),
            },
            opts=self.child,
        )
        self.name: pulumi.Output[str] = group.name
        self.list_command = aws_node_list_command(settings.region, group.name)
        self.register_outputs({"name": group.name, "launch_template": template.id})
