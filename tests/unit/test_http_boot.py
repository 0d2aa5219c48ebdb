"""HTTP boot pieces without a server: Range parsing (RFC 9110) and the access list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simple_tftpd.config import parse_config
from simple_tftpd.http_boot import MAX_RANGES, boot_access_list, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, [(0, 0)]),
        ("bytes=0-9", 10, [(0, 9)]),
        ("bytes=9-9", 10, [(9, 9)]),
        ("bytes=5-", 10, [(5, 9)]),
        ("bytes=0-", 10, [(0, 9)]),
        ("bytes=-1", 10, [(9, 9)]),
        ("bytes=-10", 10, [(0, 9)]),
        ("bytes=-100", 10, [(0, 9)]),  # a suffix longer than the file is the whole file
        ("bytes=2-1000", 10, [(2, 9)]),  # clamped to the end
        ("BYTES = 1-2", 10, [(1, 2)]),
        ("bytes=0-0, -1", 10, [(0, 0), (9, 9)]),
        ("bytes=0-1,4-5,8-", 10, [(0, 1), (4, 5), (8, 9)]),
        # Not satisfiable: 416.
        ("bytes=10-", 10, []),
        ("bytes=10-20", 10, []),
        ("bytes=-0", 10, []),
        ("bytes=10-20,-0", 10, []),
        # Some satisfiable: the others are dropped.
        ("bytes=0-0,50-60", 10, [(0, 0)]),
        # Ignored (the whole file, 200): malformed, other units, reversed, empty file.
        ("bytes=5-1", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=", 10, None),
        ("bytes=-", 10, None),
        ("bytes=0-1;2-3", 10, None),
        ("bytes=0-" + "9" * 5000, 10, None),  # int() would refuse it; never reaches int()
        ("items=0-1", 10, None),
        ("0-1", 10, None),
        ("bytes=0-0", 0, None),
        ("bytes=-5", 0, None),
        # Ranges that add up to more than the file cost more than the file: ignored.
        ("bytes=0-9,0-9", 10, None),
        ("bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)), 100, None),
    ],
)
def test_parse_range(header: str, size: int, expected: list[tuple[int, int]] | None) -> None:
    assert parse_range(header, size) == expected


@given(st.text(max_size=60), st.integers(min_value=0, max_value=10**12))
def test_parsed_ranges_always_lie_inside_the_file(header: str, size: int) -> None:
    ranges = parse_range(header, size)
    if ranges:
        assert len(ranges) <= MAX_RANGES
        assert all(0 <= first <= last < size for first, last in ranges)
        assert sum(last - first + 1 for first, last in ranges) <= size


def rule(name: str, action: str, protocol: str, port: int, source: str) -> dict[str, object]:
    return {
        "name": name,
        "action": action,
        "protocol": protocol,
        "ports": [port],
        "sources": [source],
    }


def test_http_boot_gets_the_tftp_rules_and_its_own_tcp_rules() -> None:
    config = parse_config(
        {
            "tftp": {"port": 69},
            "security": {
                "network": {
                    "firewall": {
                        "default_action": "deny",
                        "rules": [
                            rule("no-lab-http", "deny", "tcp", 8081, "10.1.0.0/16"),
                            rule("prov", "allow", "udp", 69, "10.0.0.0/8"),
                            rule("http-extra", "allow", "tcp", 8081, "192.0.2.0/24"),
                            rule("other-port", "allow", "tcp", 22, "198.51.100.0/24"),
                            rule("other-udp", "allow", "udp", 53, "203.0.113.0/24"),
                        ],
                    }
                }
            },
        }
    )
    acl = boot_access_list(config, 8081)
    assert acl.allows("10.2.3.4")  # allowed to TFTP, so allowed to HTTP boot
    assert not acl.allows("10.1.2.3")  # a TCP rule for the HTTP port comes first
    assert acl.allows("192.0.2.9")
    assert not acl.allows("198.51.100.1")  # rules for other ports do not apply
    assert not acl.allows("203.0.113.1")
    assert not acl.allows("::ffff:10.1.2.3")
    assert acl.allows("::ffff:10.2.3.4")


def test_a_disabled_firewall_allows_everyone() -> None:
    config = parse_config(
        {"security": {"network": {"firewall": {"enabled": False, "default_action": "deny"}}}}
    )
    assert boot_access_list(config, 8080).allows("203.0.113.1")
