"""Runs a stack program under Pulumi's mocks and records every resource it declares.

No CLI, no provider plugins, no network: `pulumi.runtime.set_mocks` replaces the engine, the
program runs with `runpy` in a fresh event loop and a fresh context (so the Pulumi runtime's
context variables start empty), and each registration is kept as a `Declared` record with the
inputs exactly as the provider would receive them (camelCase keys).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import runpy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.stack import run_pulumi_func

from stacks.policy import DeclaredResource

STACKS_DIR = Path(__file__).resolve().parents[2] / "stacks"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
GCP_PROJECT = "tftp-project"


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like a provider would (ids, computed attributes) and records what it is asked."""

    def __init__(self) -> None:
        self.resources: list[DeclaredResource] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def new_resource(
        self, args: pulumi.runtime.MockResourceArgs
    ) -> tuple[str | None, dict[str, Any]]:
        secret = frozenset(key for key, value in args.inputs.items() if _has_secret(value))
        inputs = _unwrap(dict(args.inputs))
        resource_id = _resource_id(args.typ, args.name, inputs)
        self.resources.append(
            DeclaredResource(args.typ, args.name, inputs, resource_id, bool(args.custom), secret)
        )
        return resource_id, {**inputs, **_computed(args.typ, args.name, inputs, resource_id)}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        self.calls.append((args.token, dict(args.args)))
        if args.token == "azure-native:authorization:getClientConfig":
            return {
                "clientId": "client",
                "objectId": "object",
                "subscriptionId": SUBSCRIPTION,
                "tenantId": "tenant",
            }, []
        return {}, []


# How the mock monitor hands over a secret value.
_SECRET_SIG = ("4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270")


def _is_secret(value: object) -> bool:
    return isinstance(value, dict) and value.get(_SECRET_SIG[0]) == _SECRET_SIG[1]


def _has_secret(value: Any) -> bool:
    if _is_secret(value):
        return True
    if isinstance(value, dict):
        return any(_has_secret(item) for item in value.values())
    return isinstance(value, list) and any(_has_secret(item) for item in value)


def _unwrap(value: Any) -> Any:
    if _is_secret(value):
        return _unwrap(value["value"])
    if isinstance(value, dict):
        return {key: _unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unwrap(item) for item in value]
    return value


def _resource_id(typ: str, name: str, inputs: Mapping[str, Any]) -> str:
    if typ.startswith("azure-native:"):
        group = inputs.get("resourceGroupName", "rg")
        return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/{typ}/{name}"
    if typ in ("aws:s3/bucket:Bucket", "gcp:storage/bucket:Bucket"):
        return f"{name}-0a1b2c3"  # an auto-named bucket: its id is its name
    return f"{name}-id"


# azure-native resources named by an input of their own (the rest are auto-named).
_AZURE_NAME_INPUTS = {
    "azure-native:compute:VirtualMachineScaleSet": "vmScaleSetName",
    "azure-native:network:LoadBalancer": "loadBalancerName",
    "azure-native:resources:ResourceGroup": "resourceGroupName",
    "azure-native:storage:BlobContainer": "containerName",
    "azure-native:storage:StorageAccount": "accountName",
}


def _computed(typ: str, name: str, inputs: Mapping[str, Any], resource_id: str) -> dict[str, Any]:
    provider = typ.split(":")[0]
    state: dict[str, Any] = {"name": inputs.get(_AZURE_NAME_INPUTS.get(typ, "name"), name)}
    if provider == "aws":
        state["arn"] = f"arn:aws:mock::{typ}:{name}"
        if typ == "aws:s3/bucket:Bucket":
            state.update(bucket=resource_id, arn=f"arn:aws:s3:::{resource_id}")
        if typ == "aws:lb/loadBalancer:LoadBalancer":
            state["dnsName"] = f"{name}.elb.us-east-1.amazonaws.com"
        if typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
    elif provider == "azure-native":
        if "identity" in inputs:  # a list of ids going in, a map by id coming out
            ids = inputs["identity"].get("userAssignedIdentities") or []
            state["identity"] = {
                **inputs["identity"],
                "userAssignedIdentities": {i: {} for i in ids},
            }
        if typ == "azure-native:managedidentity:UserAssignedIdentity":
            state.update(principalId=f"{name}-principal", clientId=f"{name}-client")
        if typ == "azure-native:network:LoadBalancer":
            frontends = [
                {**frontend, "privateIPAddress": "10.30.0.4"}
                for frontend in inputs.get("frontendIPConfigurations", [])
            ]
            state["frontendIPConfigurations"] = frontends
        if typ == "azure-native:network:PublicIPAddress":
            state["ipAddress"] = "203.0.113.10"
    elif provider == "gcp":
        state["selfLink"] = f"https://www.googleapis.com/compute/v1/projects/{GCP_PROJECT}/{name}"
        if typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{inputs['accountId']}@{GCP_PROJECT}.iam.gserviceaccount.com"
        if typ == "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager":
            state["instanceGroup"] = f"{name}-instance-group"
        if typ == "gcp:compute/address:Address":
            state["address"] = "10.30.0.10"
        if typ == "gcp:storage/bucket:Bucket":
            state.update(name=resource_id, url=f"gs://{resource_id}")
    return state


@dataclass
class StackRun:
    resources: list[DeclaredResource]
    outputs: dict[str, Any] = field(default_factory=dict)
    # Outputs `pulumi stack output --json` prints as "[secret]" (without --show-secrets).
    secret_outputs: set[str] = field(default_factory=set)
    # What the program logged through the engine, e.g. SDK deprecation warnings.
    log: list[str] = field(default_factory=list)

    def stack_output_json(self, *, show_secrets: bool = False) -> str:
        """What `pulumi stack output --json [--show-secrets]` prints for this stack."""
        shown = {
            key: value if show_secrets or key not in self.secret_outputs else "[secret]"
            for key, value in self.outputs.items()
        }
        return json.dumps(shown, indent=2)

    def of_type(self, typ: str) -> list[DeclaredResource]:
        # Mocks register resources in whatever order their awaits finish: sort for stable tests.
        return sorted((r for r in self.resources if r.type == typ), key=lambda r: r.name)

    def one(
        self, typ: str, where: Callable[[DeclaredResource], bool] = lambda r: True
    ) -> DeclaredResource:
        found = [r for r in self.of_type(typ) if where(r)]
        assert len(found) == 1, f"expected one {typ}, found {[r.name for r in found]}"
        return found[0]


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.levelname}: {record.getMessage()}")


def _logger(into: list[str]) -> logging.Logger:
    logger = logging.Logger(f"{__name__}.run")  # unregistered: one per run, nothing shared
    logger.addHandler(_Collect(into))
    return logger


def run_stack(
    cloud: str,
    site: Mapping[str, Any] | None,
    provider_config: Mapping[str, str],
    *,
    stack: str = "test",
) -> StackRun:
    """Run stacks/<cloud> with `site` as its `site` config; raises what the program raises.

    The recorded resources are available even when the program fails: `exc.stack_run`.
    """
    project = f"simple-tftpd-{cloud}"
    config = dict(provider_config)
    if site is not None:
        config[f"{project}:site"] = json.dumps(site)
    mocks = RecordingMocks()
    run = StackRun(mocks.resources)

    def program() -> None:
        runpy.run_path(str(STACKS_DIR / cloud), run_name="__main__")

    def execute() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            pulumi.runtime.set_mocks(
                mocks, project=project, stack=stack, preview=False, logger=_logger(run.log)
            )
            pulumi.runtime.set_all_config(config)
            loop.run_until_complete(run_pulumi_func(program))
            root = runtime_settings.get_root_resource()
            exported: dict[str, Any] = dict(getattr(root, "outputs", {}))
            for key, value in exported.items():
                output = pulumi.Output.from_input(value)
                run.outputs[key] = loop.run_until_complete(output.future())
                if loop.run_until_complete(output.is_secret()):
                    run.secret_outputs.add(key)
        finally:
            loop.close()
            asyncio.set_event_loop(None)

    try:
        contextvars.Context().run(execute)
    except Exception as exc:
        exc.stack_run = run  # type: ignore[attr-defined]
        raise
    return run
