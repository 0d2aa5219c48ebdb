"""Benchmark simple-tftpd side by side with tftpd-hpa, atftpd and tftpy in one run.

    make bench                      # full run, writes docs/benchmarks.md
    make bench ARGS=--quick         # smoke-sized run, writes benchmarks/results/quick.md
    python benchmarks/run.py --servers simple-tftpd,tftpd-hpa --scenarios big,storm

Peers are fetched and started by this script (see tftpbench/system.py); every server listens
on 127.0.0.1 on a free high port and is stopped by PID. Every download is verified by sha256.
The output is a report, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from types import FrameType

from tftpbench import cgroup
from tftpbench.report import CAVEATS, COLUMNS, Results, results_markdown, servers_markdown
from tftpbench.scenarios import FULL, MIB, QUICK, SCENARIOS, Content, Workload, make_content
from tftpbench.servers import SERVERS, LaunchContext, running
from tftpbench.system import (
    SetupError,
    after_run_facts,
    build_reference,
    compile_python_servers,
    cpu_busy_seconds,
    ensure_peer,
    machine_facts,
    require_clients,
    simple_tftpd_command,
    source_revision,
    tool_version,
)

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache"
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
# Quick runs must not overwrite the committed full report by default; results/ is gitignored.
QUICK_OUT = REPO / "benchmarks" / "results" / "quick.md"


@dataclass(frozen=True)
class Plan:
    servers: list[str]
    scenarios: list[str]
    repeats: int
    work: Workload
    quick: bool
    note: str | None = None


def _names(text: str, known: dict[str, object], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def parse_args(argv: list[str] | None = None) -> tuple[Plan, Path, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per server (default 3)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=", ".join(SERVERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=", ".join(SCENARIOS))
    parser.add_argument("--out", type=Path, help=f"markdown report (default {DEFAULT_OUT})")
    parser.add_argument("--json", type=Path, help="also write the raw samples as JSON")
    parser.add_argument("--big-mib", type=int, help="size of the big file in MiB")
    parser.add_argument("--storm-clients", type=int, help="concurrent clients in the storm")
    parser.add_argument("--storm-mib", type=int, help="file size per storm client in MiB")
    parser.add_argument("--small-fetches", type=int, help="number of small-file fetches")
    parser.add_argument(
        "--note",
        help="what else ran on the machine during the run, written into the report as is",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    work = QUICK if args.quick else FULL
    overrides = {
        "big_bytes": args.big_mib and args.big_mib * MIB,
        "storm_clients": args.storm_clients,
        "storm_bytes": args.storm_mib and args.storm_mib * MIB,
        "small_fetches": args.small_fetches,
    }
    work = replace(work, **{key: value for key, value in overrides.items() if value})
    plan = Plan(
        servers=_names(args.servers, dict(SERVERS), "server"),
        scenarios=_names(args.scenarios, dict(SCENARIOS), "scenario"),
        repeats=args.repeats,
        work=work,
        quick=args.quick,
        note=args.note,
    )
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    return plan, out, args.json


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_peers(
    plan: Plan, results: Results
) -> tuple[list[str], dict[str, Path], dict[str, str]]:
    """Unpack the peers (and build the reference) the plan needs; one that cannot be had is
    reported, not fatal."""
    servers, binaries, versions = [], {}, {}
    for name in plan.servers:
        spec = SERVERS[name]
        if spec.peer or spec.compiled:
            try:
                if spec.compiled:
                    binaries[name], versions[name] = build_reference(CACHE)
                else:
                    binaries[name], versions[name] = ensure_peer(name, CACHE)
            except (SetupError, OSError, subprocess.SubprocessError) as exc:
                results.problems.append(f"{name}: not available: {exc}")
                log(f"skipping {name}: {exc}")
                continue
        servers.append(name)
    return servers, binaries, versions


def _describe(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key}={value:.3g}" for key, value in metrics.items())


@dataclass(frozen=True)
class Environment:
    launch: LaunchContext
    content: Content
    scratch: Path


def run_server(name: str, plan: Plan, env: Environment, results: Results, repeat: int) -> None:
    """Start one server, run every planned scenario against it, stop it."""
    spec = SERVERS[name]
    planned = [
        key for key in plan.scenarios if spec.windowsize or not SCENARIOS[key].needs_windowsize
    ]
    results.not_applicable.update((key, name) for key in plan.scenarios if key not in planned)
    try:
        with running(spec, env.launch) as server:
            results.cpu_methods.add(server.cpu_method)
            for key in planned:
                scenario = SCENARIOS[key]
                try:
                    sample = scenario.run(server, env.content, plan.work, env.scratch)
                except Exception as exc:  # one broken scenario must not end the whole report
                    results.problems.append(f"repeat {repeat}, {name}, {key}: {exc!r}")
                    log(traceback.format_exc())
                    continue
                results.add(key, name, sample)
                log(f"  {name:25} {key:8} failed={sample.failed:<3} {_describe(sample.metrics)}")
    except (RuntimeError, OSError) as exc:
        results.problems.append(f"repeat {repeat}, {name}: did not start: {exc}")
        log(f"  {name}: did not start: {exc}")


def rotated(items: list[str], by: int) -> list[str]:
    """Server order for one repeat: each server takes each position in turn."""
    shift = by % len(items)
    return items[shift:] + items[:shift]


def run_all(plan: Plan, servers: list[str], env: Environment, results: Results) -> None:
    for repeat in range(1, plan.repeats + 1):
        order = rotated(servers, repeat - 1)
        log(f"repeat {repeat}/{plan.repeats}: {', '.join(order)}")
        for name in order:
            run_server(name, plan, env, results, repeat)


def _scratch_base() -> str | None:
    # tmpfs keeps hundreds of MiB of client output off the disk and out of the measurement.
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30 else None


def software(peer_versions: dict[str, str]) -> dict[str, str]:
    facts = {"simple-tftpd": tool_version([*simple_tftpd_command(), "--version"])}
    facts["simple-tftpd source"] = source_revision(REPO)
    for name, version in peer_versions.items():
        built = SERVERS[name].compiled
        facts[name] = f"built with {version}" if built else f"{version} (Debian .deb)"
    facts["tftpy"] = metadata.version("tftpy")
    facts["atftp client"] = tool_version(["atftp", "--version"])
    # curl's first line goes on to list every library it links; name and version suffice.
    facts["curl client"] = " ".join(tool_version(["curl", "--version"]).split()[:2])
    return facts


def _facts_table(facts: dict[str, str]) -> str:
    rows = [f"| {key} | {value} |" for key, value in facts.items()]
    return "\n".join(["| | |", "|---|---|", *rows])


def document(
    plan: Plan,
    servers: list[str],
    results: Results,
    facts: dict[str, str],
    tools: dict[str, str],
    seconds: float,
) -> str:
    kind = "quick (smoke-sized)" if plan.quick else "full"
    parts = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run.py`; rerun it rather than editing numbers by hand.",
        f"This is a {kind} run: {plan.repeats} repeat(s) of every scenario against every",
        f"server, {seconds / 60:.1f} min in total.",
        "",
        "## Machine",
        "",
        _facts_table(facts),
        "",
        "Software:",
        "",
        _facts_table(tools),
        "",
        "## How to rerun",
        "",
        "```console",
        "make bench                    # full run, rewrites docs/benchmarks.md",
        "make bench ARGS=--quick       # smoke-sized run, writes benchmarks/results/quick.md",
        "make bench ARGS='--servers simple-tftpd,tftpd-hpa --scenarios storm --repeats 5'",
        "make bench ARGS=\"--note 'what else ran on the machine'\"   # recorded under Machine",
        "make bench-smoke              # seconds: simple-tftpd only, report in /tmp",
        "```",
        "",
        "The harness downloads the tftpd-hpa and atftpd .debs with `apt-get download` into",
        "`benchmarks/.cache` and runs them unpacked (no system service is installed); tftpy",
        "comes from the project's virtualenv. Clients are Debian's `atftp` and `curl`.",
        "`epoll-reference` is built from `benchmarks/reference/epoll_server.c` with `cc` into",
        "the same cache: a yardstick for the Python layer's cost, not a peer (see",
        "[performance.md](performance.md)).",
        "",
        "## Servers",
        "",
        servers_markdown(servers),
        "",
        "## Results",
        "",
        results_markdown(results, plan.scenarios, servers, plan.work),
        "",
        "## What the columns mean",
        "",
        COLUMNS.format(cpu_methods=", ".join(sorted(results.cpu_methods)) or "not measured"),
        "",
        "## Caveats",
        "",
        CAVEATS.format(cores=facts.get("cores (nproc)", "?")),
    ]
    if results.problems:
        problems = (" ".join(problem.split())[:400] for problem in results.problems)
        parts += ["", "## Problems during this run", "", *(f"- {p}" for p in problems)]
    return "\n".join(parts) + "\n"


def write_json(path: Path, plan: Plan, results: Results) -> None:
    raw = {
        "plan": asdict(plan),
        "samples": {
            key: {name: [asdict(s) for s in samples] for name, samples in by_server.items()}
            for key, by_server in results.samples.items()
        },
        "not_applicable": sorted(results.not_applicable),
        "problems": results.problems,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=2))


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    plan, out, json_out = parse_args(argv)
    # SIGTERM (and SIGINT, even if inherited as ignored) unwind through the `finally` blocks
    # that stop servers and clients by PID and remove the scratch directory and cgroups.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    started = time.monotonic()
    facts = machine_facts()
    busy_before = cpu_busy_seconds()
    require_clients()
    compile_python_servers()
    cgroup.sweep_stale()
    results = Results()
    servers, binaries, versions = prepare_peers(plan, results)
    if not servers:
        log("no server could be prepared")
        return 1
    with tempfile.TemporaryDirectory(prefix="tftp-bench-", dir=_scratch_base()) as tmp:
        base = Path(tmp)
        (base / "work").mkdir()
        (base / "out").mkdir()
        log(f"writing test files to {base / 'root'}")
        content = make_content(base / "root", plan.work)
        launch = LaunchContext(root=base / "root", workdir=base / "work", binaries=binaries)
        run_all(plan, servers, Environment(launch, content, base / "out"), results)
    seconds = time.monotonic() - started
    facts |= after_run_facts(busy_before, seconds)
    if plan.note:
        facts["note"] = plan.note
    report = document(plan, servers, results, facts, software(versions), seconds)
    print(results_markdown(results, plan.scenarios, servers, plan.work))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    if json_out is not None:
        write_json(json_out, plan, results)
    log(f"wrote {out} after {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'SIGINT'}); servers and clients stopped, scratch removed")
        sys.exit(130)
