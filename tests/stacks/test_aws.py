"""The AWS stack declares what a site needs, with the properties config asks for."""

from __future__ import annotations

import json

import pytest

from stacks.policy import DeclaredResource
from stacks.site import StackConfigError
from tests.stacks import sites
from tests.stacks.expect import cidr_rules, sources_for
from tests.stacks.harness import StackRun, run_stack

HEALTH_CHECK = {"protocol": "HTTP", "port": "9080", "path": "/api/v1/ready", "enabled": True}


@pytest.fixture(scope="module")
def run() -> StackRun:
    return sites.variant_run("aws", "clustered")


def _by_id(run: StackRun, typ: str) -> dict[str | None, DeclaredResource]:
    return {resource.id: resource for resource in run.of_type(typ)}


def _group_ids(run: StackRun) -> tuple[str, str]:
    groups = {r.name: r.id for r in run.of_type("aws:ec2/securityGroup:SecurityGroup")}
    nodes, balancer = groups["lab-west-1-nodes"], groups["lab-west-1-lb"]
    assert nodes and balancer
    return nodes, balancer


def _ingress(run: StackRun, group_id: str) -> list[dict[str, object]]:
    return [
        dict(rule.inputs)
        for rule in run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if rule.inputs["securityGroupId"] == group_id
    ]


def test_nlb_is_internal_with_a_udp_69_listener_and_an_api_listener(run: StackRun) -> None:
    balancer = run.one("aws:lb/loadBalancer:LoadBalancer")
    subnets = [s.id for s in run.of_type("aws:ec2/subnet:Subnet") if "nodes" in s.name]
    assert balancer.inputs["loadBalancerType"] == "network"
    assert balancer.inputs["internal"] is True
    assert sorted(balancer.inputs["subnets"]) == sorted(subnets) and len(subnets) == 2
    assert balancer.inputs["securityGroups"] == [_group_ids(run)[1]]
    groups = {g.inputs["protocol"]: g for g in run.of_type("aws:lb/targetGroup:TargetGroup")}
    assert set(groups) == {"UDP", "TCP"}
    assert groups["UDP"].inputs["port"] == 69 and groups["TCP"].inputs["port"] == 9080
    for group in groups.values():
        assert HEALTH_CHECK.items() <= group.inputs["healthCheck"].items()
        assert group.inputs["deregistrationDelay"] == 20  # tftp.drain_timeout
    listeners = {
        (listener.inputs["protocol"], listener.inputs["port"]): listener
        for listener in run.of_type("aws:lb/listener:Listener")
    }
    assert set(listeners) == {("UDP", 69), ("TCP", 9080)}
    for (protocol, _), listener in listeners.items():
        (action,) = listener.inputs["defaultActions"]
        assert action["type"] == "forward"
        assert action["targetGroupArn"].endswith(groups[protocol].name)


def test_node_firewall_is_exactly_the_configured_rules(run: StackRun) -> None:
    nodes, balancer = _group_ids(run)
    rules = _ingress(run, nodes)
    by_cidr = {
        (r["ipProtocol"], r["fromPort"], r["toPort"], r.get("cidrIpv4") or r.get("cidrIpv6"))
        for r in rules
        if r.get("cidrIpv4") or r.get("cidrIpv6")
    }
    expected = cidr_rules(sites.CLUSTERED_DAEMON, ["192.0.2.0/24", "2001:db8:ff::/48"])
    assert by_cidr == expected
    by_group = sorted(
        (r["ipProtocol"], r["fromPort"], r["toPort"], r["referencedSecurityGroupId"])
        for r in rules
        if r.get("referencedSecurityGroupId")
    )
    assert by_group == [
        ("tcp", 2379, 2380, nodes),  # etcd: only the site's nodes
        ("tcp", 9080, 9080, balancer),  # API and health checks through the NLB
        ("udp", 69, 69, balancer),  # TFTP through the NLB
    ]
    assert len(rules) == len(by_cidr) + len(by_group)


def test_load_balancer_admits_tftp_clients_and_api_admins(run: StackRun) -> None:
    _, balancer = _group_ids(run)
    expected = cidr_rules(sites.CLUSTERED_DAEMON, ["192.0.2.0/24", "2001:db8:ff::/48"])
    rules = _ingress(run, balancer)
    admitted = {
        (r["ipProtocol"], r["fromPort"], r.get("cidrIpv4") or r.get("cidrIpv6")) for r in rules
    }
    assert admitted == {("udp", 69, s) for s in sources_for(expected, "udp", 69)} | {
        ("tcp", 9080, s) for s in sources_for(expected, "tcp", 9080)
    }


def test_backup_bucket_is_private_versioned_encrypted_and_expires(run: StackRun) -> None:
    bucket = run.one("aws:s3/bucket:Bucket")

    def attached(typ: str) -> DeclaredResource:
        return run.one(typ, lambda r: r.inputs["bucket"] == bucket.id)

    block = attached("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs
    assert all(
        block[flag] is True
        for flag in (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        )
    )
    versioning = attached("aws:s3/bucketVersioning:BucketVersioning").inputs
    assert versioning["versioningConfiguration"] == {"status": "Enabled"}
    encryption = attached(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    ).inputs
    assert encryption["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    ownership = attached("aws:s3/bucketOwnershipControls:BucketOwnershipControls").inputs
    assert ownership["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
    lifecycle = attached("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration").inputs
    expire = lifecycle["rules"][0]
    assert expire["status"] == "Enabled"
    assert expire["noncurrentVersionExpiration"] == {"noncurrentDays": 14}  # retention_days
    assert expire["expiration"] == {"days": 14}
    policy = json.loads(attached("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    assert policy["Statement"][0]["Effect"] == "Deny"
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_node_role_may_only_write_the_site_bucket(run: StackRun) -> None:
    bucket = run.one("aws:s3/bucket:Bucket")
    role = run.one("aws:iam/role:Role")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    (policy,) = run.of_type("aws:iam/rolePolicy:RolePolicy")
    (statement,) = json.loads(policy.inputs["policy"])["Statement"]
    assert statement["Effect"] == "Allow"
    assert sorted(statement["Action"]) == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert statement["Resource"] == f"arn:aws:s3:::{bucket.id}/*"
    assert not run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    profile = run.one("aws:iam/instanceProfile:InstanceProfile")
    template = run.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert template.inputs["iamInstanceProfile"]["arn"].endswith(profile.name)


def test_node_group_size_and_cpu_target_come_from_config(run: StackRun) -> None:
    group = run.one("aws:autoscaling/group:Group")
    assert (group.inputs["minSize"], group.inputs["maxSize"]) == (3, 9)
    assert group.inputs["desiredCapacity"] == 5
    assert group.inputs["healthCheckType"] == "ELB"
    assert len(group.inputs["targetGroupArns"]) == 2
    assert len(group.inputs["vpcZoneIdentifiers"]) == 2
    policy = run.one("aws:autoscaling/policy:Policy").inputs
    assert policy["policyType"] == "TargetTrackingScaling"
    tracking = policy["targetTrackingConfiguration"]
    assert tracking["targetValue"] == 60
    assert tracking["predefinedMetricSpecification"] == {
        "predefinedMetricType": "ASGAverageCPUUtilization"
    }
    template = run.one("aws:ec2/launchTemplate:LaunchTemplate").inputs
    assert template["metadataOptions"]["httpTokens"] == "required"
    assert template["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"


def test_guide_defaults_from_the_example() -> None:
    run = sites.example_run("aws", "us-east")
    group = run.one("aws:autoscaling/group:Group").inputs
    assert (group["minSize"], group["maxSize"], group["desiredCapacity"]) == (3, 20, 3)
    target = run.one("aws:autoscaling/policy:Policy").inputs["targetTrackingConfiguration"]
    assert target["targetValue"] == 70
    assert len(run.of_type("aws:ec2/subnet:Subnet")) == 6  # private and public, three zones


def test_existing_vpc_is_used_not_created() -> None:
    site, _ = sites.example("aws", "eu-central")
    run = sites.example_run("aws", "eu-central")
    assert not run.of_type("aws:ec2/vpc:Vpc") and not run.of_type("aws:ec2/subnet:Subnet")
    balancer = run.one("aws:lb/loadBalancer:LoadBalancer")
    assert balancer.inputs["subnets"] == site["network"]["subnet_ids"]
    for group in run.of_type("aws:ec2/securityGroup:SecurityGroup"):
        assert group.inputs["vpcId"] == site["network"]["id"]
    assert (
        run.one("aws:autoscaling/group:Group").inputs["vpcZoneIdentifiers"]
        == (site["network"]["subnet_ids"])
    )


def test_internet_facing_nlb_sits_in_the_public_subnets() -> None:
    run = sites.variant_run("aws", "public")
    balancer = run.one("aws:lb/loadBalancer:LoadBalancer").inputs
    public = [s.id for s in run.of_type("aws:ec2/subnet:Subnet") if "-public-" in s.name]
    assert balancer["internal"] is False and len(public) == 3
    assert sorted(balancer["subnets"]) == sorted(public)
    group = run.one("aws:autoscaling/group:Group").inputs
    assert not set(group["vpcZoneIdentifiers"]) & set(public)  # nodes stay private


def test_internet_facing_nlb_in_an_existing_vpc_is_refused() -> None:
    site, provider = sites.example("aws", "eu-central")
    site["load_balancer"] = {"internal": False}
    with pytest.raises(StackConfigError, match="an internet-facing NLB needs public subnets"):
        run_stack("aws", site, provider)


def test_outputs_are_the_fabfile_inventory(run: StackRun) -> None:
    outputs = run.outputs
    assert outputs["cloud"] == "aws" and outputs["site_id"] == "lab.west_1"
    assert outputs["region"] == "us-east-1"
    assert outputs["node_group"] == run.one("aws:autoscaling/group:Group").name
    assert outputs["node_group"] in outputs["node_list_command"]
    assert outputs["lb_address"].endswith(".elb.us-east-1.amazonaws.com")
    assert (outputs["tftp_port"], outputs["api_port"]) == (69, 9080)
    assert outputs["backup_bucket"] == run.one("aws:s3/bucket:Bucket").id
    assert outputs["backup_location"] == f"s3://{outputs['backup_bucket']}/tftp/lab.west_1"
    assert outputs["peer_sites"] == [
        {"site_id": "us-east", "endpoint": "tftp.us-east.example.net:9080"}
    ]
