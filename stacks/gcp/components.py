"""GCP components of a site: network, backup bucket, service account, firewall, passthrough
load balancer, regional managed instance group."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
from pulumi_gcp import compute, serviceaccount, storage

from stacks.component import SiteComponent, backup_location
from stacks.gcp.config import HEALTH_CHECK_RANGES, GcpSettings
from stacks.inventory import gcp_node_list_command
from stacks.site import HEALTH_CHECK_PATH, IngressRule, Site

__all__ = [
    "BackupBucket",
    "Firewall",
    "Frontend",
    "LoadBalancer",
    "Network",
    "NodeGroup",
    "NodeServiceAccount",
    "Placement",
]


class GcpComponent(SiteComponent):
    cloud = "gcp"


_ALLOW_PRIORITY, _DENY_PRIORITY = 1000, 65000


def _name(text: str) -> str:
    """A GCP resource name: lowercase letters, digits and hyphens, starting with a letter."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name if name[:1].isalpha() else f"r-{name}"


@dataclass(frozen=True)
class Placement:
    network: pulumi.Input[str]
    subnetwork: pulumi.Input[str]


class Network(GcpComponent):
    """A new VPC network with one regional subnetwork; egress through Cloud NAT."""

    def __init__(
        self, site: Site, settings: GcpSettings, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(site, "network", opts)
        vpc = compute.Network(
            site.name("vpc"),
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            opts=self.child,
        )
        (cidr,) = site.subnet_cidrs(1)
        subnet = compute.Subnetwork(
            site.name("nodes"),
            network=vpc.id,
            region=settings.region,
            ip_cidr_range=cidr,
            private_ip_google_access=True,
            opts=self.child,
        )
        router = compute.Router(
            site.name("router"), network=vpc.id, region=settings.region, opts=self.child
        )
        compute.RouterNat(
            site.name("nat"),
            router=router.name,
            region=settings.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
            opts=self.child,
        )
        self.placement = Placement(network=vpc.id, subnetwork=subnet.id)
        self.register_outputs({"network": vpc.id, "subnetwork": subnet.id})


class NodeServiceAccount(GcpComponent):
    """The nodes' service account; its only grant is writing objects into the backup bucket."""

    def __init__(self, site: Site, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(site, "identity", opts)
        account = serviceaccount.Account(
            site.name("nodes"),
            # 6-30 characters, unique in the project.
            account_id=_name(f"tftp-{site.slug}")[:30].rstrip("-"),
            display_name=f"simple-tftpd nodes of site {site.site_id}",
            opts=self.child,
        )
        self.email: pulumi.Output[str] = account.email
        self.register_outputs({"email": account.email})


class BackupBucket(GcpComponent):
    """The site's bucket: private, versioned, encrypted at rest, old versions expire."""

    def __init__(
        self,
        site: Site,
        settings: GcpSettings,
        account: NodeServiceAccount,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "backup", opts)
        days = site.retention_days
        bucket = storage.Bucket(
            site.name("backup", 55),
            location=settings.region.upper(),
            versioning={"enabled": True},
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            lifecycle_rules=[
                # Nodes may only create objects, so expiry is the bucket's job.
                {"action": {"type": "Delete"}, "condition": {"age": days, "with_state": "LIVE"}},
                {"action": {"type": "Delete"}, "condition": {"days_since_noncurrent_time": days}},
            ],
            labels=site.labels,
            opts=self.child,
        )
        storage.BucketIAMMember(
            site.name("backup-writer"),
            bucket=bucket.name,
            role="roles/storage.objectCreator",
            member=pulumi.Output.concat("serviceAccount:", account.email),
            opts=self.child,
        )
        self.name: pulumi.Output[str] = bucket.name
        self.location = backup_location(site, "gs", bucket.name)
        self.register_outputs({"name": bucket.name})


class Firewall(GcpComponent):
    """VPC firewall rules for the nodes' service account, rule by rule from the site's ingress."""

    def __init__(
        self,
        site: Site,
        settings: GcpSettings,
        placement: Placement,
        account: NodeServiceAccount,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "firewall", opts)
        self._site, self._network, self._targets = site, placement.network, [account.email]
        for rule in site.ingress:
            self._allow(rule)
        probes = IngressRule(
            "health-checks",
            "api",
            "tcp",
            ((site.api_port, site.api_port),),
            HEALTH_CHECK_RANGES[settings.scheme],
        )
        self._allow(probes)
        # An existing network may allow more (e.g. default-allow-internal at 65534).
        for family, everyone in (("v4", "0.0.0.0/0"), ("v6", "::/0")):
            compute.Firewall(
                site.name(f"deny-other-{family}"),
                network=placement.network,
                direction="INGRESS",
                priority=_DENY_PRIORITY,
                denies=[{"protocol": "all"}],
                source_ranges=[everyone],
                target_service_accounts=self._targets,
                opts=self.child,
            )
        self.register_outputs({})

    def _allow(self, rule: IngressRule) -> None:
        site = self._site
        compute.Firewall(
            site.name(_name(rule.name), 55),
            network=self._network,
            description=f"simple-tftpd {site.site_id}: {rule.name} ({rule.purpose})",
            direction="INGRESS",
            priority=_ALLOW_PRIORITY,
            allows=[{"protocol": rule.protocol, "ports": rule.port_strings()}],
            source_ranges=list(rule.sources) or None,
            source_service_accounts=self._targets if rule.from_nodes else None,
            target_service_accounts=self._targets,
            opts=self.child,
        )


class Frontend(GcpComponent):
    """The load balancer's address and its health check (needed before the instance group)."""

    def __init__(
        self,
        site: Site,
        settings: GcpSettings,
        placement: Placement,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "frontend", opts)
        if settings.internal:
            # One internal address shared by the UDP and the TCP forwarding rule.
            address = compute.Address(
                site.name("lb"),
                region=settings.region,
                address_type="INTERNAL",
                purpose="SHARED_LOADBALANCER_VIP",
                subnetwork=placement.subnetwork,
                opts=self.child,
            )
        else:
            address = compute.Address(
                site.name("lb"),
                region=settings.region,
                address_type="EXTERNAL",
                network_tier="PREMIUM",
                opts=self.child,
            )
        health_check = compute.RegionHealthCheck(
            site.name("api-ready"),
            region=settings.region,
            check_interval_sec=5,
            timeout_sec=5,
            healthy_threshold=2,
            unhealthy_threshold=3,
            http_health_check={"port": site.api_port, "request_path": HEALTH_CHECK_PATH},
            opts=self.child,
        )
        self.address: pulumi.Output[str] = address.address
        self.health_check_id: pulumi.Output[str] = health_check.id
        self.register_outputs({"address": address.address})


class NodeGroup(GcpComponent):
    """Regional instance template + managed instance group, autoscaled on CPU."""

    def __init__(
        self,
        site: Site,
        settings: GcpSettings,
        placement: Placement,
        *,
        user_data: pulumi.Input[str],
        account: NodeServiceAccount,
        frontend: Frontend,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "nodes", opts)
        template = compute.RegionInstanceTemplate(
            site.name("node"),
            region=settings.region,
            machine_type=settings.machine_type,
            disks=[
                {
                    "source_image": settings.image,
                    "boot": True,
                    "auto_delete": True,
                    "disk_size_gb": site.stack.machine.disk_gb,
                    "disk_type": "pd-balanced",
                }
            ],
            # No access config: no public address; egress goes through Cloud NAT.
            network_interfaces=[{"network": placement.network, "subnetwork": placement.subnetwork}],
            metadata={
                "user-data": user_data,
                # The admin user and its keys come from cloud-init.
                "block-project-ssh-keys": "TRUE",
            },
            service_account={"email": account.email, "scopes": ["cloud-platform"]},
            shielded_instance_config={
                "enable_secure_boot": True,
                "enable_vtpm": True,
                "enable_integrity_monitoring": True,
            },
            labels=site.labels,
            opts=self.child,
        )
        scaling = site.autoscaling
        manager = compute.RegionInstanceGroupManager(
            site.name("nodes"),
            region=settings.region,
            base_instance_name=_name(site.name("tftp", 40)),
            versions=[{"name": "primary", "instance_template": template.self_link}],
            target_size=site.node_count,
            distribution_policy_zones=list(settings.zones) or None,
            named_ports=[{"name": "api", "port": site.api_port}],
            auto_healing_policies={
                "health_check": frontend.health_check_id,
                "initial_delay_sec": 300,
            },
            update_policy={
                "type": "PROACTIVE",
                "minimal_action": "REPLACE",
                "max_surge_fixed": max(3, len(settings.zones)),
                "max_unavailable_fixed": 0,
            },
            # The autoscaler owns the running size once the group exists.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["targetSize"]),
        )
        compute.RegionAutoscaler(
            site.name("cpu-target"),
            region=settings.region,
            target=manager.id,
            autoscaling_policy={
                "min_replicas": scaling.min_nodes,
                "max_replicas": scaling.max_nodes,
                "cooldown_period": 120,
                "cpu_utilization": {"target": scaling.cpu_target_percent / 100},
            },
            opts=self.child,
        )
        self.name: pulumi.Output[str] = manager.name
        self.instance_group: pulumi.Output[str] = manager.instance_group
        self.list_command = gcp_node_list_command(settings.project, site)
        self.register_outputs({"name": manager.name})


class LoadBalancer(GcpComponent):
    """Passthrough load balancer: a UDP and a TCP backend service + forwarding rule."""

    def __init__(
        self,
        site: Site,
        settings: GcpSettings,
        placement: Placement,
        *,
        frontend: Frontend,
        nodes: NodeGroup,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "lb", opts)
        internal = settings.internal
        for name, protocol, port in site.listeners:
            backend = compute.RegionBackendService(
                site.name(name),
                region=settings.region,
                protocol=protocol.upper(),
                load_balancing_scheme=settings.scheme,
                health_checks=frontend.health_check_id,
                backends=[{"group": nodes.instance_group, "balancing_mode": "CONNECTION"}],
                connection_draining_timeout_sec=site.drain_seconds,
                opts=self.child,
            )
            compute.ForwardingRule(
                site.name(name),
                region=settings.region,
                load_balancing_scheme=settings.scheme,
                ip_protocol=protocol.upper(),
                ports=[str(port)],
                ip_address=frontend.address,
                backend_service=backend.id,
                network=placement.network if internal else None,
                subnetwork=placement.subnetwork if internal else None,
                network_tier=None if internal else "PREMIUM",
                opts=self.child,
            )
        self.address = frontend.address
        self.register_outputs({"address": frontend.address})
