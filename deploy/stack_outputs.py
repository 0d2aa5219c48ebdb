"""A site's stack outputs as an inventory: `pulumi stack output --json > site.json`, then
`fab deploy --inventory site.json`.

The stacks (stacks/inventory.py) export no node addresses: an autoscaled group changes without
a `pulumi up`, so a stored list would go stale. Instead they export `node_list_command`, a
cloud CLI command (`aws`, `az` or `gcloud`) that prints the running nodes' private addresses;
it runs here, when the inventory is loaded, without a shell. An explicit `node_addresses` list
(or `nodes`) in the outputs, or addresses given on the command line (`fab deploy --hosts`),
take its place.

Everything is checked before any host is touched; every problem is reported at once. The
result is an inventory document (the keys of deploy/inventory.py's `InventoryDocument`):

| output                       | inventory key |
|------------------------------|---------------|
| `site_id`                    | `site` |
| node addresses               | `hosts`, role `tftp` (names below) |
| `lb_address`, `tftp_port`    | `load_balancer.address`, `load_balancer.port` |
| `ssh_user`                   | `ssh.user` |
| `python_version`             | `release.python_version`: wheels built for the nodes' Python |
| `daemon_config`              | `config` |

Hosts found by the command or given with --hosts are named `<site>-<address>`, so a name stays
with its machine as the group scales; a `node_addresses` list keeps its own naming
(`node_names`, or `<site>-node-N`).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from deploy import DeployError

__all__ = [
    "NODE_LIST_TIMEOUT",
    "StackOutputError",
    "inventory_document",
    "is_stack_outputs",
    "run_node_list_command",
]

# `aws ec2 describe-instances` and friends answer in seconds; a hung login prompt does not.
NODE_LIST_TIMEOUT = 120.0
# Where a missing CLI comes from, by the command's first word.
_CLI_NAMES = {"aws": "the AWS CLI", "az": "the Azure CLI", "gcloud": "the Google Cloud CLI"}
_PYTHON_RE = re.compile(r"3\.[0-9]{1,2}")
_SECRET = "[secret]"


class StackOutputError(DeployError):
    """The stack outputs cannot become an inventory; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def is_stack_outputs(data: object) -> bool:
    """Stack outputs carry `site_id`; an inventory document carries `site`."""
    return isinstance(data, dict) and "site" not in data and "site_id" in data


def run_node_list_command(command: str, *, timeout: float = NODE_LIST_TIMEOUT) -> list[str]:
    """Run a stack's `node_list_command` and return the addresses it printed, checked."""
    where = "node_list_command"
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise StackOutputError([f"{where}: cannot split {command!r} into words: {exc}"]) from None
    if not argv:
        raise StackOutputError([f"{where}: is empty"])
    program = argv[0]
    if shutil.which(program) is None:
        cli = _CLI_NAMES.get(program, program)
        raise StackOutputError(
            [
                f"{where}: {program!r} is not on PATH; install {cli} and log in, or name the "
                "nodes with --hosts ADDRESS,ADDRESS,..."
            ]
        )
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StackOutputError([f"{where}: {program} gave no answer in {timeout:g} s"]) from None
    except OSError as exc:
        raise StackOutputError([f"{where}: cannot run {program}: {exc}"]) from None
    if done.returncode != 0:
        detail = " | ".join(done.stderr.strip().splitlines()[-3:]) or "no error output"
        raise StackOutputError(
            [f"{where}: {program} failed (exit {done.returncode}): {detail}; command: {command}"]
        )
    return _addresses(done.stdout.split(), f"{where}: {program} printed")


def _addresses(words: Sequence[str], source: str) -> list[str]:
    """IP addresses, each once; raise StackOutputError naming every bad or repeated one."""
    problems = []
    addresses: list[str] = []
    for word in words:
        try:
            address = str(ipaddress.ip_address(word))
        except ValueError:
            problems.append(f"{source} {word!r}, which is not an IP address")
            continue
        if address in addresses:
            problems.append(f"{source} {address} twice")
        else:
            addresses.append(address)
    if problems:
        raise StackOutputError(problems)
    return addresses


def _host_name(site: str, address: str) -> str:
    """`<site>-<address>` in the inventory's host name alphabet."""
    text = f"{site}-{address}".lower().replace(".", "-").replace(":", "-")
    return re.sub(r"[^a-z0-9-]+", "-", text).strip("-")[:63]


def _listed_hosts(
    site: str, outputs: Mapping[str, Any], problems: list[str]
) -> list[dict[str, Any]]:
    """Hosts from an explicit `node_addresses` (or `nodes`) output."""
    raw_nodes = outputs.get("node_addresses", outputs.get("nodes"))
    if not isinstance(raw_nodes, list) or not raw_nodes:
        problems.append("node_addresses: required non-empty list output is missing")
        return []
    names = outputs.get("node_names")
    if names is not None and (not isinstance(names, list) or len(names) != len(raw_nodes)):
        problems.append("node_names: must be a list as long as node_addresses")
        names = None
    hosts = []
    for index, entry in enumerate(raw_nodes):
        default_name = names[index] if names else f"{site}-node-{index + 1}"
        if isinstance(entry, str):
            hosts.append({"name": default_name, "address": entry})
        elif isinstance(entry, dict) and isinstance(entry.get("address"), str):
            hosts.append({"name": entry.get("name", default_name), "address": entry["address"]})
        else:
            problems.append(f"node_addresses[{index}]: expected an address or {{name, address}}")
    return hosts


def _named(site: str, addresses: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": _host_name(site, address), "address": address} for address in addresses]


def _hosts(
    site: str,
    outputs: Mapping[str, Any],
    override: Sequence[str] | None,
    problems: list[str],
) -> list[dict[str, Any]]:
    """The site's nodes: --hosts, else node_addresses/nodes, else node_list_command."""
    if override:
        try:
            return _named(site, _addresses(override, "--hosts: given"))
        except StackOutputError as exc:
            problems += exc.problems
            return []
    if "node_addresses" in outputs or "nodes" in outputs:
        return _listed_hosts(site, outputs, problems)
    command = outputs.get("node_list_command")
    if not isinstance(command, str):
        problems.append(
            "node_list_command: required string output is missing (or give node_addresses, "
            "or --hosts ADDRESS,...); run `pulumi stack output --json` in the site's stack"
        )
        return []
    try:
        addresses = run_node_list_command(command)
    except StackOutputError as exc:
        problems += exc.problems
        return []
    if not addresses:
        problems.append(
            f"node_list_command: no running nodes (the command printed no addresses; is the "
            f"group {outputs.get('node_group', '')!s} scaled to zero or still booting?)"
        )
    return _named(site, addresses)


def _quorum_problems(hosts: Sequence[Mapping[str, Any]]) -> list[str]:
    count = len(hosts)
    if count == 0:
        return []  # already reported with its cause
    if count < 3:
        return [f"nodes: {count} found; a site needs at least 3 for quorum"]
    if count % 2 == 0:
        return [
            f"nodes: {count} found, an even number: it adds no fault tolerance over "
            f"{count - 1}; wait for the group to settle at an odd size, or pick an odd set "
            "with --hosts"
        ]
    return []


def _string(
    outputs: Mapping[str, Any],
    key: str,
    expected: str,
    problems: list[str],
    pattern: re.Pattern[str] | None = None,
) -> str | None:
    """A string output, None when absent; a wrong one is a problem."""
    value = outputs.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value and (pattern is None or pattern.fullmatch(value)):
        return value
    problems.append(f"{key}: expected {expected} (got {value!r})")
    return None


def _settings(outputs: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """Inventory settings from the other outputs; absent outputs leave the defaults."""
    document: dict[str, Any] = {}
    lb_key = "lb_address" if "lb_address" in outputs else "load_balancer_address"
    lb_address = _string(outputs, lb_key, "an address", problems)
    if lb_address is not None:
        port = outputs.get("tftp_port")
        document["load_balancer"] = {"address": lb_address, **({"port": port} if port else {})}
    user = _string(outputs, "ssh_user", "a user name", problems)
    if user is not None:
        document["ssh"] = {"user": user}
    python = _string(outputs, "python_version", '"3.N" such as "3.12"', problems, _PYTHON_RE)
    if python is not None:
        document["release"] = {"python_version": python}
    config = outputs.get("daemon_config")
    if config == _SECRET:
        problems.append(
            "daemon_config: printed as [secret] (the daemon config holds tokens); write the "
            "file with `pulumi stack output --json --show-secrets > site.json` and keep it private"
        )
    elif config is not None:
        if not isinstance(config, dict):
            problems.append("daemon_config: expected a JSON object (the daemon config)")
        else:
            document["config"] = config
    return document


def inventory_document(
    outputs: Mapping[str, Any], *, hosts: Sequence[str] | None = None
) -> dict[str, Any]:
    """The inventory document of a site's stack outputs; raise StackOutputError.

    `hosts` (addresses) replaces the outputs' node addresses and their node_list_command.
    """
    problems: list[str] = []
    site = outputs.get("site_id")
    if not isinstance(site, str) or not site:
        problems.append("site_id: required string output is missing")
        site = "site"
    document = _settings(outputs, problems)
    node_problems: list[str] = []
    found = _hosts(site, outputs, hosts, node_problems)
    problems += node_problems or _quorum_problems(found)
    if problems:
        raise StackOutputError([f"pulumi outputs: {p}" for p in problems])
    return {"site": site, "hosts": found, **document}
