"""A stand-in for `aws`, `az` and `gcloud`, run as a real program from a directory on PATH.

It knows only the one listing command each stack exports, parses it as strictly as the real
CLI does (unknown subcommands and options fail with the real exit codes), applies the filter
and the `--query` (JMESPath, as the real CLIs) or `--format value(...)` projection to the
cloud's machines in `<name>.state.json` beside it, and prints what the real CLI prints for the
output format asked. Every call is appended to `<name>.calls.jsonl`.

State: {"machines": [...], "fail": {"code": N, "stderr": "..."}}, with machines as the cloud's
API describes them (see tests/deploy/test_stack_outputs.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jmespath

# The real CLIs' exit codes for a command line they do not accept.
USAGE_EXIT = {"aws": 252, "az": 2, "gcloud": 2}


def usage(program: str, message: str) -> None:
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT[program])


def options(program: str, words: list[str], allowed: dict[str, int]) -> dict[str, list[str]]:
    """Parse `--name value`, `--name=value` and flags; `allowed` gives each option's arity
    (0 flag, 1 value, -1 one or more values)."""
    parsed: dict[str, list[str]] = {}
    index = 0
    while index < len(words):
        word = words[index]
        name, has_value, inline = word.partition("=")
        if not name.startswith("-") or name not in allowed:
            usage(program, f"unrecognized arguments: {word}")
        arity = allowed[name]
        if has_value:
            values, index = [inline], index + 1
        elif arity == 0:
            values, index = [], index + 1
        else:
            end = index + 2 if arity == 1 else index + 1
            while arity == -1 and end < len(words) and not words[end].startswith("--"):
                end += 1
            values, index = words[index + 1 : end], end
            if not values or any(v.startswith("--") for v in values):
                usage(program, f"argument {name}: expected a value")
        parsed[name] = values
    return parsed


def aws(state: dict[str, Any], words: list[str]) -> str:
    if words[:2] != ["ec2", "describe-instances"]:
        usage("aws", f"argument operation: invalid choice: {' '.join(words[:2])}")
    opts = options("aws", words[2:], {"--region": 1, "--filters": -1, "--query": 1, "--output": 1})
    instances = [m for m in state["machines"] if m.get("Region") == opts["--region"][0]]
    for spec in opts.get("--filters", []):
        fields = dict(part.split("=", 1) for part in spec.split(",", 1))
        if set(fields) != {"Name", "Values"}:
            usage("aws", f"Error parsing parameter '--filters': {spec}")
        name, value = fields["Name"], fields["Values"]
        if name.startswith("tag:"):
            key = name[4:]
            instances = [m for m in instances if {"Key": key, "Value": value} in m.get("Tags", [])]
        elif name == "instance-state-name":
            instances = [m for m in instances if m["State"]["Name"] == value]
        else:
            usage("aws", f"unknown filter {name}")
    response = {"Reservations": [{"Instances": [m]} for m in instances]}
    result = jmespath.search(opts["--query"][0], response) if "--query" in opts else response
    output = opts.get("--output", ["json"])[0]
    if output == "json":
        return json.dumps(result, indent=4) + "\n"
    if output != "text":
        usage("aws", f"argument --output: invalid choice: '{output}'")
    # Text output: a list of scalars is one line, tab-separated.
    assert isinstance(result, list)
    return "\t".join(str(item) for item in result) + "\n" if result else ""


def az(state: dict[str, Any], words: list[str]) -> str:
    if words[:2] != ["vm", "list"]:
        usage("az", f"'{' '.join(words[:2])}' is misspelled or not recognized by the system.")
    opts = options(
        "az",
        words[2:],
        {
            "--show-details": 0,
            "-d": 0,
            "--resource-group": 1,
            "-g": 1,
            "--query": 1,
            "--output": 1,
            "-o": 1,
        },
    )
    group = next(iter(opts.get("--resource-group") or opts.get("-g") or []), None)
    details = "--show-details" in opts or "-d" in opts
    vms = []
    for machine in state["machines"]:
        if group is not None and machine["resourceGroup"].lower() != group.lower():
            continue
        vm = {
            key: value for key, value in machine.items() if key not in ("powerState", "privateIps")
        }
        if details:  # only --show-details adds the instance view and the addresses
            vm.update(powerState=machine["powerState"], privateIps=machine["privateIps"])
        vms.append(vm)
    result = jmespath.search(opts["--query"][0], vms) if "--query" in opts else vms
    output = (opts.get("--output") or opts.get("-o") or ["json"])[0]
    if output == "json":
        return json.dumps(result, indent=2) + "\n"
    if output != "tsv":
        usage("az", f"argument --output/-o: invalid choice: '{output}'")
    assert isinstance(result, list)
    return "".join(f"{item}\n" for item in result)


def _field(document: Any, path: str) -> Any:
    for part in path.split("."):
        document = document.get(part) if isinstance(document, dict) else None
    return document


def gcloud(state: dict[str, Any], words: list[str]) -> str:
    if words[:3] != ["compute", "instances", "list"]:
        usage("gcloud", f"Invalid choice: '{' '.join(words[:3])}'.")
    opts = options("gcloud", words[3:], {"--project": 1, "--filter": 1, "--format": 1})
    instances = [m for m in state["machines"] if m.get("project") == opts["--project"][0]]
    for term in opts.get("--filter", [""])[0].split(" AND "):
        if term:
            path, _, value = term.partition("=")
            instances = [m for m in instances if str(_field(m, path.strip())) == value.strip()]
    fmt = opts.get("--format", ["default"])[0]
    if not (fmt.startswith("value(") and fmt.endswith(")")):
        return json.dumps(instances, indent=2) + "\n"
    expression = fmt[len("value(") : -1]
    return "".join(f"{jmespath.search(expression, m)}\n" for m in instances)


def main() -> None:
    # Started by a shell shim on PATH: argv[1] is the path it was found at.
    invoked, words = Path(sys.argv[1]), sys.argv[2:]
    program = invoked.name
    with (invoked.parent / f"{program}.calls.jsonl").open("a") as log:
        log.write(json.dumps(words) + "\n")
    state = json.loads((invoked.parent / f"{program}.state.json").read_text())
    if "fail" in state:
        print(state["fail"]["stderr"], file=sys.stderr)
        sys.exit(state["fail"]["code"])
    sys.stdout.write({"aws": aws, "az": az, "gcloud": gcloud}[program](state, words))


if __name__ == "__main__":
    main()
