"""Admission policy: which clients may talk to the daemon, how often and how many at once."""

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["allow", "deny"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Decisions are cached because allows() runs for every new request; clearing the whole dict when
# it fills keeps memory bounded under address-spoofing floods without LRU bookkeeping.
_DECISION_CACHE_MAX = 65536

# Refill arithmetic with float timestamps can land a hair below a whole token
# (100.1 - 100.0 == 0.0999...), which would otherwise refuse a request that is exactly due.
_TOKEN_EPSILON = 1e-9


@dataclass(frozen=True)
class AclRule:
    action: Action
    networks: tuple[Network, ...]


class AccessList:
    """First matching rule decides; ``default_action`` applies when none matches."""

    def __init__(self, rules: Sequence[AclRule], default_action: Action) -> None:
        self._rules = tuple(rules)
        self._default = default_action == "allow"
        self._decisions: dict[str, bool] = {}

    def allows(self, ip: str) -> bool:
        decision = self._decisions.get(ip)
        if decision is None:
            decision = self._decide(ip)
            if len(self._decisions) >= _DECISION_CACHE_MAX:
                self._decisions.clear()
            self._decisions[ip] = decision
        return decision

    def _decide(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        candidates: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (addr,)
        # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; IPv4 rules must still apply.
        # The mapped form stays a candidate so rules written as ::ffff:0:0/96 keep working too.
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            candidates = (addr.ipv4_mapped, addr)
        for rule in self._rules:
            if any(a in net for net in rule.networks for a in candidates):
                return rule.action == "allow"
        return self._default


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Per-client token bucket applied to new requests (not to data packets).

    ``rate <= 0`` disables limiting. The table of buckets is bounded by ``max_clients``: when it
    is full, buckets that have refilled completely are dropped first (forgetting them changes
    nothing), then the least recently used ones down to 90% of the limit. A dropped client that
    was still limited restarts with a full bucket; that costs at most ``burst`` extra requests
    from a client idle longer than every remaining one, an accepted trade-off for bounded memory.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_clients = max_clients
        self.limited = 0
        self.rate = 0.0
        self.burst = 1
        self.reconfigure(rate, burst)

    @property
    def clients(self) -> int:
        return len(self._buckets)

    def reconfigure(self, rate: float, burst: int) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        if rate <= 0:
            self._buckets.clear()
            return
        for bucket in self._buckets.values():
            bucket.tokens = min(bucket.tokens, burst)

    def allow(self, ip: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(ip)
        if bucket is None:
            # Pruned before inserting, so the new (full) bucket is not itself pruned at once.
            if len(self._buckets) >= self._max_clients:
                self._prune(now)
            bucket = _Bucket(float(self.burst), now)
            self._buckets[ip] = bucket
        else:
            self._refill(bucket, now)
            self._buckets.move_to_end(ip)
        if bucket.tokens >= 1.0 - _TOKEN_EPSILON:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return True
        self.limited += 1
        return False

    def _refill(self, bucket: _Bucket, now: float) -> None:
        # max(): a clock step backwards must not drain tokens.
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
        bucket.updated = max(bucket.updated, now)

    def _prune(self, now: float) -> None:
        for ip in [ip for ip, b in self._buckets.items() if self._is_full(b, now)]:
            del self._buckets[ip]
        # Pruning to a low-water mark amortises the full scan over many new clients; the -1
        # leaves room for the bucket about to be inserted.
        target = min(self._max_clients - self._max_clients // 10, self._max_clients - 1)
        while len(self._buckets) > target:
            self._buckets.popitem(last=False)

    def _is_full(self, bucket: _Bucket, now: float) -> bool:
        elapsed = max(0.0, now - bucket.updated)
        return bucket.tokens + elapsed * self.rate >= self.burst - _TOKEN_EPSILON


class SessionLimiter:
    """Caps concurrent transfers globally and per client; a limit of 0 means unlimited."""

    def __init__(self, max_sessions: int, max_per_client: int) -> None:
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client
        self._per_client: dict[str, int] = {}
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    def reconfigure(self, max_sessions: int, max_per_client: int) -> None:
        # Sessions already running above a lowered limit finish normally; new ones wait.
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client

    def try_acquire(self, ip: str) -> bool:
        if 0 < self.max_sessions <= self._active:
            return False
        count = self._per_client.get(ip, 0)
        if 0 < self.max_per_client <= count:
            return False
        self._per_client[ip] = count + 1
        self._active += 1
        return True

    def release(self, ip: str) -> None:
        # An unmatched release is ignored rather than raised: it runs in cleanup paths, and
        # going negative would silently lift the limits.
        count = self._per_client.get(ip, 0)
        if count == 0:
            return
        if count == 1:
            del self._per_client[ip]
        else:
            self._per_client[ip] = count - 1
        self._active -= 1
