"""The Azure stack declares what a site needs, with the properties config asks for."""

from __future__ import annotations

from typing import Any

import pytest

from stacks.azure.components import BLOB_WRITE_ACTIONS
from tests.stacks import sites
from tests.stacks.expect import cidr_rules
from tests.stacks.harness import StackRun


@pytest.fixture(scope="module")
def run() -> StackRun:
    return sites.variant_run("azure", "clustered")


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def _rules(run: StackRun) -> list[dict[str, Any]]:
    return list(run.one("azure-native:network:NetworkSecurityGroup").inputs["securityRules"])


def test_standard_lb_has_udp_and_tcp_rules_probed_on_the_api(run: StackRun) -> None:
    balancer = run.one("azure-native:network:LoadBalancer").inputs
    own_id = (
        f"/subscriptions/{'0' * 8}-0000-0000-0000-{'0' * 12}/resourceGroups/lab-west-1-rg"
        f"/providers/Microsoft.Network/loadBalancers/{balancer['loadBalancerName']}"
    )
    assert balancer["sku"] == {"name": "Standard", "tier": "Regional"}
    (frontend,) = balancer["frontendIPConfigurations"]
    assert "publicIPAddress" not in frontend  # internal
    assert frontend["subnet"]["id"].endswith("/subnets/nodes")
    (probe,) = balancer["probes"]
    assert (probe["protocol"], probe["port"], probe["requestPath"]) == (
        "Http",
        9080,
        "/api/v1/ready",
    )
    rules = {rule["protocol"]: rule for rule in balancer["loadBalancingRules"]}
    assert set(rules) == {"Udp", "Tcp"}
    assert (rules["Udp"]["frontendPort"], rules["Udp"]["backendPort"]) == (69, 69)
    assert (rules["Tcp"]["frontendPort"], rules["Tcp"]["backendPort"]) == (9080, 9080)
    for rule in rules.values():
        assert rule["probe"]["id"] == f"{own_id}/probes/{probe['name']}"
        assert rule["frontendIPConfiguration"]["id"] == (
            f"{own_id}/frontendIPConfigurations/{frontend['name']}"
        )
        assert rule["backendAddressPool"]["id"] == f"{own_id}/backendAddressPools/nodes"
        assert rule["enableFloatingIP"] is False


def test_nsg_is_exactly_the_configured_rules(run: StackRun) -> None:
    asg = run.one("azure-native:network:ApplicationSecurityGroup").id
    rules = _rules(run)
    allowed = {
        (rule["protocol"].lower(), *_port_range(port), source)
        for rule in rules
        if rule["access"] == "Allow" and rule.get("sourceAddressPrefixes")
        for port in rule["destinationPortRanges"]
        for source in rule["sourceAddressPrefixes"]
    }
    assert allowed == cidr_rules(sites.CLUSTERED_DAEMON, ["192.0.2.0/24", "2001:db8:ff::/48"])
    for rule in rules:
        assert rule["direction"] == "Inbound"
        if rule["access"] == "Allow":
            assert rule["destinationApplicationSecurityGroups"] == [{"id": asg}]
    (etcd,) = [r for r in rules if r.get("sourceApplicationSecurityGroups")]
    assert (etcd["protocol"], etcd["destinationPortRanges"]) == ("Tcp", ["2379-2380"])
    assert etcd["sourceApplicationSecurityGroups"] == [{"id": asg}]
    (probe,) = [r for r in rules if r.get("sourceAddressPrefix") == "AzureLoadBalancer"]
    assert probe["destinationPortRanges"] == ["9080"]
    deny = rules[-1]
    assert (deny["access"], deny["priority"], deny["sourceAddressPrefix"]) == ("Deny", 4096, "*")
    assert all(rule["priority"] < 4096 for rule in rules[:-1])
    assert len({rule["priority"] for rule in rules}) == len(rules)
    # Every rule keeps one address family (Azure refuses mixed prefixes).
    for rule in rules:
        prefixes = rule.get("sourceAddressPrefixes") or []
        assert len({":" in prefix for prefix in prefixes}) <= 1


def test_storage_is_private_versioned_encrypted_and_expires(run: StackRun) -> None:
    account = run.one("azure-native:storage:StorageAccount").inputs
    assert account["allowBlobPublicAccess"] is False
    assert account["allowSharedKeyAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["encryption"]["services"]["blob"] == {"enabled": True, "keyType": "Account"}
    assert account["encryption"]["requireInfrastructureEncryption"] is True
    assert 3 <= len(account["accountName"]) <= 24 and account["accountName"].isalnum()
    service = run.one("azure-native:storage:BlobServiceProperties").inputs
    assert (service["blobServicesName"], service["isVersioningEnabled"]) == ("default", True)
    container = run.one("azure-native:storage:BlobContainer").inputs
    assert container["publicAccess"] == "None"
    policy = run.one("azure-native:storage:ManagementPolicy").inputs
    assert policy["managementPolicyName"] == "default"
    (rule,) = policy["policy"]["rules"]
    actions = rule["definition"]["actions"]
    assert actions["version"]["delete"] == {"daysAfterCreationGreaterThan": 14}
    assert actions["baseBlob"]["delete"] == {"daysAfterModificationGreaterThan": 14}


def test_identity_may_only_write_blobs_of_the_site_container(run: StackRun) -> None:
    identity = run.one("azure-native:managedidentity:UserAssignedIdentity")
    role = run.one("azure-native:authorization:RoleDefinition").inputs
    (permission,) = role["permissions"]
    assert permission["dataActions"] == BLOB_WRITE_ACTIONS
    assert not permission.get("actions")
    assignment = run.one("azure-native:authorization:RoleAssignment").inputs
    assert assignment["scope"] == run.one("azure-native:storage:BlobContainer").id
    assert assignment["principalId"] == f"{identity.name}-principal"
    assert assignment["roleDefinitionId"] == run.one("azure-native:authorization:RoleDefinition").id
    assert len(run.of_type("azure-native:authorization:RoleAssignment")) == 1
    scale_set = run.one("azure-native:compute:VirtualMachineScaleSet").inputs
    assert scale_set["identity"] == {
        "type": "UserAssigned",
        "userAssignedIdentities": [identity.id],
    }


def test_scale_set_size_and_autoscale_come_from_config(run: StackRun) -> None:
    scale_set = run.one("azure-native:compute:VirtualMachineScaleSet")
    assert scale_set.inputs["sku"]["capacity"] == 5
    assert scale_set.inputs["zones"] == ["1", "2"]
    (nic,) = scale_set.inputs["virtualMachineProfile"]["networkProfile"][
        "networkInterfaceConfigurations"
    ]
    assert (
        nic["networkSecurityGroup"]["id"] == run.one("azure-native:network:NetworkSecurityGroup").id
    )
    (ip,) = nic["ipConfigurations"]
    assert ip["loadBalancerBackendAddressPools"][0]["id"].endswith("/backendAddressPools/nodes")
    assert ip["applicationSecurityGroups"] == [
        {"id": run.one("azure-native:network:ApplicationSecurityGroup").id}
    ]
    assert "publicIPAddressConfiguration" not in ip
    os_profile = scale_set.inputs["virtualMachineProfile"]["osProfile"]
    assert os_profile["linuxConfiguration"]["disablePasswordAuthentication"] is True
    autoscale = run.one("azure-native:monitor:AutoscaleSetting").inputs
    assert autoscale["targetResourceUri"] == scale_set.id
    (profile,) = autoscale["profiles"]
    assert profile["capacity"] == {"minimum": "3", "maximum": "9", "default": "5"}
    out, scale_in = profile["rules"]
    assert out["metricTrigger"]["metricName"] == "Percentage CPU"
    assert (out["metricTrigger"]["operator"], out["metricTrigger"]["threshold"]) == (
        "GreaterThan",
        60,
    )
    assert out["scaleAction"]["direction"] == "Increase"
    assert (scale_in["metricTrigger"]["operator"], scale_in["scaleAction"]["direction"]) == (
        "LessThan",
        "Decrease",
    )
    assert scale_in["metricTrigger"]["threshold"] < 60


def test_new_network_egresses_through_nat_only(run: StackRun) -> None:
    vnet = run.one("azure-native:network:VirtualNetwork").inputs
    assert vnet["addressSpace"] == {"addressPrefixes": ["10.60.0.0/20"]}
    (subnet,) = vnet["subnets"]
    assert subnet["defaultOutboundAccess"] is False
    assert subnet["natGateway"]["id"] == run.one("azure-native:network:NatGateway").id


def test_existing_resource_group_and_subnet_are_used_not_created() -> None:
    site, _ = sites.example("azure", "eu-central")
    run = sites.example_run("azure", "eu-central")
    assert not run.of_type("azure-native:resources:ResourceGroup")
    assert not run.of_type("azure-native:network:VirtualNetwork")
    for resource in run.resources:
        if "resourceGroupName" in resource.inputs:
            assert resource.inputs["resourceGroupName"] == "rg-provisioning-euc"
    scale_set = run.one("azure-native:compute:VirtualMachineScaleSet").inputs
    (nic,) = scale_set["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"]
    assert nic["ipConfigurations"][0]["subnet"]["id"] == site["network"]["subnet_ids"][0]


def test_outputs_are_the_fabfile_inventory(run: StackRun) -> None:
    outputs = run.outputs
    assert (outputs["cloud"], outputs["site_id"], outputs["region"]) == (
        "azure",
        "lab.west_1",
        "eastus",
    )
    assert outputs["lb_address"] == "10.30.0.4"  # the internal frontend's address
    assert outputs["backup_location"] == "az://backups/tftp/lab.west_1"
    assert outputs["node_group"] in outputs["node_list_command"]
