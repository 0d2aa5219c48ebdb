"""Policy checks over every stack's declared resources, and proof that they catch violations."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from stacks.policy import (
    DeclaredResource,
    buckets_private_and_encrypted,
    check_all,
    load_balancers_internal,
    no_world_admin_ingress,
)
from tests.stacks import sites
from tests.stacks.harness import StackRun

RUNS = [(cloud, name) for cloud in sites.CLOUDS for name in (*sites.EXAMPLES, "clustered")]


def _run(cloud: str, name: str) -> StackRun:
    if name in sites.VARIANTS:
        return sites.variant_run(cloud, name)
    return sites.example_run(cloud, name)


@pytest.mark.parametrize(("cloud", "name"), RUNS, ids=[f"{c}-{n}" for c, n in RUNS])
def test_every_stack_passes_every_policy(cloud: str, name: str) -> None:
    run = _run(cloud, name)
    assert run.resources, "nothing was declared"
    assert check_all(run.resources, api_port=run.outputs["api_port"]) == []


@pytest.mark.parametrize(("cloud", "name"), RUNS, ids=[f"{c}-{n}" for c, n in RUNS])
def test_no_deprecated_resource_is_declared(cloud: str, name: str) -> None:
    # The SDKs log a warning through the engine when a deprecated resource is constructed.
    assert [line for line in _run(cloud, name).log if "deprecated" in line.lower()] == []


_SDK = {"aws": "pulumi_aws", "gcp": "pulumi_gcp", "azure-native": "pulumi_azure_native"}


@pytest.mark.parametrize(("cloud", "name"), RUNS, ids=[f"{c}-{n}" for c, n in RUNS])
def test_no_deprecated_input_is_passed(cloud: str, name: str) -> None:
    # Deprecated inputs warn only through the SDKs' *Args classes, so read their markers.
    found = []
    for resource in _run(cloud, name).resources:
        if not resource.custom:
            continue
        package, module, class_name = resource.type.split(":")
        sdk = importlib.import_module(f"{_SDK[package]}.{module.split('/')[0]}")
        source = Path(inspect.getfile(getattr(sdk, class_name))).read_text()
        for key in resource.inputs:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
            if re.search(rf"\b{snake} is deprecated", source):
                found.append(f"{resource.type}: {snake}")
    assert found == []


@pytest.mark.parametrize("cloud", sites.CLOUDS)
def test_public_load_balancer_only_where_config_asks(cloud: str) -> None:
    internal = sites.example_run(cloud, "us-east")
    public = sites.variant_run(cloud, "public")
    assert load_balancers_internal(internal.resources) == []
    violations = load_balancers_internal(public.resources)
    assert violations and {v.policy for v in violations} == {"load-balancers-internal"}
    # Config said load_balancer.internal: false, so the full check allows it ...
    assert check_all(public.resources, public_load_balancers=True) == []
    # ... and nothing else about the stack changes.
    assert no_world_admin_ingress(public.resources) == []


@pytest.mark.parametrize("cloud", sites.CLOUDS)
def test_tftp_may_be_open_to_everyone_when_config_says_so(cloud: str) -> None:
    site = sites.clustered(cloud)
    rules = site["daemon"]["security"]["network"]["firewall"]["rules"]
    tftp = next(rule for rule in rules if rule["name"] == "tftp.clients")
    tftp["sources"] = ["0.0.0.0/0", "::/0"]
    run = sites.run(cloud, site)
    assert check_all(run.resources, api_port=9080) == []
    opened = [
        resource
        for resource in run.resources
        if "0.0.0.0/0" in str(resource.inputs) and "denies" not in resource.inputs
    ]
    assert opened  # the rule was declared, and the policy let it through


# --- the policies catch what they are for --------------------------------------------------------


def _with(run: StackRun, typ: str, change: Any) -> list[DeclaredResource]:
    """The run's resources with `change(inputs)` applied to every resource of type `typ`."""
    changed = []
    for resource in run.resources:
        if resource.type == typ:
            inputs = copy.deepcopy(dict(resource.inputs))
            change(inputs)
            resource = dataclasses.replace(resource, inputs=inputs)
        changed.append(resource)
    return changed


def _without(run: StackRun, typ: str) -> list[DeclaredResource]:
    return [resource for resource in run.resources if resource.type != typ]


def test_catches_world_ssh_on_aws() -> None:
    run = sites.example_run("aws", "us-east")
    extra = DeclaredResource(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "oops",
        {"ipProtocol": "tcp", "fromPort": 20, "toPort": 30, "cidrIpv4": "0.0.0.0/0"},
    )
    (violation,) = no_world_admin_ingress([*run.resources, extra])
    assert (violation.resource, violation.policy) == ("oops", "no-world-admin-ingress")
    everything = dataclasses.replace(extra, inputs={"ipProtocol": "-1", "cidrIpv6": "::/0"})
    assert len(no_world_admin_ingress([everything])) == 3  # SSH, API and etcd


def test_catches_world_api_on_azure() -> None:
    run = sites.example_run("azure", "us-east")

    def open_api(inputs: dict[str, Any]) -> None:
        (rule,) = [r for r in inputs["securityRules"] if r["name"] == "api-from-management"]
        rule["sourceAddressPrefixes"] = ["10.0.0.0/8", "Internet"]
        rule["destinationPortRanges"] = ["8000-8100"]

    violations = no_world_admin_ingress(
        _with(run, "azure-native:network:NetworkSecurityGroup", open_api)
    )
    assert [v.message.split(" (")[0] for v in violations] == ["opens the API"]


def test_catches_etcd_open_by_gcp_default_source() -> None:
    run = sites.example_run("gcp", "us-east")

    def drop_source(inputs: dict[str, Any]) -> None:
        if inputs.get("sourceServiceAccounts"):
            del inputs["sourceServiceAccounts"]  # no source at all means 0.0.0.0/0 on GCP

    violations = no_world_admin_ingress(_with(run, "gcp:compute/firewall:Firewall", drop_source))
    assert [v.message.split(" (")[0] for v in violations] == ["opens etcd"]


@pytest.mark.parametrize(
    ("cloud", "typ", "damage", "expected"),
    [
        (
            "aws",
            "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
            lambda inputs: inputs.update(restrictPublicBuckets=False),
            "no public access block",
        ),
        (
            "aws",
            "aws:s3/bucket:Bucket",
            lambda inputs: inputs.update(acl="public-read"),
            "has a public ACL",
        ),
        (
            "azure",
            "azure-native:storage:StorageAccount",
            lambda inputs: inputs.update(allowBlobPublicAccess=True),
            "allowBlobPublicAccess is not false",
        ),
        (
            "azure",
            "azure-native:storage:StorageAccount",
            lambda inputs: inputs.pop("encryption"),
            "blob encryption is not declared",
        ),
        (
            "azure",
            "azure-native:storage:BlobContainer",
            lambda inputs: inputs.update(publicAccess="Blob"),
            "publicAccess is 'Blob'",
        ),
        (
            "gcp",
            "gcp:storage/bucket:Bucket",
            lambda inputs: inputs.update(publicAccessPrevention="inherited"),
            "publicAccessPrevention is not enforced",
        ),
        (
            "gcp",
            "gcp:storage/bucketIAMMember:BucketIAMMember",
            lambda inputs: inputs.update(member="allUsers"),
            "grants roles/storage.objectCreator on",
        ),
    ],
)
def test_catches_buckets_that_are_not_private_or_encrypted(
    cloud: str, typ: str, damage: Any, expected: str
) -> None:
    run = sites.example_run(cloud, "us-east")
    assert buckets_private_and_encrypted(run.resources) == []
    violations = buckets_private_and_encrypted(_with(run, typ, damage))
    assert [v.message for v in violations if v.message.startswith(expected)], violations


def test_catches_aws_bucket_without_encryption() -> None:
    run = sites.example_run("aws", "us-east")
    resources = _without(
        run,
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    )
    (violation,) = buckets_private_and_encrypted(resources)
    assert violation.message == "no server-side encryption configuration"
