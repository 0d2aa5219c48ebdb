"""Generated files: pattern matching, machine identification, rendering, reloads, tsize, and
what the sandbox and the limits do to hostile templates, variables and hosts files."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_tftpd.config import parse_config
from simple_tftpd.content.cache import ContentCache
from simple_tftpd.content.generated import (
    RENDER_TIME_LIMIT,
    GeneratedFiles,
    GenerateError,
    Rendered,
    normalize_hostname,
    normalize_ip,
    normalize_mac,
)
from simple_tftpd.content.resolve import PathResolver, ResolveError
from simple_tftpd.content.store import ContentStore
from simple_tftpd.protocol.packets import Opcode, Request
from simple_tftpd.protocol.transfer import Limits, negotiate

MAC = "52:54:00:12:34:56"
HOSTS = """\
52:54:00:12:34:56:
  hostname: web1
  ip: 10.0.0.5
  role: web
  disks: [sda, sdb]
10.0.0.9:
  hostname: db1
  mac: AA-BB-CC-DD-EE-FF
"""
TEMPLATES = {
    "host.j2": "mac={{ mac }} ip={{ ip }} host={{ hostname }} role={{ host.role }}\n",
    "any.j2": (
        "{% if mac is defined %}mac={{ mac }}{% else %}no-mac{% endif %} ip={{ ip }} "
        "client={{ client_ip }} via={{ protocol }} name={{ name }} known={{ host | length > 0 }}\n"
    ),
    "plain.j2": "static text\n",
}
RULES = [
    {"pattern": "pxelinux.cfg/01-{mac}", "template": "host.j2"},
    {"pattern": "grub/grub.cfg-{mac}", "template": "host.j2"},
    {"pattern": "{ip}.ipxe", "template": "any.j2"},
    {"pattern": "hosts/{hostname}.cfg", "template": "host.j2"},
    {"pattern": "any/{mac}", "template": "any.j2", "unknown_host": "render"},
    {"pattern": "pxelinux.cfg/default", "template": "any.j2"},
]


def make_root(tmp_path: Path, templates: dict[str, str] | None = None, hosts: str = HOSTS) -> Path:
    root = tmp_path / "root"
    (root / "netboot" / "templates").mkdir(parents=True, exist_ok=True)
    for name, text in (templates or TEMPLATES).items():
        path = root / "netboot" / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "netboot" / "hosts.yaml").write_text(hosts)
    (root / "static.bin").write_bytes(b"static")
    return root


def generated(
    root: Path,
    rules: list[dict[str, Any]] | None = None,
    remap: list[dict[str, str]] | None = None,
    **netboot: Any,
) -> GeneratedFiles:
    config = parse_config(
        {
            "tftp": {"root": str(root), "remap": remap or []},
            "netboot": {"enabled": True, "generated": rules or RULES, **netboot},
        }
    )
    resolver = PathResolver(root, [(r.pattern, r.replacement) for r in config.tftp.remap])
    return GeneratedFiles(resolver, config.netboot)


def render(files: GeneratedFiles, name: str, client: str | None = "192.0.2.7") -> Rendered:
    rendered = files.render(name, client, "tftp")
    assert rendered is not None, f"{name} matched no rule"
    return rendered


def text(files: GeneratedFiles, name: str, client: str | None = "192.0.2.7") -> str:
    return render(files, name, client).data.decode()


def refused(files: GeneratedFiles, name: str, client: str | None = "192.0.2.7") -> GenerateError:
    with pytest.raises(GenerateError) as info:
        files.render(name, client, "tftp")
    return info.value


def touch_later(path: Path) -> None:
    """Give a rewritten file a visibly new version even on coarse-timestamp file systems."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# --- value syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "52:54:00:12:34:56",
        "52-54-00-12-34-56",
        "525400123456",
        "5254.0012.3456",
        "52:54:00:12:34:56".upper(),
        "52-54-00-12-34-56".upper(),
    ],
)
def test_mac_spellings_normalise(spelling: str) -> None:
    assert normalize_mac(spelling) == MAC


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54-00:12:34:56",  # mixed separators
        "52:54:00:12:34:5g",
        "5254001234567",
        "52:54:00:12:34:56 ",
        "52:54:00:12:34:56\n",
        "../52:54:00:12:34:56",
        "\uff15\uff12:54:00:12:34:56",  # fullwidth digits are not hex digits
    ],
)
def test_bad_macs_are_refused(bad: str) -> None:
    assert normalize_mac(bad) is None


def test_ip_and_hostname_syntax() -> None:
    assert normalize_ip("10.0.0.5") == "10.0.0.5"
    assert normalize_ip("::ffff:10.0.0.5") == "10.0.0.5"
    assert normalize_ip("2001:DB8::1") == "2001:db8::1"
    for bad in ("999.1.1.1", "10.0.0", "10.0.0.5/24", "", "..", "10.0.0.5\n"):
        assert normalize_ip(bad) is None
    assert normalize_hostname("Web-1.Example.com") == "web-1.example.com"
    for bad in ("../etc", "a/b", "-web", "web-", "a..b", "a" * 64, "x." * 130, "", "web 1"):
        assert normalize_hostname(bad) is None


# --- matching and identification ---------------------------------------------------------------


def test_mac_patterns_match_every_spelling_and_render_the_host(tmp_path: Path) -> None:
    files = generated(make_root(tmp_path))
    expected = f"mac={MAC} ip=10.0.0.5 host=web1 role=web\n"
    for name in (
        "pxelinux.cfg/01-52-54-00-12-34-56",
        "/pxelinux.cfg/01-52:54:00:12:34:56",  # PXE firmware sends a leading slash
        "grub/grub.cfg-525400123456",
        "grub/grub.cfg-5254.0012.3456",
        "hosts/WEB1.cfg",
    ):
        rendered = render(files, name)
        assert rendered.data.decode() == expected
        assert rendered.machine.mac == MAC and rendered.machine.hostname == "web1"
        assert rendered.template == "host.j2"


def test_names_that_fit_no_rule_are_not_generated(tmp_path: Path) -> None:
    files = generated(make_root(tmp_path))
    for name in (
        "static.bin",
        "pxelinux.cfg/01-52-54-00-12-34",  # not a MAC
        "pxelinux.cfg/01-52-54-00-12-34-56.bak",
        "PXELINUX.CFG/default",  # literal parts are case-sensitive, like file names
        "999.1.1.1.ipxe",  # an IP-shaped name that is no address
        "pxelinux.cfg/default/x",
    ):
        assert files.render(name, "192.0.2.7", "tftp") is None, name


def test_traversal_in_names_is_refused_before_matching(tmp_path: Path) -> None:
    files = generated(make_root(tmp_path))
    for name in ("pxelinux.cfg/../pxelinux.cfg/01-52-54-00-12-34-56", "hosts/../../etc.cfg"):
        with pytest.raises(ResolveError) as info:
            files.render(name, "192.0.2.7", "tftp")
        assert info.value.code == 2


def test_remap_applies_before_matching(tmp_path: Path) -> None:
    remap = [{"pattern": "^by-mac/", "replacement": "pxelinux.cfg/01-"}]
    files = generated(make_root(tmp_path), remap=remap)
    assert text(files, "by-mac/52-54-00-12-34-56").startswith(f"mac={MAC} ")


def test_first_matching_rule_wins(tmp_path: Path) -> None:
    rules = [
        {"pattern": "x/{mac}", "template": "plain.j2", "unknown_host": "render"},
        {"pattern": "x/{hostname}", "template": "host.j2"},
    ]
    files = generated(make_root(tmp_path), rules)
    assert text(files, "x/52-54-00-12-34-56") == "static text\n"
    assert text(files, "x/web1").startswith(f"mac={MAC} ")


def test_ip_in_name_finds_the_mac_in_the_hosts_file(tmp_path: Path) -> None:
    files = generated(make_root(tmp_path))
    line = text(files, "10.0.0.9.ipxe")
    assert "mac=aa:bb:cc:dd:ee:ff ip=10.0.0.9 client=192.0.2.7 via=tftp" in line
    assert "name=10.0.0.9.ipxe known=True" in line


def test_fixed_names_know_the_machine_by_its_address(tmp_path: Path) -> None:
    files = generated(make_root(tmp_path))
    known = text(files, "pxelinux.cfg/default", client="::ffff:10.0.0.9")
    assert known.startswith("mac=aa:bb:cc:dd:ee:ff ip=10.0.0.9 ") and "known=True" in known
    stranger = text(files, "pxelinux.cfg/default", client="192.0.2.99")
    assert stranger.startswith("no-mac ip=192.0.2.99 client=192.0.2.99 ")
    assert "known=False" in stranger


def test_unknown_machines(tmp_path: Path) -> None:
    files = generated(make_root(tmp_path))
    # A name for a machine not in the hosts file: not found, so PXE firmware moves on to its
    # next candidate (pxelinux.cfg/default).
    error = refused(files, "pxelinux.cfg/01-02-00-00-00-00-01")
    assert error.code == 1 and error.machine is not None
    assert error.machine.mac == "02:00:00:00:00:01"
    # ... unless the rule says to render anyway.
    assert text(files, "any/02-00-00-00-00-01").startswith("mac=02:00:00:00:00:01 ip=192.0.2.7")


def test_protocol_reaches_the_template(tmp_path: Path) -> None:
    files = generated(make_root(tmp_path))
    rendered = files.render("pxelinux.cfg/default", "10.0.0.9", "http")
    assert rendered is not None and b"via=http" in rendered.data


@pytest.fixture(scope="module")
def shared_files(tmp_path_factory: pytest.TempPathFactory) -> GeneratedFiles:
    return generated(make_root(tmp_path_factory.mktemp("shared")))


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=80))
def test_any_name_renders_refuses_or_is_left_alone(shared_files: GeneratedFiles, name: str) -> None:
    try:
        result = shared_files.render(name, "192.0.2.7", "tftp")
    except ResolveError:
        return
    if result is not None:
        assert ".." not in result.name.split("/")


# --- template failures -------------------------------------------------------------------------


def failing(tmp_path: Path, template: str, caplog: pytest.LogCaptureFixture, **netboot: Any) -> str:
    """Render a fixed name with `template`; it must fail with TFTP error 0. The logged cause."""
    root = make_root(tmp_path, {"t.j2": template})
    files = generated(root, [{"pattern": "t", "template": "t.j2"}], **netboot)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="simple_tftpd.generated"):
        error = refused(files, "t")
    assert error.code == 0 and error.message == "Cannot generate file"
    assert error.template == "t.j2"
    [record] = [r for r in caplog.records if r.name == "simple_tftpd.generated"]
    return record.getMessage()


@pytest.mark.parametrize(
    ("template", "cause"),
    [
        ("{{ undefined_name }}", "UndefinedError"),
        ("{{ host.missing }}", "UndefinedError"),
        ("{% if %}", "TemplateSyntaxError"),
        ("{% include 'nope.j2' %}", "TemplateNotFound"),
        ("{{ 1 // 0 }}", "ZeroDivisionError"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
        ("{% include 't.j2' %}", "RecursionError"),
    ],
)
def test_template_errors_answer_an_error_and_log_the_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, template: str, cause: str
) -> None:
    assert cause in failing(tmp_path, template, caplog)


def test_a_missing_template_file_fails_the_same_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = generated(make_root(tmp_path), [{"pattern": "t", "template": "absent.j2"}])
    assert refused(files, "t").code == 0


def test_nothing_half_rendered_is_returned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The error comes after output has been produced: still no data at all.
    message = failing(tmp_path, "first line\n" * 100 + "{{ nope }}", caplog)
    assert "UndefinedError" in message


# --- the sandbox -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ self._TemplateReference__context }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ (1).__class__.__base__.__subclasses__() }}",
        "{{ ''.format.__self__ }}",
        "{{ '{0.__class__}'.format(1) }}",
        "{{ host.__class__ }}",
        "{{ host.update({'role': 'pwned'}) }}",  # the hosts data is shared: immutable
        "{{ host.disks.append('x') }}",
        "{{ host.clear() }}",
        "{{ lipsum(100000) }}",
    ],
)
def test_hostile_templates_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, template: str
) -> None:
    root = make_root(tmp_path, {"t.j2": template})
    files = generated(root, [{"pattern": "t/{mac}", "template": "t.j2"}])
    with caplog.at_level(logging.ERROR):
        assert refused(files, "t/52-54-00-12-34-56").code == 0
    # And the shared hosts data is untouched for the next machine.
    ok = generated(root, [{"pattern": "h/{mac}", "template": "h.j2"}])
    (root / "netboot" / "templates" / "h.j2").write_text("{{ host.role }} {{ host.disks }}")
    assert text(ok, "h/52-54-00-12-34-56") == "web ['sda', 'sdb']"


def test_hosts_data_is_not_changed_by_a_template(tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        {
            "t.j2": "{% set _ = host.update({'role': 'x'}) if false %}{{ host.role }}",
            "tojson.j2": "{{ host | tojson }}",
        },
    )
    rules = [
        {"pattern": "t/{mac}", "template": "t.j2"},
        {"pattern": "j/{mac}", "template": "tojson.j2"},
    ]
    files = generated(root, rules)
    assert text(files, "t/52-54-00-12-34-56") == "web"
    assert '"disks": ["sda", "sdb"]' in text(files, "j/52-54-00-12-34-56")


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 100000000000 }}",
        "{{ ['x'] * 100000000000 }}",
        "{{ 100000000000 * 'x' }}",
        "{{ 7 ** 1000000000 }}",
        "{{ range(1000000000) | list }}",
    ],
)
def test_allocation_bombs_are_refused_quickly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, template: str
) -> None:
    started = time.monotonic()
    failing(tmp_path, template, caplog)
    assert time.monotonic() - started < 2


def test_runaway_loops_are_stopped_and_the_template_quarantined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    template = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    root = make_root(tmp_path, {"slow.j2": template})
    files = generated(root, [{"pattern": "slow", "template": "slow.j2"}])
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert refused(files, "slow").code == 0
    assert time.monotonic() - started < 5  # the limit is CPU time: generous for a busy machine
    assert f"took longer than {RENDER_TIME_LIMIT}s" in caplog.text
    # The same version is refused at once from now on ...
    started = time.monotonic()
    assert refused(files, "slow").code == 0
    assert time.monotonic() - started < 0.1
    assert "ran out of time before" in caplog.text
    # ... and a fixed one renders again.
    path = root / "netboot" / "templates" / "slow.j2"
    path.write_text("fast\n")
    touch_later(path)
    assert text(files, "slow") == "fast\n"


def test_no_alarm_is_left_behind(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import signal

    before = signal.getsignal(signal.SIGPROF)
    failing(
        tmp_path,
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        caplog,
    )
    assert signal.getsignal(signal.SIGPROF) == before
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)
    deadline = time.process_time() + RENDER_TIME_LIMIT + 0.05
    while time.process_time() < deadline:  # a stray timer signal would raise here
        pass


def test_output_size_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_root(tmp_path, {"t.j2": ""})
    limit = 1000

    def size_of(n: int) -> int:
        (root / "netboot" / "templates" / "t.j2").write_text(f"{{{{ 'é' * {n} }}}}")
        touch_later(root / "netboot" / "templates" / "t.j2")
        files = generated(root, [{"pattern": "t", "template": "t.j2"}], max_render_bytes=limit)
        return len(render(files, "t").data)

    # The limit counts UTF-8 bytes, not characters: 500 x 'é' is exactly 1000 bytes.
    assert size_of(500) == limit
    with pytest.raises(GenerateError):
        size_of(501)
    assert "output larger than 1000 bytes" in failing(
        tmp_path / "b", "{% for i in range(2000) %}x{% endfor %}", caplog, max_render_bytes=limit
    )


def test_includes_stay_inside_the_templates_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_root(tmp_path, {"inc/part.j2": "part", "ok.j2": "{% include 'inc/part.j2' %}"})
    (tmp_path / "outside.j2").write_text("outside secret")
    (root / "netboot" / "templates" / "link.j2").symlink_to(tmp_path / "outside.j2")
    (root / "netboot" / "templates" / "bad1.j2").write_text("{% include '../hosts.yaml' %}")
    (root / "netboot" / "templates" / "bad2.j2").write_text("{% include 'link.j2' %}")
    (root / "netboot" / "templates" / "bad3.j2").write_text("{% include '/etc/hostname' %}")
    rules = [{"pattern": f"{name}", "template": f"{name}.j2"} for name in ("ok", "bad1", "bad2")]
    rules += [
        {"pattern": "bad3", "template": "bad3.j2"},
        {"pattern": "link", "template": "link.j2"},
    ]
    files = generated(root, rules)
    assert text(files, "ok") == "part"
    with caplog.at_level(logging.ERROR):
        for name in ("bad1", "bad2", "bad3", "link"):
            assert refused(files, name).code == 0, name
    assert "outside secret" not in caplog.text


# --- the hosts file ----------------------------------------------------------------------------


def hosts_files(tmp_path: Path, hosts: str, name: str = "hosts.yaml") -> GeneratedFiles:
    root = make_root(tmp_path, hosts="")
    (root / "netboot" / name).write_text(hosts)
    return generated(root, hosts_file=f"netboot/{name}")


def test_yaml_keys_are_read_as_written(tmp_path: Path) -> None:
    # Unquoted, YAML 1.1 reads 52:54:00:12:34:56 as the base-60 integer 190178994056.
    files = hosts_files(tmp_path, "52:54:00:12:34:56: {hostname: web1, role: r}\n")
    assert "host=web1" in text(files, "pxelinux.cfg/01-52-54-00-12-34-56")


def test_json_hosts_file(tmp_path: Path) -> None:
    files = hosts_files(
        tmp_path, '{"52-54-00-12-34-56": {"hostname": "web1", "role": 7}}', "hosts.json"
    )
    assert text(files, "pxelinux.cfg/01-525400123456").endswith("host=web1 role=7\n")


def test_odd_mac_spellings_as_keys(tmp_path: Path) -> None:
    files = hosts_files(
        tmp_path,
        '"5254.0012.3456": {hostname: cisco, role: r}\n'
        "AA-BB-CC-DD-EE-FF: {hostname: upper, role: r}\n"
        '"020000000001": {hostname: bare, role: r}\n',
    )
    assert "host=cisco" in text(files, "pxelinux.cfg/01-52-54-00-12-34-56")
    assert "host=upper" in text(files, "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff")
    assert "host=bare" in text(files, "grub/grub.cfg-02:00:00:00:00:01")


def test_bad_entries_are_left_out_and_the_rest_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hosts = """\
52:54:00:12:34:56: {hostname: web1, role: web}
"52-54-00-12-34-56": {hostname: twin}
not-a-mac: {hostname: x}
02:00:00:00:00:01: just a string
02:00:00:00:00:02: {hostname: ../../etc/passwd}
02:00:00:00:00:03: {hostname: 12345}
02:00:00:00:00:04: {hostname: [a, b]}
02:00:00:00:00:05: {ip: 10.0.0.300}
10.0.0.66: {mac: "not a mac", hostname: h66}
"""
    with caplog.at_level(logging.WARNING):
        files = hosts_files(tmp_path, hosts)
        assert text(files, "pxelinux.cfg/01-52-54-00-12-34-56").endswith("host=web1 role=web\n")
    for n in range(1, 6):
        assert refused(files, f"pxelinux.cfg/01-02-00-00-00-00-0{n}").code == 1
    problems = caplog.text
    for fragment in (
        "already used by",
        "'not-a-mac': key is neither a MAC nor an IP",
        "entry must be a mapping",
        "hostname is not a valid hostname",
        "ip is not a valid ip",
        "mac is not a valid mac",
    ):
        assert fragment in problems, fragment


@pytest.mark.parametrize(
    ("hosts", "problem"),
    [
        ("- 52:54:00:12:34:56\n", "must be a mapping"),
        ("a: &x [1]\nb: *x\n", "aliases are not allowed"),
        ("52:54:00:12:34:56: {hostname: a}\n52:54:00:12:34:56: {hostname: b}\n", "duplicate key"),
        ("52:54:00:12:34:56: !!python/object/apply:os.system [true]\n", "not valid YAML"),
        ("52:54:00:12:34:56: {hostname: [unclosed\n", "not valid YAML"),
        ("52:54:00:12:34:56: {role: {{a: 1}: 2}}\n", "mapping keys must be plain values"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", ""),
        ("52:54:00:12:34:56: " + "{a: " * 40 + "1" + "}" * 40 + "\n", "nested deeper"),
    ],
)
def test_unusable_hosts_files_fail_every_render_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, hosts: str, problem: str
) -> None:
    files = hosts_files(tmp_path, hosts)
    with caplog.at_level(logging.ERROR):
        error = refused(files, "pxelinux.cfg/01-52-54-00-12-34-56")
        refused(files, "pxelinux.cfg/default")
    assert error.code == 0
    assert "is unusable" in caplog.text and problem in caplog.text
    # Logged once per version of the file, not once per request.
    assert caplog.text.count("is unusable") == 1


def test_billion_laughs_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    files = hosts_files(tmp_path, "\n".join(lines) + "\n")
    with caplog.at_level(logging.ERROR):
        assert refused(files, "pxelinux.cfg/default").code == 0
    assert "aliases are not allowed" in caplog.text


def test_odd_value_types_reach_templates_as_plain_values(tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        {"t.j2": "{{ host.when }}|{{ host.blob }}|{{ host.tags | join(',') }}|{{ host.n + 1 }}"},
        hosts=(
            "52:54:00:12:34:56:\n  when: 2024-01-02\n  blob: !!binary aGk=\n"
            "  tags: !!set {b: null, a: null}\n  n: 41\n"
        ),
    )
    files = generated(root, [{"pattern": "t/{mac}", "template": "t.j2"}])
    assert text(files, "t/52-54-00-12-34-56") == "2024-01-02|hi|a,b|42"


def test_huge_values_hit_the_output_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hosts = "52:54:00:12:34:56:\n  hostname: web1\n  blob: " + "x" * (2 << 20) + "\n"
    root = make_root(tmp_path, {"t.j2": "{{ host.blob }}", "ok.j2": "{{ hostname }}"}, hosts)
    rules = [
        {"pattern": "t/{mac}", "template": "t.j2"},
        {"pattern": "ok/{mac}", "template": "ok.j2"},
    ]
    files = generated(root, rules)
    with caplog.at_level(logging.ERROR):
        assert refused(files, "t/52-54-00-12-34-56").code == 0
    assert "output larger than" in caplog.text
    assert text(files, "ok/52-54-00-12-34-56") == "web1"


def test_variables_are_data_never_template_code(tmp_path: Path) -> None:
    hosts = "52:54:00:12:34:56: {hostname: web1, note: \"{{ ''.__class__ }} {% raw %}\"}\n"
    root = make_root(tmp_path, {"t.j2": "{{ host.note }}"}, hosts)
    files = generated(root, [{"pattern": "t/{mac}", "template": "t.j2"}])
    assert text(files, "t/52-54-00-12-34-56") == "{{ ''.__class__ }} {% raw %}"


def test_a_missing_hosts_file_means_no_known_machines(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "netboot" / "hosts.yaml").unlink()
    files = generated(root)
    assert refused(files, "pxelinux.cfg/01-52-54-00-12-34-56").code == 1
    assert "known=False" in text(files, "pxelinux.cfg/default")


def test_a_hosts_file_symlinked_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "netboot" / "hosts.yaml").unlink()
    (tmp_path / "outside.yaml").write_text(HOSTS)
    (root / "netboot" / "hosts.yaml").symlink_to(tmp_path / "outside.yaml")
    assert refused(generated(root), "pxelinux.cfg/01-52-54-00-12-34-56").code == 0


def test_oversized_hosts_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simple_tftpd.content import generated as module

    monkeypatch.setattr(module, "MAX_HOSTS_FILE_BYTES", 100)
    files = hosts_files(tmp_path, HOSTS + "# " + "x" * 100 + "\n")
    assert refused(files, "pxelinux.cfg/01-52-54-00-12-34-56").code == 0


# --- changes on disk ---------------------------------------------------------------------------


def test_templates_and_hosts_are_re_read_when_they_change(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    files = generated(root)
    name = "pxelinux.cfg/01-52-54-00-12-34-56"
    assert text(files, name) == f"mac={MAC} ip=10.0.0.5 host=web1 role=web\n"
    template = root / "netboot" / "templates" / "host.j2"
    template.write_text("v2 {{ hostname }}\n")
    touch_later(template)
    assert text(files, name) == "v2 web1\n"
    hosts = root / "netboot" / "hosts.yaml"
    hosts.write_text(HOSTS.replace("web1", "web9"))
    touch_later(hosts)
    assert text(files, name) == "v2 web9\n"
    # A broken edit fails loudly; fixing it recovers without a restart.
    hosts.write_text("52:54:00:12:34:56: [broken\n")
    touch_later(hosts)
    assert refused(files, name).code == 0
    hosts.write_text(HOSTS)
    touch_later(hosts)
    assert text(files, name) == "v2 web1\n"


# --- through the content store: private inputs, tsize, netascii --------------------------------


def store_for(root: Path, write: bool = False) -> ContentStore:
    tftp: dict[str, Any] = {"root": str(root)}
    if write:
        tftp["write"] = {"enabled": True, "prefixes": ["uploads/"]}
    config = parse_config({"tftp": tftp, "netboot": {"enabled": True, "generated": RULES}})
    return ContentStore.from_config(config, ContentCache(1 << 20, 60, 1 << 20))


def test_store_answers_generated_names_and_files(tmp_path: Path) -> None:
    store = store_for(make_root(tmp_path))
    opened = store.open_read("pxelinux.cfg/01-52-54-00-12-34-56", False, 0.0, "192.0.2.7")
    assert opened.generated is not None and opened.key is None and not opened.cache_hit
    data = bytes(opened.source.read(0, 1000))
    assert data == opened.generated.data and opened.source.size == len(data)
    static = store.open_read("static.bin", False, 0.0, "192.0.2.7")
    assert static.generated is None and static.key is not None


def test_tsize_is_the_rendered_size(tmp_path: Path) -> None:
    store = store_for(make_root(tmp_path))
    for mode in ("octet", "netascii"):
        opened = store.open_read("pxelinux.cfg/default", mode == "netascii", 0.0, "10.0.0.9")
        request = Request(Opcode.RRQ, "pxelinux.cfg/default", mode, {"tsize": "0"})
        _, oack = negotiate(request, Limits(), opened.source.size)
        assert oack is not None
        body = bytes(opened.source.read(0, 1 << 16))
        assert oack["tsize"] == str(len(body))
        if mode == "netascii":
            assert body.endswith(b"\r\n")  # netascii conversion counted in tsize


def test_templates_and_hosts_file_are_never_served_or_written(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "uploads").mkdir()
    (root / "uploads" / "alias").symlink_to(root / "netboot" / "templates")
    (root / "hosts-link.yaml").symlink_to(root / "netboot" / "hosts.yaml")
    store = store_for(root, write=True)
    for name in (
        "netboot/hosts.yaml",
        "/netboot/templates/host.j2",
        "netboot/templates/../templates/host.j2",
        "hosts-link.yaml",
        "uploads/alias/host.j2",
    ):
        with pytest.raises(ResolveError) as info:
            store.open_read(name, False, 0.0, "192.0.2.7")
        assert info.value.code == 2, name
    with pytest.raises(ResolveError) as info:
        store.open_write("uploads/alias/new.j2")
    assert info.value.code == 2
    assert not (root / "netboot" / "templates" / "new.j2").exists()


def test_without_netboot_nothing_is_generated_or_hidden(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    store = ContentStore.from_config(
        parse_config({"tftp": {"root": str(root)}}), ContentCache(0, 0, 0)
    )
    assert store.generated is None
    assert store.open_read("netboot/hosts.yaml", False, 0.0).source.size == len(HOSTS)
    with pytest.raises(ResolveError):
        store.open_read("pxelinux.cfg/default", False, 0.0)
