"""Stack outputs as the fabfile's inventory: `pulumi stack output --json > site.json`, then
`fab deploy --inventory site.json`.

The outputs are those the real stack programs export (run under Pulumi's mocks,
tests/stacks/harness.py). Node addresses come from the stack's `node_list_command`, run as a
real subprocess against a fake `aws`/`az`/`gcloud` first on PATH (tests/deploy/fake_cloud_cli.py)
that parses the command line as strictly as the real CLI and evaluates its query.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fabric import Config
from invoke.context import Context
from invoke.exceptions import Exit

import fabfile
from deploy import DeployError, release
from deploy.inventory import InventoryError, ReleaseTarget, Site, load_inventory
from tests.stacks.harness import StackRun
from tests.stacks.sites import example_run, variant_run

# The provider SDKs warn at import about classes the stacks never use (tests/stacks/conftest.py).
pytestmark = pytest.mark.filterwarnings(
    r"ignore:.*deprecated in favor of:DeprecationWarning:pulumi_(aws|gcp|azure_native)\."
)

FAKE_CLI = Path(__file__).with_name("fake_cloud_cli.py")
PROGRAM = {"aws": "aws", "azure": "az", "gcp": "gcloud"}
NODES = ["10.30.0.11", "10.30.1.12", "10.30.2.13"]


class FakeCloud:
    """A cloud CLI on PATH that knows some machines; records every call."""

    def __init__(self, bin_dir: Path, program: str) -> None:
        self.bin_dir, self.program = bin_dir, program
        shim = bin_dir / program
        shim.write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE_CLI))} "
            '"$0" "$@"\n'
        )
        shim.chmod(0o755)
        self.state({"machines": []})

    def state(self, state: dict[str, Any]) -> None:
        (self.bin_dir / f"{self.program}.state.json").write_text(json.dumps(state))

    @property
    def calls(self) -> list[list[str]]:
        log = self.bin_dir / f"{self.program}.calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The only directory on PATH: no real cloud CLI can answer (the shims name their
    interpreters by absolute path)."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


def fake_cli(bin_dir: Path, cloud: str) -> FakeCloud:
    return FakeCloud(bin_dir, PROGRAM[cloud])


# --- the clouds' machines, as each cloud's API describes them ----------------------------------


def aws_machines(outputs: dict[str, Any], addresses: list[str]) -> list[dict[str, Any]]:
    def instance(address: str, group: str, state: str) -> dict[str, Any]:
        return {
            "Region": outputs["region"],
            "PrivateIpAddress": address,
            "State": {"Name": state},
            "Tags": [{"Key": "aws:autoscaling:groupName", "Value": group}],
        }

    group = outputs["node_group"]
    return [
        *(instance(address, group, "running") for address in addresses),
        instance("10.30.9.1", group, "terminated"),
        instance("10.30.9.2", "another-group", "running"),
    ]


def azure_machines(outputs: dict[str, Any], addresses: list[str]) -> list[dict[str, Any]]:
    group = shlex.split(outputs["node_list_command"])[5]  # after --resource-group
    scale_sets = f"/subscriptions/0/resourceGroups/{group}/providers/Microsoft.Compute/"

    def vm(address: str, scale_set: str | None, power: str) -> dict[str, Any]:
        return {
            "name": f"vm-{address}",
            "resourceGroup": group.upper(),  # Azure does not keep the case
            "virtualMachineScaleSet": (
                {"id": f"{scale_sets}virtualMachineScaleSets/{scale_set}"} if scale_set else None
            ),
            "powerState": power,
            "privateIps": address,
        }

    own = outputs["node_group"]
    return [
        *(vm(address, own, "VM running") for address in addresses),
        vm("10.30.9.1", own, "VM deallocated"),
        vm("10.30.9.2", f"other-{own}", "VM running"),
        vm("10.30.9.3", None, "VM running"),
    ]


def gcp_machines(outputs: dict[str, Any], addresses: list[str]) -> list[dict[str, Any]]:
    project = shlex.split(outputs["node_list_command"])[5]  # after --project

    def instance(address: str, site: str, status: str) -> dict[str, Any]:
        return {
            "project": project,
            "name": f"tftp-{address}",
            "status": status,
            "labels": {"simple-tftpd-site": site, "managed-by": "pulumi"},
            "networkInterfaces": [{"networkIP": address, "network": "default"}],
        }

    site = outputs["site_id"].replace(".", "-").replace("_", "-")
    return [
        *(instance(address, site, "RUNNING") for address in addresses),
        instance("10.30.9.1", site, "TERMINATED"),
        instance("10.30.9.2", "other-site", "RUNNING"),
    ]


MACHINES = {"aws": aws_machines, "azure": azure_machines, "gcp": gcp_machines}


def stack_file(tmp_path: Path, run: StackRun, **changes: Any) -> Path:
    """The file `pulumi stack output --json > site.json` writes, with `changes` applied."""
    outputs = json.loads(run.stack_output_json())
    outputs.update(changes)
    path = tmp_path / "site.json"
    path.write_text(json.dumps({k: v for k, v in outputs.items() if v is not None}))
    return path


def cloud_with_nodes(bin_dir: Path, cloud: str, addresses: list[str]) -> tuple[StackRun, FakeCloud]:
    run = example_run(cloud, "us-east")
    fake = fake_cli(bin_dir, cloud)
    fake.state({"machines": MACHINES[cloud](run.outputs, addresses)})
    return run, fake


def problems(path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(InventoryError) as failure:
        load_inventory(path, **kwargs)
    assert str(path) in str(failure.value)
    return failure.value.problems


# --- a stack's outputs are an inventory ---------------------------------------------------------


@pytest.mark.parametrize("cloud", ["aws", "azure", "gcp"])
def test_stack_outputs_are_an_inventory(cloud: str, tmp_path: Path, bin_dir: Path) -> None:
    run, fake = cloud_with_nodes(bin_dir, cloud, NODES)
    site = load_inventory(stack_file(tmp_path, run))

    # The command ran once, exactly as exported, and found only the group's running nodes.
    assert fake.calls == [shlex.split(run.outputs["node_list_command"])[1:]]
    assert [node.address for node in site.tftp_nodes] == NODES
    assert [node.name for node in site.nodes] == [
        "us-east-10-30-0-11",
        "us-east-10-30-1-12",
        "us-east-10-30-2-13",
    ]
    assert site.site_id == "us-east"
    assert site.load_balancer_address == run.outputs["lb_address"]
    assert site.settings.load_balancer.port == 69
    assert site.settings.ssh.user == "tftpadmin"
    assert site.settings.release.python_version == "3.12"
    # Every node runs the daemon config the stack gave its nodes, with its own node id.
    node = site.node("us-east-10-30-1-12")
    assert node.config.node.node_id == "us-east-10-30-1-12"
    assert node.config.tftp.single_port
    assert node.config.tftp.root.as_posix() == "/var/lib/simple-tftpd/tftpboot"
    assert node.config.backup.locations[0] == run.outputs["backup_location"]
    expected_bind = run.outputs["lb_address"] if cloud == "gcp" else "0.0.0.0"
    assert node.config.tftp.bind == expected_bind


def test_the_node_list_commands_are_the_clouds_documented_commands() -> None:
    aws, azure, gcp = (example_run(cloud, "us-east").outputs for cloud in ("aws", "azure", "gcp"))
    assert shlex.split(aws["node_list_command"]) == [
        "aws", "ec2", "describe-instances", "--region", "us-east-1",
        "--filters", f"Name=tag:aws:autoscaling:groupName,Values={aws['node_group']}",
        "Name=instance-state-name,Values=running",
        "--query", "Reservations[].Instances[].PrivateIpAddress", "--output", "text",
    ]  # fmt: skip
    words = shlex.split(azure["node_list_command"])
    assert words[:4] == ["az", "vm", "list", "--show-details"]
    assert words[4] == "--resource-group" and words[5] == "us-east-rg"
    assert words[6:] == [
        "--query",
        "[?virtualMachineScaleSet && ends_with(virtualMachineScaleSet.id, "
        f"'/{azure['node_group']}') && powerState=='VM running'].privateIps",
        "--output",
        "tsv",
    ]
    assert shlex.split(gcp["node_list_command"]) == [
        "gcloud", "compute", "instances", "list", "--project", "my-provisioning-project",
        "--filter=labels.simple-tftpd-site=us-east AND status=RUNNING",
        "--format=value(networkInterfaces[0].networkIP)",
    ]  # fmt: skip


def test_a_clustered_site_with_tokens_needs_show_secrets(tmp_path: Path, bin_dir: Path) -> None:
    run = variant_run("gcp", "clustered")
    assert "daemon_config" in run.secret_outputs  # it carries the API and sync tokens
    fake = fake_cli(bin_dir, "gcp")
    five = [f"10.60.0.{n}" for n in range(11, 16)]
    fake.state({"machines": gcp_machines(run.outputs, five)})

    path = tmp_path / "site.json"
    path.write_text(run.stack_output_json())
    assert problems(path) == [
        "pulumi outputs: daemon_config: printed as [secret] (the daemon config holds tokens); "
        "write the file with `pulumi stack output --json --show-secrets > site.json` and keep "
        "it private"
    ]

    path.write_text(run.stack_output_json(show_secrets=True))
    site = load_inventory(path)
    assert [node.address for node in site.nodes] == five
    node = site.node("lab-west-1-10-60-0-13")
    clustering = node.config.clustering
    # The per-node values come from the inventory, not from the stack's placeholder.
    assert clustering.advertise == "10.60.0.13:9080"
    assert clustering.nodes == [f"{address}:9080" for address in five]
    assert node.config.api.token == "lab-api-token-0123456789"


def test_yaml_settings_overlay_a_stack_file(tmp_path: Path, bin_dir: Path) -> None:
    run, _ = cloud_with_nodes(bin_dir, "aws", NODES)
    stack_file(tmp_path, run)
    overlay = tmp_path / "site.yaml"
    overlay.write_text(
        "pulumi_outputs: site.json\n"
        "ssh: {host_key_policy: accept-new}\n"
        "config: {logging: {level: debug}}\n"
        "hosts:\n"
        "  - {name: us-east-10-30-2-13, config: {logging: {level: warning}}}\n"
    )
    site = load_inventory(overlay)
    assert site.settings.ssh.user == "tftpadmin" and site.settings.ssh.host_key_policy == (
        "accept-new"
    )
    assert site.settings.release.python_version == "3.12"
    levels = [node.config.logging.level for node in site.nodes]
    assert levels == ["debug", "debug", "warning"]
    # The stack's config is kept below the YAML's.
    assert all(node.config.tftp.single_port for node in site.nodes)


# --- where the nodes come from instead ----------------------------------------------------------


def test_hosts_override_the_command(tmp_path: Path, bin_dir: Path) -> None:
    run = example_run("aws", "us-east")  # no aws on PATH at all
    site = load_inventory(stack_file(tmp_path, run), hosts=["10.1.0.7", "10.1.0.5", "10.1.0.6"])
    assert [node.address for node in site.nodes] == ["10.1.0.7", "10.1.0.5", "10.1.0.6"]
    assert site.nodes[0].name == "us-east-10-1-0-7"


def test_an_explicit_node_address_list_needs_no_cli(tmp_path: Path, bin_dir: Path) -> None:
    run = example_run("azure", "us-east")
    path = stack_file(tmp_path, run, node_addresses=["10.1.0.5", "10.1.0.6", "10.1.0.7"])
    site = load_inventory(path)
    assert [node.name for node in site.nodes] == [
        "us-east-node-1",
        "us-east-node-2",
        "us-east-node-3",
    ]


def test_hosts_are_only_for_stack_outputs(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("site: lab\nhosts: []\n")
    assert problems(path, hosts=["10.0.0.1"]) == [
        "--hosts: only for stack outputs; list the hosts in the inventory"
    ]


# --- every error before any host is touched ----------------------------------------------------


def test_a_missing_cli_says_what_to_install(tmp_path: Path, bin_dir: Path) -> None:
    path = stack_file(tmp_path, example_run("gcp", "us-east"))
    assert problems(path) == [
        "pulumi outputs: node_list_command: 'gcloud' is not on PATH; install the Google Cloud "
        "CLI and log in, or name the nodes with --hosts ADDRESS,ADDRESS,..."
    ]


def test_a_failing_cli_shows_its_error(tmp_path: Path, bin_dir: Path) -> None:
    run = example_run("aws", "us-east")
    fake = fake_cli(bin_dir, "aws")
    fake.state({"fail": {"code": 253, "stderr": "\nUnable to locate credentials."}})
    (found,) = problems(stack_file(tmp_path, run))
    assert found.startswith(
        "pulumi outputs: node_list_command: aws failed (exit 253): Unable to locate credentials.; "
        "command: aws ec2 describe-instances"
    )


def test_a_command_the_cli_refuses(tmp_path: Path, bin_dir: Path) -> None:
    run = example_run("aws", "us-east")
    fake_cli(bin_dir, "aws")
    command = run.outputs["node_list_command"].replace("--output text", "--output txt")
    (found,) = problems(stack_file(tmp_path, run, node_list_command=command))
    assert "aws failed (exit 252): aws: error: argument --output: invalid choice: 'txt'" in found


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (
            [],
            "node_list_command: no running nodes (the command printed no addresses; is the "
            "group {group} scaled to zero or still booting?)",
        ),
        (NODES[:2], "nodes: 2 found; a site needs at least 3 for quorum"),
        (
            [*NODES, "10.30.3.14"],
            "nodes: 4 found, an even number: it adds no fault tolerance over 3; wait for the "
            "group to settle at an odd size, or pick an odd set with --hosts",
        ),
    ],
)
def test_node_counts_that_break_quorum(
    addresses: list[str], expected: str, tmp_path: Path, bin_dir: Path
) -> None:
    run, _ = cloud_with_nodes(bin_dir, "azure", addresses)
    expected = expected.format(group=run.outputs["node_group"])
    assert problems(stack_file(tmp_path, run)) == [f"pulumi outputs: {expected}"]


def test_bad_addresses_from_the_cli(tmp_path: Path, bin_dir: Path) -> None:
    run = example_run("aws", "us-east")
    fake = fake_cli(bin_dir, "aws")
    machines = aws_machines(run.outputs, [*NODES, NODES[0]])
    machines[1]["PrivateIpAddress"] = "10.30.1"
    fake.state({"machines": machines})
    assert problems(stack_file(tmp_path, run)) == [
        "pulumi outputs: node_list_command: aws printed '10.30.1', which is not an IP address",
        "pulumi outputs: node_list_command: aws printed 10.30.0.11 twice",
    ]


def test_bad_hosts_option(tmp_path: Path) -> None:
    path = stack_file(tmp_path, example_run("aws", "us-east"))
    assert problems(path, hosts=["10.0.0.1", "tftp-2", "10.0.0.1"]) == [
        "pulumi outputs: --hosts: given 'tftp-2', which is not an IP address",
        "pulumi outputs: --hosts: given 10.0.0.1 twice",
    ]


def test_missing_and_malformed_outputs(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    path.write_text(
        json.dumps(
            {"site_id": "us-east", "python_version": "3", "daemon_config": [], "lb_address": 7}
        )
    )
    assert problems(path) == [
        "pulumi outputs: lb_address: expected an address (got 7)",
        'pulumi outputs: python_version: expected "3.N" such as "3.12" (got \'3\')',
        "pulumi outputs: daemon_config: expected a JSON object (the daemon config)",
        "pulumi outputs: node_list_command: required string output is missing (or give "
        "node_addresses, or --hosts ADDRESS,...); run `pulumi stack output --json` in the site's "
        "stack",
    ]
    path.write_text(json.dumps({"site_id": "us-east", "node_list_command": "aws 'ec2"}))
    (found,) = problems(path)
    assert found.startswith('pulumi outputs: node_list_command: cannot split "aws \'ec2"')


# --- the fabfile: from the stack file to the wheelhouse ------------------------------------------


@pytest.fixture
def no_hosts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fails the test's expectations if a task connects to any host; lists who was asked."""
    touched: list[str] = []

    def connect(node: Any, config: object) -> None:
        touched.append(node.name)
        raise AssertionError("a host was touched")

    monkeypatch.setattr(fabfile, "connect", connect)
    yield touched


def test_fab_deploy_builds_wheels_for_the_nodes_python(
    tmp_path: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch, no_hosts: list[str]
) -> None:
    run, _ = cloud_with_nodes(bin_dir, "gcp", NODES)
    targets: list[ReleaseTarget] = []

    def build_release(work_dir: Path, target: ReleaseTarget, **kwargs: Any) -> None:
        targets.append(target)
        raise DeployError("stopped after choosing the wheels")

    monkeypatch.setattr(fabfile, "build_release", build_release)
    with pytest.raises(Exit, match="stopped after choosing the wheels"):
        fabfile.deploy(Context(config=Config()), inventory=str(stack_file(tmp_path, run)))
    assert [target.python_version for target in targets] == ["3.12"]
    assert no_hosts == []


def test_the_wheelhouse_asks_pip_for_the_nodes_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[list[str]] = []

    def run(argv: list[str], what: str, cwd: Path | None = None) -> str:
        asked.append(argv)
        return ""

    monkeypatch.setattr(release, "_run", run)
    site: Site = load_inventory(stack_file(tmp_path, example_run("aws", "us-east")), hosts=NODES)
    release.dependency_wheels("attrs==25.1.0\n", site.settings.release, tmp_path / "cache")
    (argv,) = asked
    assert argv[argv.index("--python-version") + 1] == "3.12"
    assert argv[argv.index("--abi") + 1] == "cp312"


def test_fab_deploy_with_a_bad_stack_file_touches_no_host(
    tmp_path: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch, no_hosts: list[str]
) -> None:
    run, _ = cloud_with_nodes(bin_dir, "aws", NODES[:2])
    builds: list[ReleaseTarget] = []

    def build_release(work_dir: Path, target: ReleaseTarget, **kwargs: Any) -> None:
        builds.append(target)
        raise DeployError("stopped before the hosts")

    monkeypatch.setattr(fabfile, "build_release", build_release)
    inventory = str(stack_file(tmp_path, run))
    with pytest.raises(Exit, match="a site needs at least 3 for quorum"):
        fabfile.deploy(Context(config=Config()), inventory=inventory)
    assert builds == []
    # An odd set of nodes named on the command line is taken instead.
    with pytest.raises(Exit, match="stopped before the hosts"):
        fabfile.deploy(
            Context(config=Config()), inventory=inventory, hosts="10.30.0.11,10.30.1.12,10.30.2.13"
        )
    assert len(builds) == 1
    assert no_hosts == []
