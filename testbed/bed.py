"""Boot and tear down a set of test hosts: one systemd-nspawn container per host, each with its
own network namespace, overlay root, machine id and SSH host keys, on a private bridge.

Everything is named after the testbed (`stb` by default): bridge `stb0`, namespaces
`stb-<host>`, machines `stb-<host>`. A state file records the launcher PIDs so that a run
which died without cleaning up (a killed pytest) is cleaned up by the next run, by PID.
The facts this relies on are in the shared notes on test hosts (nspawn without systemd as
PID 1, per-host cgroups, veth pairs made by hand, exit code 133 on reboot).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from testbed.base import CACHE_DIR, Log, ensure_base, file_lock, mounts_below, remove_tree

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
CGROUP_GROUP = "simple-tftpd-testbed"
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
LOCK_TIMEOUT = 600.0
# nspawn exits with 133 when the container asked for a reboot (systemctl reboot).
REBOOT_EXIT = 133
_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,15}")


class TestbedError(RuntimeError):
    """A testbed could not be brought up; the message says which step and host."""

    __test__ = False  # not a pytest test class


@dataclass
class HostSpec:
    """One test host: its name (also its hostname) and address on the bridge."""

    name: str
    address: str
    index: int

    __test__ = False


@dataclass
class _Machine:
    spec: HostSpec
    machine: str
    netns: str
    veth: str
    run_dir: Path
    process: subprocess.Popen[bytes] | None = None
    stopping: bool = False
    launcher: threading.Thread | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.run_dir / "root"

    @property
    def console(self) -> Path:
        return self.run_dir / "console.log"


def _run(argv: Sequence[str], timeout: float = 30, check: bool = True) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class Testbed:
    """`with Testbed(["lb-1", "tftp-1"]) as bed:` boots the hosts; leaving tears them down."""

    __test__ = False

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        name: str = "stb",
        subnet: str = "10.213.0.0/24",
        cache_dir: Path = CACHE_DIR,
        log: Log = print,
    ) -> None:
        if not re.fullmatch(r"[a-z]{2,5}", name):
            raise ValueError("testbed name: 2-5 lowercase letters (it prefixes interface names)")
        network = ipaddress.ip_network(subnet)
        if len(hosts) > 20 or len(set(hosts)) != len(hosts):
            raise ValueError("testbed: up to 20 distinct host names")
        for host in hosts:
            if not _NAME_RE.fullmatch(host):
                raise ValueError(f"testbed host {host!r}: lowercase letters, digits, '-'")
        self.name = name
        self.network = network
        self.log = log
        self.cache_dir = cache_dir
        self.run_dir = cache_dir / "runs" / name
        self.bridge = f"{name}0"
        self.gateway = str(network.network_address + 1)
        self.specs = [
            HostSpec(host, str(network.network_address + 11 + index), index)
            for index, host in enumerate(hosts)
        ]
        self.machines = [self._machine(spec) for spec in self.specs]
        self.key = self.run_dir / "id_ed25519"
        self.known_hosts = self.run_dir / "known_hosts"
        self.ssh_config = self.run_dir / "ssh_config"
        self._lock: contextlib.ExitStack | None = None

    def _machine(self, spec: HostSpec) -> _Machine:
        return _Machine(
            spec=spec,
            machine=f"{self.name}-{spec.name}",
            netns=f"{self.name}-{spec.name}",
            veth=f"{self.name}{spec.index}h",
            run_dir=self.run_dir / spec.name,
        )

    # -- public -------------------------------------------------------------------------------

    @property
    def hosts(self) -> dict[str, HostSpec]:
        return {spec.name: spec for spec in self.specs}

    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Testbed:
        """Build or reuse the base root, then boot every host and wait until SSH answers."""
        base = ensure_base(self.cache_dir, self.log)
        lock = contextlib.ExitStack()
        lock.enter_context(
            file_lock(self.cache_dir / "runs" / f"{self.name}.lock", LOCK_TIMEOUT, "testbed")
        )
        self._lock = lock
        try:
            self._clean_stale()
            started = time.monotonic()
            self.run_dir.mkdir(parents=True)
            self._make_ssh_key()
            self._make_bridge()
            for machine in self.machines:
                self._prepare(machine, base)
            self._write_state()
            for machine in self.machines:
                self._boot(machine)
            self._write_state()
            with ThreadPoolExecutor(len(self.machines)) as pool:
                list(pool.map(self._wait_booted, self.machines))
            self.log(
                f"testbed: {len(self.machines)} hosts up in {time.monotonic() - started:.1f}s "
                f"on {self.bridge} ({self.network})"
            )
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop every host by PID and remove everything the testbed made; safe to repeat."""
        try:
            self._teardown(self.machines)
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def clean(self) -> None:
        """Remove what a run of this testbed that died without tearing down left behind."""
        # A short wait: a live run holding the lock has nothing left behind to clean.
        with file_lock(self.cache_dir / "runs" / f"{self.name}.lock", 5, "testbed"):
            self._clean_stale()

    def client(self, host: str, timeout: float = 10.0) -> paramiko.SSHClient:
        """An SSH client to `host` as root, checking the host key the testbed generated."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.hosts[host].address,
            username="root",
            key_filename=str(self.key),
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            look_for_keys=False,
            allow_agent=False,
        )
        return client

    def run(self, host: str, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run one shell command on `host`; (exit code, stdout, stderr)."""
        client = self.client(host)
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            return stdout.channel.recv_exit_status(), out, err
        finally:
            client.close()

    # -- bring-up -----------------------------------------------------------------------------

    def _make_ssh_key(self) -> None:
        private, public = _ssh_key("ed25519")
        self.key.write_bytes(private)
        self.key.chmod(0o600)
        self.key.with_suffix(".pub").write_bytes(public + b" testbed\n")
        self.ssh_config.write_text(
            f"Host {' '.join(spec.address for spec in self.specs)}\n"
            "  User root\n"
            f"  IdentityFile {self.key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  StrictHostKeyChecking yes\n"
            "  ControlMaster no\n"
        )

    def _make_bridge(self) -> None:
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def _prepare(self, machine: _Machine, base: Path) -> None:
        spec = machine.spec
        upper, work = machine.run_dir / "upper", machine.run_dir / "work"
        for path in (upper, work, machine.root):
            path.mkdir(parents=True)
        _run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={base},upperdir={upper},workdir={work}",
                str(machine.root),
            ]
        )
        root = machine.root
        (root / "etc/hostname").write_text(f"{spec.name}\n")
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (root / "etc/hosts").write_text(
            "127.0.0.1 localhost\n::1 localhost\n"
            + "".join(f"{other.address} {other.name}\n" for other in self.specs)
        )
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        # Host keys made here rather than at first boot, so known_hosts can pin them.
        with self.known_hosts.open("a") as known:
            for kind in ("rsa", "ecdsa", "ed25519"):
                private, public = _ssh_key(kind)
                path = root / f"etc/ssh/ssh_host_{kind}_key"
                path.write_bytes(private)
                path.chmod(0o600)
                path.with_suffix(".pub").write_bytes(public + b"\n")
                known.write(f"{spec.address} {public.decode()}\n")
        self._make_netns(machine)

    def _make_netns(self, machine: _Machine) -> None:
        peer = f"{machine.veth[:-1]}p"
        _run(["ip", "netns", "add", machine.netns])
        _run(["ip", "link", "add", machine.veth, "type", "veth", "peer", "name", peer])
        _run(["ip", "link", "set", machine.veth, "master", self.bridge, "up"])
        _run(["ip", "link", "set", peer, "netns", machine.netns])
        ns = ["ip", "-n", machine.netns]
        _run([*ns, "link", "set", peer, "name", "eth0"])
        prefix = f"{machine.spec.address}/{self.network.prefixlen}"
        _run([*ns, "addr", "add", prefix, "dev", "eth0"])
        _run([*ns, "link", "set", "eth0", "up"])
        _run([*ns, "link", "set", "lo", "up"])
        # nspawn mounts /proc/sys read-only, so a host cannot switch on routing itself (the
        # deploy's handoff needs it); set it here as a VM image would.
        forward = "echo 1 > /proc/sys/net/ipv4/ip_forward"
        _run(["ip", "netns", "exec", machine.netns, "sh", "-c", forward])

    def _boot(self, machine: _Machine) -> None:
        cgroups = [root / CGROUP_GROUP / machine.machine for root in CGROUP_ROOTS if root.is_dir()]
        for group in cgroups:
            group.mkdir(parents=True, exist_ok=True)
        # The shell moves itself into the host's own cgroups, then becomes nspawn (same PID):
        # started from the root cgroup, all containers would share one cgroup path.
        enter = "".join(f'echo $$ > "{group}/cgroup.procs" && ' for group in cgroups)
        nspawn = [
            "exec",
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--directory={machine.root}",
            f"--machine={machine.machine}",
            f"--hostname={machine.spec.name}",
            f"--network-namespace-path=/run/netns/{machine.netns}",
            "--console=read-only",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            # nft (the drain) needs it; the namespace is the host's own, not the machine's.
            "--capability=CAP_NET_ADMIN",
        ]
        script = enter + " ".join(nspawn)
        ready = threading.Event()

        def launch() -> None:
            # Stands in for systemd-nspawn@.service: a reboot inside the host starts it again.
            while not machine.stopping:
                with machine.console.open("ab") as console:
                    machine.process = subprocess.Popen(
                        ["sh", "-c", script],
                        stdin=subprocess.DEVNULL,
                        stdout=console,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                self._write_state()
                ready.set()
                code = machine.process.wait()
                machine.exit_codes.append(code)
                if code != REBOOT_EXIT:
                    return

        machine.launcher = threading.Thread(
            target=launch, name=f"testbed-{machine.machine}", daemon=True
        )
        machine.launcher.start()
        if not ready.wait(10):
            raise TestbedError(f"{machine.spec.name}: systemd-nspawn did not start")

    def _wait_booted(self, machine: _Machine) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            if machine.process is not None and machine.process.poll() not in (None, REBOOT_EXIT):
                last = f"systemd-nspawn exited with {machine.process.returncode}"
                break
            try:
                code, out, _ = self.run(
                    machine.spec.name, "timeout 60 systemctl is-system-running --wait", 70
                )
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.5)
                continue
            state = out.strip()
            if state in ("running", "degraded"):
                return
            last = f"system state {state!r} (exit {code})"
            time.sleep(0.5)
        tail = _tail(machine.console, 30)
        raise TestbedError(f"{machine.spec.name} did not boot: {last}\nconsole:\n{tail}")

    # -- teardown -----------------------------------------------------------------------------

    def _write_state(self) -> None:
        state = {
            "bridge": self.bridge,
            "machines": [
                {
                    "name": machine.spec.name,
                    "machine": machine.machine,
                    "netns": machine.netns,
                    "veth": machine.veth,
                    "run_dir": str(machine.run_dir),
                    "pid": machine.process.pid if machine.process else None,
                }
                for machine in self.machines
            ],
        }
        if self.run_dir.is_dir():
            tmp = self.run_dir / "state.json.tmp"
            tmp.write_text(json.dumps(state, indent=2))
            tmp.replace(self.run_dir / "state.json")

    def _clean_stale(self) -> None:
        """Remove what a run that died without tearing down left behind (we hold the lock,
        so its owner is gone)."""
        state_file = self.run_dir / "state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            stale = []
            for entry in state.get("machines", []):
                machine = _Machine(
                    spec=HostSpec(entry["name"], "", 0),
                    machine=entry["machine"],
                    netns=entry["netns"],
                    veth=entry["veth"],
                    run_dir=Path(entry["run_dir"]),
                )
                pid = entry.get("pid")
                if pid and _is_our_nspawn(pid, machine.machine):
                    self.log(f"testbed: stopping stale host {machine.machine} (pid {pid})")
                    _signal_and_wait([pid], STOP_TIMEOUT)
                stale.append(machine)
            self._teardown(stale, stop=False)
        # Names are fixed per testbed, so leftovers of any earlier run would collide.
        self._teardown(self.machines, stop=False)

    def _teardown(self, machines: Sequence[_Machine], stop: bool = True) -> None:
        if stop:
            for machine in machines:
                machine.stopping = True
            pids = [m.process.pid for m in machines if m.process and m.process.poll() is None]
            started = time.monotonic()
            # The first SIGTERM to nspawn is a clean poweroff of the host.
            killed = _signal_and_wait(pids, STOP_TIMEOUT)
            self.log(
                f"testbed: {len(pids)} hosts stopped in {time.monotonic() - started:.1f}s"
                + (f" ({len(killed)} killed after {STOP_TIMEOUT:.0f}s)" if killed else "")
            )
            for machine in machines:
                if machine.launcher is not None:
                    machine.launcher.join(5)
        for machine in machines:
            _kill_cgroup(machine.machine)
            for mount in mounts_below(machine.run_dir):
                _run(["umount", str(mount)], check=False)
            for mount in mounts_below(machine.run_dir):
                _run(["umount", "-l", str(mount)], check=False)
            propagate = Path("/run/systemd/nspawn/propagate") / machine.machine
            if propagate.exists():
                remove_tree(propagate)
            if Path(f"/run/netns/{machine.netns}").exists():
                _run(["ip", "netns", "del", machine.netns], check=False)
            if Path(f"/sys/class/net/{machine.veth}").exists():
                _run(["ip", "link", "del", machine.veth], check=False)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _run(["ip", "link", "del", self.bridge], check=False)
        for root in CGROUP_ROOTS:
            with contextlib.suppress(OSError):  # still in use by another testbed
                (root / CGROUP_GROUP).rmdir()
        remove_tree(self.run_dir)


def _ssh_key(kind: str) -> tuple[bytes, bytes]:
    """(private key, public key line) in OpenSSH format; no ssh-keygen needed."""
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public


def _is_our_nspawn(pid: int, machine: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (
        bool(argv)
        and argv[0].endswith(b"systemd-nspawn")
        and (f"--machine={machine}".encode() in argv)
    )


def _signal_and_wait(pids: Sequence[int], timeout: float) -> list[int]:
    """SIGTERM each PID, wait up to `timeout`, then SIGKILL the ones still alive (returned)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.2)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _alive(pid: int) -> bool:
    # Our launcher threads reap their own children; for a stale PID (not our child) look at
    # /proc, where a zombie counts as gone.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _kill_cgroup(machine: str) -> None:
    """SIGKILL whatever is still in the host's cgroups (only processes this testbed started),
    then remove the cgroup directories, deepest first."""
    for root in CGROUP_ROOTS:
        group = root / CGROUP_GROUP / machine
        if not group.is_dir():
            continue
        for _ in range(3):
            pids = _cgroup_pids(group)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        for path in sorted(group.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            group.rmdir()


def _cgroup_pids(group: Path) -> list[int]:
    pids: list[int] = []
    for procs in group.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(line) for line in procs.read_text().split()]
    return pids


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"
