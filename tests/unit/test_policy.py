import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_tftpd.policy import AccessList, AclRule, RateLimiter, SessionLimiter


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def test_acl_first_match_wins() -> None:
    acl = AccessList(
        [
            AclRule("deny", nets("10.0.5.0/24")),
            AclRule("allow", nets("10.0.0.0/8", "192.168.1.0/24")),
            AclRule("deny", nets("10.1.0.0/16")),
        ],
        default_action="deny",
    )
    assert acl.allows("10.1.2.3")
    assert acl.allows("192.168.1.7")
    assert not acl.allows("10.0.5.9")
    assert not acl.allows("172.16.0.1")


def test_acl_default_allow_and_deny() -> None:
    assert AccessList([], "allow").allows("203.0.113.1")
    assert not AccessList([], "deny").allows("203.0.113.1")
    acl = AccessList([AclRule("deny", nets("203.0.113.0/24"))], "allow")
    assert not acl.allows("203.0.113.1")
    assert acl.allows("198.51.100.1")


def test_acl_ipv6() -> None:
    acl = AccessList([AclRule("allow", nets("2001:db8::/32", "fe80::/10"))], "deny")
    assert acl.allows("2001:db8:1::5")
    assert acl.allows("fe80::1%eth0")
    assert not acl.allows("2001:db9::1")
    # An IPv4 rule never matches a native IPv6 address and vice versa.
    v4 = AccessList([AclRule("allow", nets("0.0.0.0/0"))], "deny")
    assert not v4.allows("2001:db8::1")
    v6 = AccessList([AclRule("allow", nets("::/0"))], "deny")
    assert not v6.allows("10.0.0.1")


def test_acl_ipv4_mapped() -> None:
    acl = AccessList(
        [AclRule("deny", nets("10.9.0.0/16")), AclRule("allow", nets("10.0.0.0/8"))], "deny"
    )
    assert acl.allows("::ffff:10.1.2.3")
    assert not acl.allows("::ffff:10.9.2.3")
    assert not acl.allows("::ffff:192.0.2.1")
    mapped_rule = AccessList([AclRule("allow", nets("::ffff:0:0/96"))], "deny")
    assert mapped_rule.allows("::ffff:192.0.2.1")


def test_acl_invalid_address_denied() -> None:
    assert not AccessList([], "allow").allows("not-an-ip")


def test_acl_decision_cache_is_bounded() -> None:
    acl = AccessList([AclRule("allow", nets("10.0.0.0/8"))], "deny")
    for i in range(70_000):
        acl.allows(str(ipaddress.IPv4Address(0x0A000000 + i)))
    assert len(acl._decisions) <= 65536
    assert acl.allows("10.0.0.1")
    assert not acl.allows("11.0.0.1")


def test_token_bucket_refill_arithmetic() -> None:
    rl = RateLimiter(rate=10, burst=3)
    now = 100.0
    assert [rl.allow("10.0.0.1", now) for _ in range(4)] == [True, True, True, False]
    assert rl.limited == 1
    # Half a token is not enough.
    assert not rl.allow("10.0.0.1", now + 0.05)
    # Exactly 1/rate seconds after the bucket emptied: one token, then empty again.
    assert rl.allow("10.0.0.1", now + 0.1)
    assert not rl.allow("10.0.0.1", now + 0.1)
    assert rl.limited == 3
    # A long idle period refills only up to burst.
    t = now + 1000
    assert [rl.allow("10.0.0.1", t) for _ in range(4)] == [True, True, True, False]


def test_token_bucket_fractional_rate() -> None:
    rl = RateLimiter(rate=0.5, burst=1)
    assert rl.allow("a", 0.0)
    assert not rl.allow("a", 1.0)
    assert not rl.allow("a", 1.999)
    assert rl.allow("a", 2.0)


def test_token_bucket_clock_step_back() -> None:
    rl = RateLimiter(rate=1, burst=1)
    assert rl.allow("a", 10.0)
    assert not rl.allow("a", 5.0)
    assert rl.allow("a", 11.0)


def test_clients_are_independent() -> None:
    rl = RateLimiter(rate=1, burst=2)
    assert rl.allow("10.0.0.1", 0) and rl.allow("10.0.0.1", 0)
    assert not rl.allow("10.0.0.1", 0)
    assert rl.allow("10.0.0.2", 0) and rl.allow("10.0.0.2", 0)
    assert not rl.allow("10.0.0.2", 0)
    assert rl.limited == 2


def test_rate_limiter_reconfigure() -> None:
    rl = RateLimiter(rate=1, burst=5)
    assert rl.allow("a", 0)
    rl.reconfigure(rate=1, burst=2)
    assert [rl.allow("a", 0) for _ in range(3)] == [True, True, False]
    rl.reconfigure(rate=0, burst=2)
    assert all(rl.allow("a", 0) for _ in range(100))
    assert rl.clients == 0
    with pytest.raises(ValueError):
        rl.reconfigure(rate=1, burst=0)


def test_bucket_table_is_bounded() -> None:
    rl = RateLimiter(rate=1, burst=2, max_clients=100)
    for i in range(1000):
        assert rl.allow(f"10.0.{i // 256}.{i % 256}", now=0.0)
        assert rl.clients <= 100


def test_pruning_prefers_full_buckets() -> None:
    rl = RateLimiter(rate=1, burst=2, max_clients=10)
    # "hot" is limited; idle clients had one request long ago and are full again by t=10.
    assert rl.allow("hot", 9.5) and rl.allow("hot", 9.5)
    assert not rl.allow("hot", 9.5)
    for i in range(9):
        rl.allow(f"idle{i}", 0.0)
    assert rl.clients == 10
    assert rl.allow("new", 10.0)
    assert rl.clients == 2
    # "hot" kept its state: only half a token has refilled.
    assert not rl.allow("hot", 10.0)


def test_pruning_drops_least_recently_used_when_none_full() -> None:
    rl = RateLimiter(rate=0.001, burst=1, max_clients=10)
    for i in range(10):
        assert rl.allow(f"c{i}", float(i))
    assert not rl.allow("c0", 10.0)  # c0 becomes most recently used
    assert rl.allow("new", 10.0)
    assert rl.clients == 10
    assert not rl.allow("c0", 10.0)  # still limited: its bucket survived
    assert rl.allow("c1", 10.0)  # forgotten, so it starts with a full bucket again


@settings(max_examples=100)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 300), st.floats(0, 0.5, allow_nan=False)), max_size=400
    ),
    max_clients=st.integers(1, 50),
)
def test_bucket_table_bound_property(events: list[tuple[int, float]], max_clients: int) -> None:
    rl = RateLimiter(rate=2, burst=3, max_clients=max_clients)
    now = 0.0
    for client, step in events:
        now += step
        rl.allow(f"10.0.{client // 256}.{client % 256}", now)
        assert rl.clients <= max_clients


def test_session_limiter_global_cap() -> None:
    sl = SessionLimiter(max_sessions=3, max_per_client=10)
    assert sl.try_acquire("a") and sl.try_acquire("b") and sl.try_acquire("c")
    assert not sl.try_acquire("d")
    assert sl.active == 3
    sl.release("b")
    assert sl.active == 2
    assert sl.try_acquire("d")


def test_session_limiter_per_client_cap() -> None:
    sl = SessionLimiter(max_sessions=100, max_per_client=2)
    assert sl.try_acquire("a") and sl.try_acquire("a")
    assert not sl.try_acquire("a")
    assert sl.try_acquire("b")
    sl.release("a")
    assert sl.try_acquire("a")
    assert sl.active == 3


def test_session_limiter_release_unknown_is_ignored() -> None:
    sl = SessionLimiter(max_sessions=1, max_per_client=1)
    sl.release("a")
    assert sl.active == 0
    assert sl.try_acquire("a")
    sl.release("a")
    sl.release("a")
    assert sl.active == 0
    assert sl.try_acquire("b")
    assert not sl.try_acquire("c")


def test_session_limiter_zero_is_unlimited() -> None:
    sl = SessionLimiter(max_sessions=0, max_per_client=0)
    assert all(sl.try_acquire("a") for _ in range(1000))
    assert sl.active == 1000


def test_session_limiter_reconfigure() -> None:
    sl = SessionLimiter(max_sessions=10, max_per_client=10)
    for _ in range(4):
        assert sl.try_acquire("a")
    sl.reconfigure(max_sessions=3, max_per_client=2)
    assert sl.active == 4  # running sessions are not cut off
    assert not sl.try_acquire("b")
    sl.release("a")
    sl.release("a")
    assert sl.try_acquire("b")
    assert not sl.try_acquire("a")
    sl.reconfigure(max_sessions=10, max_per_client=5)
    assert sl.try_acquire("a")
