"""Generated files: per-machine boot configs rendered from Jinja templates when asked for.

A request whose name matches a configured pattern (`pxelinux.cfg/01-{mac}`, `{ip}.ipxe`,
`pxelinux.cfg/default`, ...) is answered with a template rendered for that machine instead of a
file from disk. The machine is known by the MAC, IP or host name in the requested name, else by
the address the request came from; a hosts file (YAML or JSON in the content tree, keyed by MAC
or IP) adds per-machine data.

Templates are operators' content and the hosts file is data, so rendering is fenced in:
- Jinja's immutable sandbox: no attribute escapes to Python internals, no mutation of the
  shared hosts data; StrictUndefined, so a missing value is an error, never an empty string;
- the whole output is produced before anything is sent, so a failing template never serves a
  half-rendered file, and the size is known for `tsize`/Content-Length;
- an output size limit checked while rendering, a CPU time limit, bounded `*` and `**`;
- values from requests and from the hosts file have a strict syntax (a MAC, an IP, a DNS name)
  and reach templates as data only: nothing they hold is ever evaluated or used as a path.

Everything is re-read when it changes on disk (templates through Jinja's `uptodate` check,
the hosts file by stat), and every process renders on its own: no state is shared between
the worker processes (TFTP) and the API process (HTTP).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import stat
import threading
import types
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from simple_tftpd.config import NETBOOT_PLACEHOLDERS, NetbootConfig
from simple_tftpd.content.resolve import PathResolver, ResolveError

if TYPE_CHECKING:
    from jinja2 import Template

log = logging.getLogger("simple_tftpd.generated")

Protocol = Literal["tftp", "http"]

NOT_DEFINED = 0
FILE_NOT_FOUND = 1

# CPU seconds. One render holds the event loop of its process (a TFTP worker or the API
# process): a legitimate boot config renders in well under a millisecond, so this only stops
# runaway loops. CPU time rather than wall-clock time: a busy machine must not fail good renders.
RENDER_TIME_LIMIT = 0.25
MAX_TEMPLATE_BYTES = 1 << 20
MAX_HOSTS_FILE_BYTES = 16 << 20
MAX_HOST_DATA_DEPTH = 32

_HEX2 = "[0-9A-Fa-f]{2}"
_HEX4 = "[0-9A-Fa-f]{4}"
# aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff (pxelinux, iPXE ${mac:hexhyp}), aabbccddeeff and
# aabb.ccdd.eeff (switch CLIs); one separator throughout.
_MAC_TEXT = (
    rf"{_HEX2}(?:(?::{_HEX2}){{5}}|(?:-{_HEX2}){{5}}|(?:{_HEX2}){{5}})"
    rf"|{_HEX4}\.{_HEX4}\.{_HEX4}"
)
_MAC_RE = re.compile(_MAC_TEXT)
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_TEXT = rf"{_LABEL}(?:\.{_LABEL})*"
_HOSTNAME_RE = re.compile(_HOSTNAME_TEXT)
# Each placeholder matches only its own syntax, so a matched value never holds "/" or "..";
# an IP is checked again with ipaddress after matching.
_PLACEHOLDER_SYNTAX = {
    "mac": _MAC_TEXT,
    "ip": r"[0-9A-Fa-f:.]{2,45}",
    "hostname": _HOSTNAME_TEXT,
}
assert set(_PLACEHOLDER_SYNTAX) == set(NETBOOT_PLACEHOLDERS)
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(NETBOOT_PLACEHOLDERS) + r")\}")


def normalize_mac(text: str) -> str | None:
    """`aa:bb:cc:dd:ee:ff` for any accepted spelling of a MAC, else None."""
    if not _MAC_RE.fullmatch(text):
        return None
    digits = re.sub("[^0-9A-Fa-f]", "", text).lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def normalize_ip(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # how a dual-stack socket reports IPv4 clients
    return str(address)


def normalize_hostname(text: str) -> str | None:
    if len(text) > 253 or not _HOSTNAME_RE.fullmatch(text):
        return None
    return text.lower()


_NORMALIZE: dict[str, Callable[[str], str | None]] = {
    "mac": normalize_mac,
    "ip": normalize_ip,
    "hostname": normalize_hostname,
}


class GenerateError(ResolveError):
    """A generated file cannot be served; for which machine (when known) and from which
    template, so that the refusal is logged like a transfer of it would be."""

    def __init__(self, code: int, message: str, template: str, machine: Machine | None) -> None:
        super().__init__(code, message)
        self.template = template
        self.machine = machine


class HostsFileError(Exception):
    pass


class _RenderTimeout(BaseException):
    # BaseException: Jinja turns every Exception raised while rendering into its own error
    # handling, and a template must not be able to swallow the stop.
    pass


class _RenderLimit(Exception):
    pass


# --- the hosts file ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostEntry:
    key: str
    mac: str | None
    ip: str | None
    hostname: str | None
    data: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class HostsTable:
    by_mac: Mapping[str, HostEntry] = field(default_factory=dict)
    by_ip: Mapping[str, HostEntry] = field(default_factory=dict)
    by_hostname: Mapping[str, HostEntry] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise HostsFileError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _plain(value: object, depth: int = 0) -> object:
    """Host data as plain JSON-like values; anything else (dates, bytes, sets) as text."""
    if depth > MAX_HOST_DATA_DEPTH:
        raise HostsFileError(f"nested deeper than {MAX_HOST_DATA_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    # Plain dicts and lists (tojson works on them); the immutable sandbox keeps templates
    # from changing them, and nothing else does.
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(str(item) for item in value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def parse_hosts(text: str, json_format: bool) -> HostsTable:
    """The hosts table from a file's text; HostsFileError if the file as a whole is unusable.

    Entries that are unusable on their own (an unknown key format, an invalid `hostname`) are
    left out and listed in `problems`, so one bad entry does not stop every other machine.
    """
    try:
        if json_format:
            data = json.loads(text, object_pairs_hook=_reject_duplicates)
        else:
            # PyYAML only when a YAML hosts file is in use (see content/templating.py).
            from simple_tftpd.content.templating import load_hosts_yaml

            data = load_hosts_yaml(text)
    except ValueError as exc:
        raise HostsFileError(f"not valid {'JSON' if json_format else 'YAML'}: {exc}") from None
    except RecursionError:
        raise HostsFileError("nested too deeply") from None
    if data is None:
        return HostsTable()
    if not isinstance(data, dict):
        raise HostsFileError("must be a mapping keyed by MAC or IP address")
    by_mac: dict[str, HostEntry] = {}
    by_ip: dict[str, HostEntry] = {}
    by_hostname: dict[str, HostEntry] = {}
    problems: list[str] = []
    for key, value in data.items():
        key = str(key)
        entry = _host_entry(key, value, problems)
        if entry is None:
            continue
        for index, name in ((by_mac, entry.mac), (by_ip, entry.ip), (by_hostname, entry.hostname)):
            if name is None:
                continue
            if name in index:
                problems.append(f"{key!r}: {name} is already used by {index[name].key!r}")
            else:
                index[name] = entry
    return HostsTable(by_mac, by_ip, by_hostname, tuple(problems))


def _host_entry(key: str, value: object, problems: list[str]) -> HostEntry | None:
    shown = key if len(key) <= 64 else key[:61] + "..."
    if not isinstance(value, dict):
        problems.append(f"{shown!r}: entry must be a mapping; left out")
        return None
    mac, ip = normalize_mac(key), normalize_ip(key)
    if mac is None and ip is None:
        problems.append(f"{shown!r}: key is neither a MAC nor an IP address; left out")
        return None
    fields: dict[str, str | None] = {"mac": mac, "ip": ip, "hostname": None}
    for name, check in _NORMALIZE.items():
        if fields[name] is not None or name not in value:
            continue
        raw = value[name]
        fields[name] = check(raw) if isinstance(raw, str) else None
        if fields[name] is None:
            problems.append(f"{shown!r}: {name} is not a valid {name}; left out")
            return None
    data = _plain(value)
    assert isinstance(data, dict)
    return HostEntry(key, fields["mac"], fields["ip"], fields["hostname"], data)


_FileKey = tuple[int, int, int, int, int]


def _key_of(st: os.stat_result) -> _FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_regular(path: str, limit: int) -> tuple[bytes, _FileKey]:
    """A regular file's bytes (no final symlink), refused when larger than `limit`."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        if st.st_size > limit:
            raise OSError(f"{path} is larger than {limit} bytes")
        return f.read(limit + 1)[:limit], _key_of(st)


class HostsFile:
    """The hosts file, re-read whenever it changes on disk; a missing file has no hosts."""

    def __init__(self, resolver: PathResolver, name: str) -> None:
        self._resolver = resolver
        self._name = name
        self._key: _FileKey | None = None
        self._table: HostsTable | None = None
        self._error: HostsFileError | None = None
        self._last_failure: tuple[_FileKey | None, str] | None = None

    def table(self) -> HostsTable:
        try:
            path = str(self._resolver.resolve_read(self._name))
            key = _key_of(os.stat(path))
        except ResolveError as exc:
            if exc.code != FILE_NOT_FOUND:
                error = HostsFileError("not readable inside the content root")
                raise self._failed(None, error) from None
            if self._key is not None or self._table is None:
                log.info("hosts file %s not found: no per-machine data", self._name)
            self._key, self._table, self._error = None, HostsTable(), None
            return self._table
        except OSError as exc:
            raise self._failed(
                None, HostsFileError(f"cannot read: {exc.strerror or exc}")
            ) from None
        if key == self._key:
            if self._error is not None:
                raise self._error
            assert self._table is not None
            return self._table
        try:
            raw, key = _read_regular(path, MAX_HOSTS_FILE_BYTES)
            table = parse_hosts(raw.decode("utf-8-sig"), self._name.endswith(".json"))
        except UnicodeDecodeError as exc:
            raise self._failed(key, HostsFileError(f"not valid UTF-8 (byte {exc.start})")) from None
        except OSError as exc:
            raise self._failed(key, HostsFileError(f"cannot read: {exc.strerror or exc}")) from None
        except HostsFileError as exc:
            raise self._failed(key, exc) from None
        for problem in table.problems:
            log.warning("hosts file %s: %s", self._name, problem)
        log.info("hosts file %s: %d machine(s)", self._name, len(_entries(table)))
        self._key, self._table, self._error = key, table, None
        self._last_failure = None
        return table

    def _failed(self, key: _FileKey | None, error: HostsFileError) -> HostsFileError:
        """Remember the failure of this version of the file; the error to raise."""
        # Logged once per version; every render that needs the file fails until it is fixed.
        if (key, str(error)) != self._last_failure:
            log.error("hosts file %s is unusable: %s", self._name, error)
            self._last_failure = (key, str(error))
        self._key, self._table, self._error = key, None, error
        return error


def _entries(table: HostsTable) -> set[str]:
    return {
        e.key for index in (table.by_mac, table.by_ip, table.by_hostname) for e in index.values()
    }


# --- templates -----------------------------------------------------------------------------------


def _is_within(directory: str, path: str) -> bool:
    return os.path.commonpath([directory, path]) == directory


_deadline_armed = [False]


def _on_alarm(signum: int, frame: types.FrameType | None) -> None:
    if _deadline_armed[0]:
        _deadline_armed[0] = False  # one stop per render, never a stray one afterwards
        raise _RenderTimeout


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the render after `seconds` of CPU time of this process.

    A timer signal is the only way to stop a Python-level loop without a subprocess per
    render; it needs the main thread, where both the TFTP workers and the API run.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGPROF, _on_alarm) or signal.SIG_DFL
    _deadline_armed[0] = True
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        _deadline_armed[0] = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


# --- rules and rendering -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Machine:
    """Who a generated file is for: what the name said, completed from the hosts file."""

    mac: str | None
    ip: str | None
    hostname: str | None
    client_ip: str | None
    entry: HostEntry | None

    def log_fields(self) -> dict[str, str]:
        """Transfer-log fields that say which machine a generated file was for."""
        fields = {"mac": self.mac, "ip": self.ip, "hostname": self.hostname}
        return {key: value for key, value in fields.items() if value}

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in (("mac", self.mac), ("ip", self.ip)) if v]
        parts += [f"hostname={self.hostname}"] if self.hostname else []
        return " ".join(parts) or f"client={self.client_ip}"


@dataclass(frozen=True, slots=True)
class Rendered:
    data: bytes
    name: str
    template: str
    machine: Machine


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    template: str
    names_machine: bool
    render_unknown: bool


def _compile_rule(pattern: str, template: str, unknown: str | None) -> _Rule:
    regex, last = "", 0
    for match in _PLACEHOLDER_RE.finditer(pattern):
        name = match.group(1)
        regex += re.escape(pattern[last : match.start()])
        regex += f"(?P<{name}>{_PLACEHOLDER_SYNTAX[name]})"
        last = match.end()
    regex += re.escape(pattern[last:])
    names_machine = regex != re.escape(pattern)
    render_unknown = unknown == "render" if unknown is not None else not names_machine
    return _Rule(pattern, re.compile(regex), template, names_machine, render_unknown)


class GeneratedFiles:
    """The generated-file rules of one process and what they need: templates, hosts file."""

    def __init__(self, resolver: PathResolver, netboot: NetbootConfig) -> None:
        self._resolver = resolver
        self._rules = [
            _compile_rule(rule.pattern, rule.template, rule.unknown_host)
            for rule in netboot.generated
        ]
        self.max_bytes = netboot.max_render_bytes
        self.hosts = HostsFile(resolver, netboot.hosts_file)
        # Jinja only where generated files are configured (see content/templating.py).
        from jinja2 import StrictUndefined

        from simple_tftpd.content.templating import BoundedSandbox, ContentLoader

        self._env = BoundedSandbox(
            netboot.max_render_bytes,
            loader=ContentLoader(resolver, netboot.templates_dir),
            undefined=StrictUndefined,
            autoescape=False,
            auto_reload=True,
            keep_trailing_newline=True,
        )
        # Random text of unbounded size on request has no place in a boot config.
        self._env.globals.pop("lipsum", None)
        # Template versions that ran out of time: refused at once until the file changes,
        # so a boot storm against a broken template cannot hold the event loop again and again.
        self._timed_out: weakref.WeakSet[Template] = weakref.WeakSet()
        root = str(resolver.root)
        self._private_dir = os.path.realpath(os.path.join(root, netboot.templates_dir))
        self._private_file = os.path.realpath(os.path.join(root, netboot.hosts_file))

    def is_private(self, real_path: str) -> bool:
        """Templates and the hosts file are inputs, never served or overwritten as files."""
        return real_path == self._private_file or _is_within(self._private_dir, real_path)

    def match(self, rel_name: str) -> tuple[_Rule, dict[str, str]] | None:
        """The first rule whose pattern the name fits, with the normalised placeholder values."""
        for rule in self._rules:
            found = rule.regex.fullmatch(rel_name)
            if found is None:
                continue
            values: dict[str, str] = {}
            for name, text in found.groupdict().items():
                normal = _NORMALIZE[name](text)
                if normal is None:
                    break  # e.g. "999.1.1.1": not an address, so not this rule
                values[name] = normal
            else:
                return rule, values
        return None

    def render(self, filename: str, client_ip: str | None, protocol: Protocol) -> Rendered | None:
        """The rendered file for a request name, or None if no rule matches the name.

        Raises GenerateError (a ResolveError, so callers answer it like any refused name):
        FILE_NOT_FOUND for an unknown machine where the rule says so, NOT_DEFINED when
        rendering fails; the cause is logged here, the client only learns that it failed.
        """
        rel = self._resolver.rel_name(filename)
        matched = self.match(rel)
        if matched is None:
            return None
        rule, values = matched
        try:
            table = self.hosts.table()
        except HostsFileError:
            # Logged by HostsFile; the machine as far as the name tells, for the transfer log.
            machine = _identify(values, HostsTable(), client_ip)
            raise GenerateError(
                NOT_DEFINED, "Cannot generate file", rule.template, machine
            ) from None
        machine = _identify(values, table, client_ip)
        if machine.entry is None and not rule.render_unknown:
            raise GenerateError(FILE_NOT_FOUND, "File not found", rule.template, machine)
        variables: dict[str, object] = {
            "name": rel,
            "protocol": protocol,
            "client_ip": client_ip,
            "host": machine.entry.data if machine.entry else {},
        }
        # Unknown values stay undefined: StrictUndefined makes a template that needs them fail
        # loudly, and `{% if mac is defined %}` lets a template handle them.
        for name in ("mac", "ip", "hostname"):
            value = getattr(machine, name)
            if value is not None:
                variables[name] = value
        try:
            data = self._render(rule.template, variables)
        except _RenderTimeout:
            cause = f"took longer than {RENDER_TIME_LIMIT}s of CPU time"
            self._log_failure(rel, rule, machine, cause)
        except _RenderLimit as exc:
            self._log_failure(rel, rule, machine, str(exc))
        except Exception as exc:  # anything a template can raise: it must not end the process
            self._log_failure(rel, rule, machine, f"{type(exc).__name__}: {exc}")
        else:
            return Rendered(data, rel, rule.template, machine)
        raise GenerateError(NOT_DEFINED, "Cannot generate file", rule.template, machine)

    def _render(self, name: str, variables: dict[str, object]) -> bytes:
        template = self._env.get_template(name)
        if template in self._timed_out:
            raise _RenderLimit("this version of the template ran out of time before")
        parts: list[bytes] = []
        size = 0
        try:
            with _time_limit(RENDER_TIME_LIMIT):
                for chunk in template.generate(variables):
                    part = chunk.encode("utf-8")
                    size += len(part)
                    if size > self.max_bytes:
                        raise _RenderLimit(f"output larger than {self.max_bytes} bytes")
                    parts.append(part)
        except _RenderTimeout:
            self._timed_out.add(template)
            raise
        return b"".join(parts)

    def _log_failure(self, rel: str, rule: _Rule, machine: Machine, cause: str) -> None:
        log.error(
            "cannot generate %s (pattern %s, template %s) for %s: %s",
            rel,
            rule.pattern,
            rule.template,
            machine.describe(),
            cause[:500],
        )


def _identify(values: Mapping[str, str], table: HostsTable, client_ip: str | None) -> Machine:
    mac, ip, hostname = values.get("mac"), values.get("ip"), values.get("hostname")
    if mac is not None:
        entry = table.by_mac.get(mac)
    elif ip is not None:
        entry = table.by_ip.get(ip)
    elif hostname is not None:
        entry = table.by_hostname.get(hostname)
    else:
        # A fixed name: the machine is whoever asks (TFTP clients are known by their address).
        ip = normalize_ip(client_ip) if client_ip else None
        entry = table.by_ip.get(ip) if ip else None
    if entry is not None:
        mac, ip, hostname = mac or entry.mac, ip or entry.ip, hostname or entry.hostname
    if ip is None and client_ip:
        ip = normalize_ip(client_ip)
    return Machine(mac, ip, hostname, client_ip, entry)
