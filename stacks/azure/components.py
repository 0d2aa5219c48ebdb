"""Azure components of a site: network, backup storage, node identity, firewall, LB, scale set."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import (
    authorization,
    compute,
    managedidentity,
    monitor,
    network,
    resources,
    storage,
)

from stacks.azure.config import AzureSettings
from stacks.component import SiteComponent, backup_location
from stacks.inventory import azure_node_list_command
from stacks.site import HEALTH_CHECK_PATH, Site

__all__ = [
    "BackupStorage",
    "Firewall",
    "LoadBalancer",
    "Network",
    "NodeIdentity",
    "Placement",
    "ResourceGroup",
    "ScaleSet",
]


class AzureComponent(SiteComponent):
    cloud = "azure"


# Built-in data actions for writing blobs; no read, list or delete.
BLOB_WRITE_ACTIONS = [
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
]
BACKUP_CONTAINER = "backups"
_FIRST_PRIORITY, _PRIORITY_STEP = 100, 10
_PROBE_PRIORITY, _DENY_PRIORITY = 4000, 4096


class ResourceGroup(AzureComponent):
    """The site's resource group (created, or an existing one named in config)."""

    def __init__(
        self, site: Site, settings: AzureSettings, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(site, "group", opts)
        if settings.resource_group is not None:
            self.name: pulumi.Output[str] = pulumi.Output.from_input(settings.resource_group)
        else:
            group = resources.ResourceGroup(
                site.name("rg"),
                location=settings.location,
                tags=site.labels,
                opts=self.child,
            )
            self.name = group.name
        subscription = authorization.get_client_config_output().subscription_id
        self.id: pulumi.Output[str] = pulumi.Output.concat(
            "/subscriptions/", subscription, "/resourceGroups/", self.name
        )
        self.location = settings.location
        self.register_outputs({"name": self.name})


@dataclass(frozen=True)
class Placement:
    subnet_id: pulumi.Input[str]


class Network(AzureComponent):
    """A new VNet with one node subnet; egress through a NAT gateway (no default outbound)."""

    def __init__(
        self,
        site: Site,
        settings: AzureSettings,
        group: ResourceGroup,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "network", opts)
        nat_address = network.PublicIPAddress(
            site.name("nat"),
            sku={"name": "Standard", "tier": "Regional"},
            public_ip_allocation_method="Static",
            zones=list(settings.zones) or None,
            tags=site.labels,
            resource_group_name=group.name,
            location=group.location,
            opts=self.child,
        )
        nat = network.NatGateway(
            site.name("nat"),
            sku={"name": "Standard"},
            public_ip_addresses=[{"id": nat_address.id}],
            tags=site.labels,
            resource_group_name=group.name,
            location=group.location,
            opts=self.child,
        )
        (subnet_cidr,) = site.subnet_cidrs(1)
        vnet = network.VirtualNetwork(
            site.name("vnet"),
            address_space={"address_prefixes": [str(site.stack.network.cidr)]},
            subnets=[
                {
                    "name": "nodes",
                    "address_prefix": subnet_cidr,
                    "nat_gateway": {"id": nat.id},
                    "default_outbound_access": False,
                }
            ],
            tags=site.labels,
            resource_group_name=group.name,
            location=group.location,
            opts=self.child,
        )
        self.placement = Placement(subnet_id=pulumi.Output.concat(vnet.id, "/subnets/nodes"))
        self.register_outputs({"vnet": vnet.id})


class BackupStorage(AzureComponent):
    """Storage account + container: private, versioned, encrypted, old versions expire."""

    def __init__(
        self,
        site: Site,
        settings: AzureSettings,
        group: ResourceGroup,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "backup", opts)
        account = storage.StorageAccount(
            site.name("backup"),
            account_name=settings.storage_account,
            resource_group_name=group.name,
            location=group.location,
            kind="StorageV2",
            sku={"name": "Standard_ZRS" if settings.zones else "Standard_LRS"},
            allow_blob_public_access=False,
            # Entra ID only: the nodes' managed identity, no account keys or SAS.
            allow_shared_key_access=False,
            default_to_o_auth_authentication=True,
            allow_cross_tenant_replication=False,
            minimum_tls_version="TLS1_2",
            enable_https_traffic_only=True,
            encryption={
                "key_source": "Microsoft.Storage",
                "require_infrastructure_encryption": True,
                "services": {"blob": {"enabled": True, "key_type": "Account"}},
            },
            tags=site.labels,
            opts=self.child,
        )
        storage.BlobServiceProperties(
            site.name("backup"),
            account_name=account.name,
            resource_group_name=group.name,
            blob_services_name="default",
            is_versioning_enabled=True,
            delete_retention_policy={"enabled": True, "days": 7},
            container_delete_retention_policy={"enabled": True, "days": 7},
            opts=self.child,
        )
        container = storage.BlobContainer(
            site.name("backup"),
            account_name=account.name,
            resource_group_name=group.name,
            container_name=BACKUP_CONTAINER,
            public_access=storage.PublicAccess.NONE,
            opts=self.child,
        )
        days = site.retention_days
        storage.ManagementPolicy(
            site.name("backup"),
            account_name=account.name,
            resource_group_name=group.name,
            management_policy_name="default",
            policy={
                "rules": [
                    {
                        # Nodes may only write, so expiry is the account's job.
                        "name": "expire-after-retention",
                        "enabled": True,
                        "type": "Lifecycle",
                        "definition": {
                            "filters": {
                                "blob_types": ["blockBlob"],
                                "prefix_match": [f"{BACKUP_CONTAINER}/"],
                            },
                            "actions": {
                                "base_blob": {
                                    "delete": {"days_after_modification_greater_than": days}
                                },
                                "version": {"delete": {"days_after_creation_greater_than": days}},
                            },
                        },
                    }
                ]
            },
            opts=self.child,
        )
        self.account_name: pulumi.Output[str] = account.name
        self.name: pulumi.Output[str] = container.name
        self.location = backup_location(site, "az", container.name)
        self.container_id: pulumi.Output[str] = container.id
        self.register_outputs({"account": account.name, "container": container.name})


class NodeIdentity(AzureComponent):
    """A user-assigned identity allowed to write blobs into the site's container, nothing else."""

    def __init__(
        self,
        site: Site,
        settings: AzureSettings,
        group: ResourceGroup,
        backup: BackupStorage,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "identity", opts)
        identity = managedidentity.UserAssignedIdentity(
            site.name("nodes"),
            resource_group_name=group.name,
            location=group.location,
            tags=site.labels,
            opts=self.child,
        )
        # No built-in role writes without also reading and deleting.
        role = authorization.RoleDefinition(
            site.name("backup-writer"),
            role_definition_id=settings.role_definition_guid,
            role_name=f"simple-tftpd backup writer {settings.role_definition_guid[:8]}",
            description=f"Write blobs of the simple-tftpd site {site.site_id} (no read, no delete)",
            scope=group.id,
            assignable_scopes=[group.id],
            permissions=[{"actions": [], "data_actions": BLOB_WRITE_ACTIONS}],
            opts=self.child,
        )
        authorization.RoleAssignment(
            site.name("backup-writer"),
            role_assignment_name=settings.role_assignment_guid,
            scope=backup.container_id,
            role_definition_id=role.id,
            principal_id=identity.principal_id,
            principal_type="ServicePrincipal",
            opts=self.child,
        )
        self.id: pulumi.Output[str] = identity.id
        self.client_id: pulumi.Output[str] = identity.client_id
        self.register_outputs({"identity": identity.id})


def _allow(
    name: str,
    priority: int,
    protocol: str,
    ports: list[str],
    nodes: list[network.ApplicationSecurityGroupArgsDict],
    *,
    sources: list[str] | None = None,
    service_tag: str | None = None,
) -> network.SecurityRuleArgsDict:
    """An inbound allow rule to the nodes, from CIDRs, a service tag, or (neither) the nodes."""
    rule: network.SecurityRuleArgsDict = {
        "name": name,
        "priority": priority,
        "direction": "Inbound",
        "access": "Allow",
        "protocol": protocol,
        "source_port_range": "*",
        "destination_port_ranges": ports,
        "destination_application_security_groups": nodes,
    }
    if sources:
        rule["source_address_prefixes"] = sources
    elif service_tag:
        rule["source_address_prefix"] = service_tag
    else:
        rule["source_application_security_groups"] = nodes
    return rule


class Firewall(AzureComponent):
    """Network security group of the node NICs, rule by rule from the site's ingress."""

    def __init__(
        self, site: Site, group: ResourceGroup, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(site, "firewall", opts)
        nodes = network.ApplicationSecurityGroup(
            site.name("nodes"),
            resource_group_name=group.name,
            location=group.location,
            tags=site.labels,
            opts=self.child,
        )
        node_ref: list[network.ApplicationSecurityGroupArgsDict] = [{"id": nodes.id}]
        rules = [
            _allow(
                rule.name,
                _FIRST_PRIORITY + _PRIORITY_STEP * index,
                rule.protocol.capitalize(),
                rule.port_strings(),
                node_ref,
                sources=list(rule.sources),  # none: a from_nodes rule
            )
            for index, rule in enumerate(site.ingress)
        ]
        rules += [
            # The default AllowAzureLoadBalancerInBound sits below the deny: restate it.
            _allow(
                "load-balancer-probe",
                _PROBE_PRIORITY,
                "Tcp",
                [str(site.api_port)],
                node_ref,
                service_tag="AzureLoadBalancer",
            ),
            # The defaults allow the whole VNet; only the rules above should.
            {
                "name": "deny-other-inbound",
                "priority": _DENY_PRIORITY,
                "direction": "Inbound",
                "access": "Deny",
                "protocol": "*",
                "source_address_prefix": "*",
                "source_port_range": "*",
                "destination_address_prefix": "*",
                "destination_port_range": "*",
            },
        ]
        security_group = network.NetworkSecurityGroup(
            site.name("nodes"),
            resource_group_name=group.name,
            location=group.location,
            security_rules=rules,
            tags=site.labels,
            opts=self.child,
        )
        self.application_security_group_id: pulumi.Output[str] = nodes.id
        self.network_security_group_id: pulumi.Output[str] = security_group.id
        self.register_outputs({"nsg": security_group.id, "asg": nodes.id})


class LoadBalancer(AzureComponent):
    """Standard LB: a UDP rule for TFTP and a TCP rule for the API, both probed on the API."""

    def __init__(
        self,
        site: Site,
        settings: AzureSettings,
        group: ResourceGroup,
        placement: Placement,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "lb", opts)
        name = site.name("lb", 80)
        own_id = pulumi.Output.concat(group.id, "/providers/Microsoft.Network/loadBalancers/", name)

        def ref(kind: str, child_name: str) -> network.SubResourceArgsDict:
            # Rules refer to the LB's own parts by id, before the LB exists.
            return {"id": pulumi.Output.concat(own_id, f"/{kind}/{child_name}")}

        frontend: network.FrontendIPConfigurationArgsDict = {"name": "frontend"}
        public_address = None
        if site.internal_load_balancer:
            frontend = {
                "name": "frontend",
                "subnet": {"id": placement.subnet_id},
                "private_ip_allocation_method": "Dynamic",
                "zones": list(settings.zones) or None,
            }
        else:
            public_address = network.PublicIPAddress(
                site.name("lb"),
                resource_group_name=group.name,
                location=group.location,
                sku={"name": "Standard", "tier": "Regional"},
                public_ip_allocation_method="Static",
                zones=list(settings.zones) or None,
                tags=site.labels,
                opts=self.child,
            )
            frontend["public_ip_address"] = {"id": public_address.id}
        rules: list[network.LoadBalancingRuleArgsDict] = [
            {
                "name": name_,
                "protocol": protocol.capitalize(),
                "frontend_port": port,
                "backend_port": port,
                "frontend_ip_configuration": ref("frontendIPConfigurations", "frontend"),
                "backend_address_pool": ref("backendAddressPools", "nodes"),
                "probe": ref("probes", "api-ready"),
                # The NAT gateway carries outbound traffic; replies need no SNAT.
                "disable_outbound_snat": True,
                "enable_floating_ip": False,
                "enable_tcp_reset": protocol == "tcp",
                "load_distribution": "Default",
            }
            for name_, protocol, port in site.listeners
        ]
        balancer = network.LoadBalancer(
            site.name("lb"),
            load_balancer_name=name,
            resource_group_name=group.name,
            location=group.location,
            sku={"name": "Standard", "tier": "Regional"},
            frontend_ip_configurations=[frontend],
            backend_address_pools=[{"name": "nodes"}],
            probes=[
                {
                    "name": "api-ready",
                    "protocol": "Http",
                    "port": site.api_port,
                    "request_path": HEALTH_CHECK_PATH,
                    "interval_in_seconds": 5,
                    "probe_threshold": 2,
                }
            ],
            load_balancing_rules=rules,
            tags=site.labels,
            opts=self.child,
        )
        self.backend_pool_id = ref("backendAddressPools", "nodes")["id"]
        self.address: pulumi.Output[str] = (
            public_address.ip_address.apply(lambda ip: ip or "")
            if public_address is not None
            else balancer.frontend_ip_configurations.apply(
                lambda frontends: (frontends or [])[0].private_ip_address or ""
            )
        )
        self.register_outputs({"address": self.address})


class ScaleSet(AzureComponent):
    """A flexible scale set behind the LB, autoscaled on average CPU."""

    def __init__(
        self,
        site: Site,
        settings: AzureSettings,
        group: ResourceGroup,
        placement: Placement,
        *,
        user_data: pulumi.Input[str],
        firewall: Firewall,
        identity: NodeIdentity,
        balancer: LoadBalancer,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(site, "nodes", opts)
        user = site.stack.ssh_user
        image = settings.image
        image_reference: compute.ImageReferenceArgsDict = (
            {"id": image.id}
            if image.id
            else {
                "publisher": image.publisher,
                "offer": image.offer,
                "sku": image.sku,
                "version": image.version,
            }
        )
        linux: compute.LinuxConfigurationArgsDict = {
            "disable_password_authentication": True,
            "provision_vm_agent": True,
            "ssh": {
                "public_keys": [
                    {"path": f"/home/{user}/.ssh/authorized_keys", "key_data": key}
                    for key in site.stack.ssh_public_keys
                ]
            },
        }
        nic: compute.VirtualMachineScaleSetNetworkConfigurationArgsDict = {
            "name": "nic",
            "primary": True,
            "delete_option": "Delete",
            "network_security_group": {"id": firewall.network_security_group_id},
            "ip_configurations": [
                {
                    "name": "ipconfig",
                    "primary": True,
                    "subnet": {"id": placement.subnet_id},
                    "load_balancer_backend_address_pools": [{"id": balancer.backend_pool_id}],
                    "application_security_groups": [{"id": firewall.application_security_group_id}],
                }
            ],
        }
        os_disk: compute.VirtualMachineScaleSetOSDiskArgsDict = {
            "create_option": "FromImage",
            "caching": compute.CachingTypes.READ_WRITE,
            "disk_size_gb": site.stack.machine.disk_gb,
            "delete_option": "Delete",
            "managed_disk": {"storage_account_type": "StandardSSD_LRS"},
        }
        profile: compute.VirtualMachineScaleSetVMProfileArgsDict = {
            "os_profile": {
                "computer_name_prefix": site.slug.replace("-", "")[:9] or "tftp",
                "admin_username": user,
                "custom_data": pulumi.Output.from_input(user_data).apply(
                    lambda text: base64.b64encode(text.encode()).decode()
                ),
                "linux_configuration": linux,
            },
            "storage_profile": {"image_reference": image_reference, "os_disk": os_disk},
            "network_profile": {
                "network_api_version": "2020-11-01",
                "network_interface_configurations": [nic],
            },
        }
        sku: compute.SkuArgsDict = {"name": settings.vm_size, "capacity": site.node_count}
        node_identity: compute.VirtualMachineScaleSetIdentityArgsDict = {
            "type": compute.ResourceIdentityType.USER_ASSIGNED,
            "user_assigned_identities": [identity.id],
        }
        scale_set = compute.VirtualMachineScaleSet(
            site.name("nodes"),
            resource_group_name=group.name,
            location=group.location,
            orchestration_mode="Flexible",
            platform_fault_domain_count=1,
            single_placement_group=False,
            sku=sku,
            zones=list(settings.zones) or None,
            identity=node_identity,
            upgrade_policy={"mode": compute.UpgradeMode.MANUAL},
            virtual_machine_profile=profile,
            tags=site.labels,
            # Autoscale owns the running size once the scale set exists.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["sku.capacity"]),
        )
        scaling = site.autoscaling
        target = scaling.cpu_target_percent
        greater, less = (
            monitor.ComparisonOperationType.GREATER_THAN,
            monitor.ComparisonOperationType.LESS_THAN,
        )
        monitor.AutoscaleSetting(
            site.name("cpu-target"),
            resource_group_name=group.name,
            location=group.location,
            target_resource_uri=scale_set.id,
            enabled=True,
            profiles=[
                {
                    "name": "cpu-target",
                    "capacity": {
                        "minimum": str(scaling.min_nodes),
                        "maximum": str(scaling.max_nodes),
                        "default": str(site.node_count),
                    },
                    # Azure has no target tracking: out above the target, in well below it.
                    "rules": [
                        _cpu_rule(scale_set.id, greater, target, monitor.ScaleDirection.INCREASE),
                        _cpu_rule(scale_set.id, less, target // 2, monitor.ScaleDirection.DECREASE),
                    ],
                }
            ],
            tags=site.labels,
            opts=self.child,
        )
        self.name: pulumi.Output[str] = scale_set.name
        self.list_command = azure_node_list_command(group.name, scale_set.name)
        self.register_outputs({"name": scale_set.name})


def _cpu_rule(
    resource_id: pulumi.Output[str],
    operator: monitor.ComparisonOperationType,
    threshold: int,
    direction: monitor.ScaleDirection,
) -> monitor.ScaleRuleArgsDict:
    trigger: monitor.MetricTriggerArgsDict = {
        "metric_name": "Percentage CPU",
        "metric_namespace": "microsoft.compute/virtualmachinescalesets",
        "metric_resource_uri": resource_id,
        "operator": operator,
        "statistic": monitor.MetricStatisticType.AVERAGE,
        "threshold": threshold,
        "time_aggregation": monitor.TimeAggregationType.AVERAGE,
        "time_grain": "PT1M",
        "time_window": "PT5M",
    }
    action: monitor.ScaleActionArgsDict = {
        "direction": direction,
        "type": monitor.ScaleType.CHANGE_COUNT,
        "value": "1",
        "cooldown": "PT5M",
    }
    return {"metric_trigger": trigger, "scale_action": action}
