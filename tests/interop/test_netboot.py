"""Generated files over TFTP from a real daemon (two workers, as in production), fetched by
real clients: per-machine content, tsize, unknown machines, template failures, hostile
templates and hosts files, changes on disk, and the log and metrics that say who got what."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from simple_tftpd.protocol.packets import Error, ErrorCode
from tests.interop.conftest import needs_clients
from tests.support.clients import (
    Fetch,
    fetch_atftp,
    fetch_curl,
    fetch_tftp_hpa,
    fetch_tftpy,
    sha256,
)
from tests.support.daemon import Daemon, wait_for
from tests.support.netboot import (
    HOSTS,
    MAC,
    MAC_DASH,
    RULES,
    UNKNOWN_MAC_DASH,
    expected_big,
    expected_pxelinux,
    http_request,
    make_tree,
    netboot_config,
    set_file,
    tftp_read,
    transfer_records,
)

pytestmark = [pytest.mark.interop, needs_clients]

CLIENTS: dict[str, Fetch] = {
    "tftp-hpa": fetch_tftp_hpa,
    "atftp-blksize-tsize": partial(fetch_atftp, options={"blksize": 1432, "tsize": 0}),
    "curl": fetch_curl,
    "tftpy": fetch_tftpy,
}
GENERATED_OK = 'simple_tftpd_fetches_total{kind="generated",outcome="ok",protocol="tftp"}'
GENERATED_ERROR = 'simple_tftpd_fetches_total{kind="generated",outcome="error",protocol="tftp"}'
GENERATED_BYTES = 'simple_tftpd_fetched_bytes_total{kind="generated",protocol="tftp"}'
# The TFTP-only families other suites read are still there and still move.
LEGACY_OK = 'simple_tftpd_transfers_total{direction="read",outcome="ok"}'


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("netboot") / "root")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[Daemon]:
    config = netboot_config()
    config["performance"] = {"thread_pool": {"workers": 2}}
    with Daemon(tmp_path_factory.mktemp("netboot-daemon"), root, config) as running:
        yield running


@pytest.fixture(autouse=True)
def idle_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """A client is done when it has sent its last ACK; the daemon counts the transfer when
    that ACK arrives. Waiting for that keeps each test's metric deltas its own."""
    yield
    if "daemon" in request.fixturenames:
        daemon: Daemon = request.getfixturevalue("daemon")
        assert wait_for(lambda: daemon.metrics()["simple_tftpd_active_sessions"] == 0, 30)


def error_of(result: object) -> Error:
    assert isinstance(result, Error), f"expected an ERROR, got {result!r}"
    return result


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    "name",
    [
        f"pxelinux.cfg/01-{MAC_DASH}",
        f"/pxelinux.cfg/01-{MAC_DASH.upper()}",
        "pxelinux.cfg/01-5254.0012.3456",
    ],
)
def test_real_clients_get_the_per_machine_file(
    daemon: Daemon, tmp_path: Path, client: str, name: str
) -> None:
    local = tmp_path / "cfg"
    CLIENTS[client]("127.0.0.1", daemon.port, name, local)
    assert local.exists(), daemon.log()[-2000:]
    assert local.read_bytes() == expected_pxelinux()


@pytest.mark.parametrize("client", ["tftp-hpa", "curl"])
def test_over_ipv6(daemon: Daemon, tmp_path: Path, client: str) -> None:
    local = tmp_path / "cfg"
    CLIENTS[client]("::1", daemon.port, f"ipxe/{MAC_DASH}.ipxe", local)
    assert local.read_bytes() == f"#!ipxe\necho host web1 {MAC} 10.0.0.5 role=web\n".encode()


def test_ip_named_file_finds_the_machine(daemon: Daemon, tmp_path: Path) -> None:
    local = tmp_path / "cfg"
    fetch_curl("127.0.0.1", daemon.port, "10.0.0.9.ipxe", local)
    assert local.read_bytes() == b"#!ipxe\necho host api1 02:00:00:00:00:09 10.0.0.9 role=api\n"


def test_fixed_name_is_rendered_for_the_asking_client(daemon: Daemon, tmp_path: Path) -> None:
    local = tmp_path / "cfg"
    fetch_tftp_hpa("127.0.0.1", daemon.port, "default.ipxe", local)
    assert local.read_bytes() == b"#!ipxe\necho default for 127.0.0.1 via tftp\n"


def test_tsize_is_the_rendered_size_and_multi_block_content_arrives(daemon: Daemon) -> None:
    expected = expected_big("02:00:00:00:00:42")
    assert len(expected) > 65535  # many blocks at any blksize a client asks for
    result = tftp_read(daemon.port, "big/02-00-00-00-00-42", {"tsize": "0", "blksize": "1432"})
    assert not isinstance(result, Error), result
    data, oack = result
    assert oack["tsize"] == str(len(expected))
    assert data == expected


def test_atftp_checks_tsize_against_the_bytes(daemon: Daemon, tmp_path: Path) -> None:
    local = tmp_path / "big"
    code = fetch_atftp(
        "127.0.0.1", daemon.port, f"big/{MAC_DASH}", local, options={"tsize": 0, "blksize": 512}
    )
    assert code == 0
    assert local.read_bytes() == expected_big(MAC)


def test_netascii_rendering(daemon: Daemon, tmp_path: Path) -> None:
    local = tmp_path / "cfg"
    fetch_tftp_hpa("127.0.0.1", daemon.port, f"pxelinux.cfg/01-{MAC_DASH}", local, "netascii")
    # tftp-hpa turns netascii back into local line ends: the file arrives as rendered.
    assert local.read_bytes() == expected_pxelinux()


def test_unknown_machine_is_not_found(daemon: Daemon) -> None:
    error = error_of(tftp_read(daemon.port, f"pxelinux.cfg/01-{UNKNOWN_MAC_DASH}"))
    assert error.code == ErrorCode.FILE_NOT_FOUND


def test_hostile_hosts_entries_are_left_out(daemon: Daemon) -> None:
    for mac in ("02-00-00-00-00-01", "02-00-00-00-00-02", "02-00-00-00-00-03"):
        error = error_of(tftp_read(daemon.port, f"ipxe/{mac}.ipxe"))
        assert error.code == ErrorCode.FILE_NOT_FOUND
    log = daemon.log()
    assert "hostname is not a valid hostname; left out" in log
    assert "entry must be a mapping; left out" in log
    assert "key is neither a MAC nor an IP address; left out" in log


def test_hostile_names_never_match(daemon: Daemon) -> None:
    for name in (
        "ipxe/../ipxe/52-54-00-12-34-56.ipxe",
        "pxelinux.cfg/01-../../etc/passwd",
        "ipxe/52-54-00-12-34-56.ipxe/../../../etc/passwd",
    ):
        error = error_of(tftp_read(daemon.port, name))
        assert error.code in (ErrorCode.FILE_NOT_FOUND, ErrorCode.ACCESS_VIOLATION), name


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        (f"broken/{MAC_DASH}", "UndefinedError"),
        ("evil", "SecurityError"),
        ("slow", "took longer than"),
    ],
)
def test_failing_templates_answer_an_error_and_log_the_cause(
    daemon: Daemon, root: Path, tmp_path: Path, name: str, cause: str
) -> None:
    before = daemon.metrics()
    started = time.monotonic()
    error = error_of(tftp_read(daemon.port, name))
    assert time.monotonic() - started < 3
    assert error.code == ErrorCode.NOT_DEFINED and error.message == "Cannot generate file"
    assert wait_for(lambda: cause in daemon.log(), 5), daemon.log()[-3000:]
    assert wait_for(lambda: delta(before, daemon.metrics(), GENERATED_ERROR) == 1, 5)
    # The worker that rendered it is alive and serving.
    local = tmp_path / "after"
    for _ in range(4):  # the kernel spreads client ports over both workers
        fetch_curl("127.0.0.1", daemon.port, "sub/initrd.img", local)
        assert sha256(local) == sha256(root / "sub" / "initrd.img")


def test_templates_and_hosts_file_are_not_served(daemon: Daemon) -> None:
    for name in (
        "netboot/hosts.yaml",
        "netboot/templates/pxelinux.j2",
        "templates-alias/pxelinux.j2",
    ):
        error = error_of(tftp_read(daemon.port, name))
        assert error.code == ErrorCode.ACCESS_VIOLATION, name


def test_template_edits_apply_without_a_restart(daemon: Daemon, root: Path) -> None:
    template = root / "netboot" / "templates" / "live.j2"
    name = "live/02-00-00-00-00-07"
    try:
        result = tftp_read(daemon.port, name)
        assert result == (b"version 1 for 02:00:00:00:00:07\n", {})
        set_file(template, "version 2 for {{ mac }}\n")
        # Every worker re-reads it: ask until both have answered with the new version.
        for _ in range(6):
            assert tftp_read(daemon.port, name) == (b"version 2 for 02:00:00:00:00:07\n", {})
    finally:
        set_file(template, "version 1 for {{ mac }}\n")


def test_hosts_file_edits_apply_and_a_broken_one_fails_loudly(daemon: Daemon, root: Path) -> None:
    hosts = root / "netboot" / "hosts.yaml"
    name = f"ipxe/{MAC_DASH}.ipxe"
    try:
        set_file(hosts, HOSTS.replace("hostname: web1", "hostname: web7"))
        for _ in range(6):
            assert tftp_read(daemon.port, name) == (
                f"#!ipxe\necho host web7 {MAC} 10.0.0.5 role=web\n".encode(),
                {},
            )
        set_file(hosts, "52:54:00:12:34:56: {hostname: [unclosed\n")
        for _ in range(6):
            error = error_of(tftp_read(daemon.port, name))
            assert error.code == ErrorCode.NOT_DEFINED
        assert wait_for(lambda: "hosts file netboot/hosts.yaml is unusable" in daemon.log(), 5)
        # Static files do not depend on the hosts file.
        assert not isinstance(tftp_read(daemon.port, "sub/initrd.img"), Error)
    finally:
        set_file(hosts, HOSTS)
    for _ in range(6):
        assert not isinstance(tftp_read(daemon.port, name), Error)


def test_log_and_metrics_say_which_machine_got_what(daemon: Daemon) -> None:
    before = daemon.metrics()
    expected = expected_pxelinux()
    name = f"pxelinux.cfg/01-{MAC_DASH}"
    assert tftp_read(daemon.port, name, {"tsize": "0"}) == (
        expected,
        {"tsize": str(len(expected))},
    )
    assert wait_for(lambda: delta(before, daemon.metrics(), GENERATED_OK) == 1, 5)
    after = daemon.metrics()
    assert delta(before, after, GENERATED_BYTES) == len(expected)
    assert delta(before, after, LEGACY_OK) == 1
    assert wait_for(lambda: transfer_records(daemon, file=name, protocol="tftp") != [], 5)
    record = transfer_records(daemon, file=name, protocol="tftp")[-1]
    assert record["mac"] == MAC and record["hostname"] == "web1" and record["ip"] == "10.0.0.5"
    assert record["generated"] == "pxelinux.j2" and record["outcome"] == "ok"
    assert record["client"].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))
    # Static files are logged as before, with the protocol and without a machine.
    assert not isinstance(tftp_read(daemon.port, "sub/initrd.img"), Error)
    assert wait_for(lambda: transfer_records(daemon, file="sub/initrd.img") != [], 5)
    static = transfer_records(daemon, file="sub/initrd.img")[-1]
    assert static["protocol"] == "tftp" and "mac" not in static and "generated" not in static


def test_refusals_name_the_machine(daemon: Daemon) -> None:
    name = f"pxelinux.cfg/01-{UNKNOWN_MAC_DASH}"
    error_of(tftp_read(daemon.port, name))
    assert wait_for(lambda: transfer_records(daemon, file=name) != [], 5)
    record = transfer_records(daemon, file=name)[-1]
    assert record["outcome"] == "refused" and record["mac"] == UNKNOWN_MAC_DASH.replace("-", ":")


def test_sighup_applies_new_rules_in_workers_and_http(
    tmp_path_factory: pytest.TempPathFactory, root: Path
) -> None:
    config = netboot_config()
    config["performance"] = {"thread_pool": {"workers": 2}}
    config["netboot"]["generated"] = [RULES[0]]
    daemon = Daemon(tmp_path_factory.mktemp("sighup"), root, config).start()
    try:
        name = f"ipxe/{MAC_DASH}.ipxe"
        expected = (f"#!ipxe\necho host web1 {MAC} 10.0.0.5 role=web\n".encode(), {})
        assert error_of(tftp_read(daemon.port, name)).code == ErrorCode.FILE_NOT_FOUND
        assert http_request(daemon.api_port, "/boot/" + name)[0] == 404
        daemon.config["netboot"]["generated"] = RULES
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        # Each worker reloads on its own: ask until several answers in a row are the new ones.
        assert wait_for(lambda: all(tftp_read(daemon.port, name) == expected for _ in range(4)), 10)
        assert wait_for(lambda: http_request(daemon.api_port, "/boot/" + name)[0] == 200, 10)
    finally:
        daemon.stop()
