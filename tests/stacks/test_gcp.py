"""The GCP stack declares what a site needs, with the properties config asks for."""

from __future__ import annotations

import pytest

from stacks.gcp.config import HEALTH_CHECK_RANGES
from tests.stacks import sites
from tests.stacks.expect import cidr_rules
from tests.stacks.harness import GCP_PROJECT, StackRun

SERVICE_ACCOUNT = f"tftp-lab-west-1@{GCP_PROJECT}.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def run() -> StackRun:
    return sites.variant_run("gcp", "clustered")


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def test_passthrough_lb_has_udp_69_and_api_forwarding_rules(run: StackRun) -> None:
    address = run.one("gcp:compute/address:Address").inputs
    assert (address["addressType"], address["purpose"]) == ("INTERNAL", "SHARED_LOADBALANCER_VIP")
    health = run.one("gcp:compute/regionHealthCheck:RegionHealthCheck")
    assert health.inputs["httpHealthCheck"] == {"port": 9080, "requestPath": "/api/v1/ready"}
    services = {
        s.inputs["protocol"]: s
        for s in run.of_type("gcp:compute/regionBackendService:RegionBackendService")
    }
    assert set(services) == {"UDP", "TCP"}
    manager = run.one("gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
    for service in services.values():
        assert service.inputs["loadBalancingScheme"] == "INTERNAL"
        assert service.inputs["healthChecks"] == health.id
        (backend,) = service.inputs["backends"]
        assert backend["group"] == f"{manager.name}-instance-group"
    rules = {
        r.inputs["ipProtocol"]: r.inputs
        for r in run.of_type("gcp:compute/forwardingRule:ForwardingRule")
    }
    assert set(rules) == {"UDP", "TCP"}
    assert rules["UDP"]["ports"] == ["69"] and rules["TCP"]["ports"] == ["9080"]
    for protocol, rule in rules.items():
        assert rule["loadBalancingScheme"] == "INTERNAL"
        assert rule["backendService"] == services[protocol].id
        assert rule["ipAddress"] == "10.30.0.10"  # the shared address
    assert run.outputs["lb_address"] == "10.30.0.10"


def test_firewall_is_exactly_the_configured_rules(run: StackRun) -> None:
    firewalls = run.of_type("gcp:compute/firewall:Firewall")
    allowed = set()
    for firewall in firewalls:
        inputs = firewall.inputs
        assert inputs["targetServiceAccounts"] == [SERVICE_ACCOUNT]
        assert inputs["direction"] == "INGRESS"
        sources = inputs.get("sourceRanges") or []
        assert len({":" in source for source in sources}) <= 1  # one address family per rule
        if set(sources) == set(HEALTH_CHECK_RANGES["INTERNAL"]) or "denies" in inputs:
            continue
        for allow in inputs.get("allows", []):
            for port in allow["ports"]:
                allowed |= {(allow["protocol"], *_port_range(port), s) for s in sources}
    assert allowed == cidr_rules(sites.CLUSTERED_DAEMON, ["192.0.2.0/24", "2001:db8:ff::/48"])
    (etcd,) = [f.inputs for f in firewalls if f.inputs.get("sourceServiceAccounts")]
    assert etcd["sourceServiceAccounts"] == [SERVICE_ACCOUNT]
    assert etcd["allows"] == [{"protocol": "tcp", "ports": ["2379-2380"]}]
    assert "sourceRanges" not in etcd
    (probes,) = [
        f.inputs
        for f in firewalls
        if set(f.inputs.get("sourceRanges") or []) == set(HEALTH_CHECK_RANGES["INTERNAL"])
    ]
    assert probes["allows"] == [{"protocol": "tcp", "ports": ["9080"]}]
    denies = [f.inputs for f in firewalls if "denies" in f.inputs]
    assert {d["sourceRanges"][0] for d in denies} == {"0.0.0.0/0", "::/0"}
    assert all(
        d["priority"] > f.inputs["priority"]
        for d in denies
        for f in firewalls
        if "allows" in f.inputs
    )


def test_bucket_is_private_versioned_and_expires(run: StackRun) -> None:
    bucket = run.one("gcp:storage/bucket:Bucket").inputs
    assert bucket["versioning"] == {"enabled": True}
    assert bucket["uniformBucketLevelAccess"] is True
    assert bucket["publicAccessPrevention"] == "enforced"
    assert bucket["location"] == "US-EAST1"
    conditions = [rule["condition"] for rule in bucket["lifecycleRules"]]
    assert all(rule["action"] == {"type": "Delete"} for rule in bucket["lifecycleRules"])
    assert {"age": 14, "withState": "LIVE"} in conditions
    assert {"daysSinceNoncurrentTime": 14} in conditions


def test_service_account_may_only_create_objects_in_the_bucket(run: StackRun) -> None:
    (member,) = [
        r for r in run.resources if r.type.startswith(("gcp:storage/bucketIAM", "gcp:projects/"))
    ]
    assert member.inputs == {
        "bucket": run.one("gcp:storage/bucket:Bucket").id,
        "role": "roles/storage.objectCreator",
        "member": f"serviceAccount:{SERVICE_ACCOUNT}",
    }
    template = run.one("gcp:compute/regionInstanceTemplate:RegionInstanceTemplate").inputs
    assert template["serviceAccount"]["email"] == SERVICE_ACCOUNT


def test_instance_group_size_and_autoscaler_come_from_config(run: StackRun) -> None:
    manager = run.one("gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager").inputs
    assert manager["targetSize"] == 5
    assert manager["distributionPolicyZones"] == ["us-east1-b", "us-east1-c"]
    template = run.one("gcp:compute/regionInstanceTemplate:RegionInstanceTemplate")
    assert manager["versions"][0]["instanceTemplate"].endswith(template.name)
    assert manager["autoHealingPolicies"]["healthCheck"] == (
        run.one("gcp:compute/regionHealthCheck:RegionHealthCheck").id
    )
    (interface,) = template.inputs["networkInterfaces"]
    assert "accessConfigs" not in interface  # no public address
    autoscaler = run.one("gcp:compute/regionAutoscaler:RegionAutoscaler").inputs
    policy = autoscaler["autoscalingPolicy"]
    assert (policy["minReplicas"], policy["maxReplicas"]) == (3, 9)
    assert policy["cpuUtilization"] == {"target": 0.6}


def test_existing_network_is_used_not_created() -> None:
    site, _ = sites.example("gcp", "eu-central")
    run = sites.example_run("gcp", "eu-central")
    assert not run.of_type("gcp:compute/network:Network")
    assert not run.of_type("gcp:compute/subnetwork:Subnetwork")
    for firewall in run.of_type("gcp:compute/firewall:Firewall"):
        assert firewall.inputs["network"] == site["network"]["id"]
    template = run.one("gcp:compute/regionInstanceTemplate:RegionInstanceTemplate").inputs
    assert template["networkInterfaces"][0]["subnetwork"] == site["network"]["subnet_ids"][0]


def test_outputs_are_the_fabfile_inventory(run: StackRun) -> None:
    outputs = run.outputs
    assert (outputs["cloud"], outputs["site_id"], outputs["region"]) == (
        "gcp",
        "lab.west_1",
        "us-east1",
    )
    assert outputs["backup_location"] == f"gs://{outputs['backup_bucket']}/tftp/lab.west_1"
    assert "labels.simple-tftpd-site=lab-west-1" in outputs["node_list_command"]
