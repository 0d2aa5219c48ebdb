"""The `netboot` config section: rules, names, HTTP boot placement and what it must not
overlap."""

from __future__ import annotations

from typing import Any

import pytest

from simple_tftpd.config import ConfigError, parse_config

RULE = {"pattern": "pxelinux.cfg/01-{mac}", "template": "pxelinux.j2"}


def netboot(**section: Any) -> dict[str, Any]:
    return {"netboot": {"enabled": True, "generated": [RULE], **section}}


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_defaults() -> None:
    config = parse_config({})
    assert not config.netboot.enabled and not config.netboot.http.enabled
    assert config.netboot.templates_dir == "netboot/templates"
    assert config.netboot.hosts_file == "netboot/hosts.yaml"
    assert config.netboot.max_render_bytes == 1 << 20
    assert config.netboot.http.port is None and config.netboot.http.path_prefix == "/boot"
    summary = config.summary()
    assert summary["netboot_enabled"] is False and summary["http_boot_enabled"] is False


def test_a_full_section_validates() -> None:
    config = parse_config(
        netboot(
            generated=[
                RULE,
                {"pattern": "{ip}.ipxe", "template": "ipxe/host.j2", "unknown_host": "render"},
                {"pattern": "hosts/{hostname}/grub.cfg", "template": "grub.j2"},
                {"pattern": "pxelinux.cfg/default", "template": "default.j2"},
            ],
            http={"enabled": True, "port": 8081, "bind": "::", "path_prefix": "/"},
        )
    )
    assert [rule.unknown_host for rule in config.netboot.generated] == [
        None,
        "render",
        None,
        None,
    ]
    assert config.netboot.http.port == 8081


@pytest.mark.parametrize(
    ("data", "where", "message"),
    [
        ({"netboot": {"enabled": True}}, "netboot.generated", "no generated file is set"),
        (
            netboot(generated=[{"pattern": "a/{serial}", "template": "t"}]),
            "netboot.generated[0].pattern",
            'unknown placeholder "{serial}"',
        ),
        (
            netboot(generated=[{"pattern": "{mac}-{mac}", "template": "t"}]),
            "netboot.generated[0].pattern",
            "used more than once",
        ),
        (
            netboot(generated=[{"pattern": "a/{mac", "template": "t"}]),
            "netboot.generated[0].pattern",
            'unbalanced "{"',
        ),
        (
            netboot(generated=[{"pattern": "../{mac}", "template": "t"}]),
            "netboot.generated[0].pattern",
            '".."',
        ),
        (
            netboot(generated=[{"pattern": "/abs/{mac}", "template": "t"}]),
            "netboot.generated[0].pattern",
            "relative path",
        ),
        (
            netboot(generated=[{"pattern": "x", "template": "../../etc/passwd"}]),
            "netboot.generated[0].template",
            '".."',
        ),
        (
            netboot(generated=[RULE, {**RULE, "template": "other.j2"}]),
            "netboot.generated[1].pattern",
            "duplicate pattern (first used by generated[0])",
        ),
        (
            netboot(generated=[{**RULE, "unknown_host": "ignore"}]),
            "netboot.generated[0].unknown_host",
            "'not_found' or 'render'",
        ),
        (netboot(templates_dir="/etc"), "netboot.templates_dir", "relative path"),
        (netboot(hosts_file="a//b.yaml"), "netboot.hosts_file", "empty path segments"),
        (
            netboot(hosts_file="netboot/templates/hosts.yaml"),
            "netboot.hosts_file",
            "inside templates_dir",
        ),
        (netboot(max_render_bytes=0), "netboot.max_render_bytes", "greater than or equal to 1"),
        (
            netboot(http={"enabled": True, "path_prefix": "boot"}),
            "netboot.http.path_prefix",
            'a leading "/"',
        ),
        (
            netboot(http={"enabled": True, "path_prefix": "/boot/"}),
            "netboot.http.path_prefix",
            'no trailing "/"',
        ),
        (
            netboot(http={"enabled": True, "path_prefix": "/a/../api"}),
            "netboot.http.path_prefix",
            "segments",
        ),
        (
            netboot(http={"enabled": True, "path_prefix": "/api/v1/boot"}),
            "netboot.http.path_prefix",
            'under "/api"',
        ),
        (
            netboot(http={"enabled": True, "path_prefix": "/"}),
            "netboot.http.path_prefix",
            "port of its own",
        ),
        (
            netboot(http={"enabled": True, "port": 8080}),
            "netboot.http.port",
            "is the API port",
        ),
        (
            {"api": {"enabled": False}, **netboot(http={"enabled": True, "port": 8081})},
            "netboot.http.enabled",
            "runs beside the API",
        ),
        (
            {"tftp": {"write": {"enabled": True, "prefixes": ["netboot/"]}}, **netboot()},
            "tftp.write.prefixes[0]",
            'overlaps netboot file "netboot/templates"',
        ),
        (
            {
                "tftp": {"write": {"enabled": True, "prefixes": ["uploads/", "netboot/templates"]}},
                **netboot(),
            },
            "tftp.write.prefixes[1]",
            "uploads must not reach templates",
        ),
    ],
)
def test_problems_point_at_the_key(data: dict[str, Any], where: str, message: str) -> None:
    problems = problems_of(data)
    assert any(p.startswith(f"{where}: ") and message in p for p in problems), problems


def test_own_port_may_use_the_root_prefix_and_api_like_paths() -> None:
    config = parse_config(netboot(http={"enabled": True, "port": 8081, "path_prefix": "/api"}))
    assert config.netboot.http.path_prefix == "/api"


def test_uploads_elsewhere_are_fine() -> None:
    data = {"tftp": {"write": {"enabled": True, "prefixes": ["uploads/", "netboot2/"]}}}
    assert parse_config({**data, **netboot()}).tftp.write.prefixes == ["uploads/", "netboot2/"]
