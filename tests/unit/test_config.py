import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_tftpd.config import (
    Config,
    ConfigError,
    ConfigModel,
    FirewallRule,
    PeerSite,
    apply_overrides,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "datacenter.json"
RULE = {"name": "r", "protocol": "udp", "ports": [69], "sources": ["10.0.0.0/8"]}


def firewall(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"security": {"network": {"firewall": {"rules": list(rules)}}}}


TLS_ON = {"enabled": True, "ca_file": "/ca.pem", "cert_file": "/n.pem", "key_file": "/n.key"}
TOKEN_ROLE = {"name": "ci", "token": "t" * 16, "role": "admin"}


def tls(section: dict[str, Any]) -> dict[str, Any]:
    return {"security": {"tls": section}}


def access(section: dict[str, Any]) -> dict[str, Any]:
    return {"security": {"access": section}}


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_embedded_default_validates() -> None:
    config = Config()
    assert parse_config({}) == config
    assert load_config(None) == config
    assert config.node.role == "standalone"
    assert config.tftp.port == 69
    assert config.tftp.root == Path("tftpboot")
    assert not config.clustering.enabled
    assert not config.multi_site.enabled
    assert not config.tftp.write.enabled


def test_example_validates_and_round_trips() -> None:
    config = load_config(EXAMPLE)
    assert config.clustering.enabled
    assert config.tftp.write.prefixes == ["uploads/", "switch-configs/"]
    assert parse_config(config.model_dump(mode="json")) == config


def _assert_sets_every_key(model: type[pydantic.BaseModel], data: dict[str, Any], at: str) -> None:
    assert set(data) == set(model.model_fields), at
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, ConfigModel):
            _assert_sets_every_key(annotation, data[name], f"{at}.{name}")


def test_example_uses_every_key() -> None:
    # The example doubles as documentation, so it must show every section and key.
    data = json.loads(EXAMPLE.read_text())
    _assert_sets_every_key(Config, data, "<root>")
    _assert_sets_every_key(
        FirewallRule, data["security"]["network"]["firewall"]["rules"][0], "rule"
    )


BAD_INPUTS = [
    ({"bogus": 1}, "bogus", "unknown key; allowed keys here: node, tftp,"),
    (
        {"tftp": {"prot": 1}},
        "tftp.prot",
        'allowed keys here: bind, port, root, ... (did you mean "port"?)',
    ),
    ({"tftp": {"write": {"enable": True}}}, "tftp.write.enable", "unknown key"),
    (firewall({**RULE, "srcs": []}), "security.network.firewall.rules[0].srcs", "unknown key"),
    ({"tftp": {"port": 70000}}, "tftp.port", "less than or equal to 65535 (got 70000)"),
    ({"tftp": {"port": "69"}}, "tftp.port", "valid integer"),
    ({"tftp": {"port": True}}, "tftp.port", "valid integer"),
    ({"api": {"port": 0}}, "api.port", "greater than or equal to 1"),
    ({"tftp": {"bind": "localhost"}}, "tftp.bind", "IPv4 or IPv6 address literal"),
    ({"api": {"bind": "10.0.0.256"}}, "api.bind", "IPv4 or IPv6"),
    ({"tftp": {"root": ""}}, "tftp.root", "non-empty path"),
    ({"tftp": {"timeout": 0.01}}, "tftp.timeout", "greater than or equal to 0.05"),
    ({"tftp": {"timeout": float("nan")}}, "tftp.timeout", "finite"),
    ({"tftp": {"max_blksize": 7}}, "tftp.max_blksize", "greater than or equal to 8"),
    ({"tftp": {"port_range": {"low": 80, "high": 2000}}}, "tftp.port_range.low", "1024"),
    ({"tftp": {"port_range": {"low": 3000, "high": 2000}}}, "tftp.port_range", "greater than high"),
    (
        {"tftp": {"remap": [{"pattern": "[abc", "replacement": ""}]}},
        "tftp.remap[0].pattern",
        "invalid regular expression: unterminated character set",
    ),
    (
        {"tftp": {"remap": [{"pattern": "a", "replacement": "\\1"}]}},
        "tftp.remap[0].replacement",
        "invalid group reference",
    ),
    (
        {"tftp": {"write": {"enabled": True}}},
        "tftp.write.prefixes",
        'uploads are enabled but no prefix is allowed; add e.g. "uploads/"',
    ),
    ({"tftp": {"write": {"prefixes": ["ok/", "../etc/"]}}}, "tftp.write.prefixes[1]", ".."),
    ({"tftp": {"write": {"prefixes": ["/abs/"]}}}, "tftp.write.prefixes[0]", "relative path"),
    ({"api": {"token": "too-short"}}, "api.token", "at least 16 characters"),
    ({"node": {"node_id": "Node 1"}}, "node.node_id", "^[a-z0-9][a-z0-9._-]{0,62}$"),
    ({"node": {"cluster_id": "x\n"}}, "node.cluster_id", "lowercase letters"),
    ({"node": {"role": "king"}}, "node.role", "'standalone', 'leader' or 'follower'"),
    ({"logging": {"level": "trace"}}, "logging.level", "'debug'"),
    ({"clustering": {"max_nodes": 4}}, "clustering.max_nodes", "use an odd number for quorum"),
    ({"clustering": {"min_nodes": 4}}, "clustering.min_nodes", "use an odd number for quorum"),
    ({"clustering": {"max_nodes": 9}}, "clustering.max_nodes", "less than or equal to 7"),
    ({"clustering": {"min_nodes": 7, "max_nodes": 5}}, "clustering.min_nodes", "max_nodes"),
    ({"clustering": {"enabled": True}}, "clustering.etcd_endpoints", "no etcd endpoint"),
    (
        {"clustering": {"etcd_endpoints": ["etcd:2379", "ftp://etcd:2379"]}},
        "clustering.etcd_endpoints[1]",
        'unsupported scheme "ftp"',
    ),
    ({"clustering": {"nodes": ["10.0.0.1"]}}, "clustering.nodes[0]", 'expected "host:port"'),
    ({"clustering": {"nodes": ["::1:8080"]}}, "clustering.nodes[0]", "brackets"),
    ({"clustering": {"lease_ttl": 1}}, "clustering.lease_ttl", "greater than or equal to 2"),
    (
        {"multi_site": {"site_id": "eu", "sync": {"peer_sites": ["eu:h:1"]}}},
        "multi_site.sync.peer_sites[0].site_id",
        "cannot peer itself",
    ),
    (
        {"multi_site": {"sync": {"peer_sites": ["us:h:1", "us:h:2"]}}},
        "multi_site.sync.peer_sites[1].site_id",
        "already listed",
    ),
    (
        {"multi_site": {"sync": {"peer_sites": ["nocolon"]}}},
        "multi_site.sync.peer_sites[0]",
        "SITE_ID:HOST:PORT",
    ),
    (
        {"multi_site": {"sync": {"peer_sites": ["us:host"]}}},
        "multi_site.sync.peer_sites[0].endpoint",
        "host:port",
    ),
    ({"backup": {"schedule": "0 25 * * *"}}, "backup.schedule", 'hour field "25"'),
    ({"backup": {"schedule": "*/0 * * * *"}}, "backup.schedule", 'minute field "*/0"'),
    ({"backup": {"schedule": "0 0 1-40 * *"}}, "backup.schedule", "day-of-month field"),
    ({"backup": {"schedule": "0 0 * 0 *"}}, "backup.schedule", "month field"),
    ({"backup": {"schedule": "0 0 * * mon"}}, "backup.schedule", "day-of-week field"),
    ({"backup": {"schedule": "0 0 * *"}}, "backup.schedule", "expected 5 cron fields"),
    (
        {"backup": {"locations": ["ftp://host/x"]}},
        "backup.locations[0]",
        "allowed schemes: az, file, gs, s3",
    ),
    ({"backup": {"locations": ["file://relative"]}}, "backup.locations[0]", "absolute path"),
    ({"backup": {"enabled": True}}, "backup.locations", "no location"),
    ({"backup": {"enabled": True, "locations": ["s3://b/p"]}}, "backup.key_file", "encryption"),
    ({"backup": {"key_file": "/k", "key_env": "KEY"}}, "backup.key_env", "not both"),
    ({"backup": {"key_env": "1-KEY"}}, "backup.key_env", "environment variable name"),
    ({"backup": {"journal_seconds": 0}}, "backup.journal_seconds", "greater than or equal"),
    ({"backup": {"locations": ["s3://b/p", "s3://b/p"]}}, "backup.locations[1]", "duplicate"),
    ({"backup": {"retention_days": 0}}, "backup.retention_days", "greater than or equal to 1"),
    (
        firewall({**RULE, "sources": ["10.0.0.0/8", "10.0.0.1/8"]}),
        "security.network.firewall.rules[0].sources[1]",
        "did you mean 10.0.0.0/8",
    ),
    (
        firewall({**RULE, "sources": ["not-a-network"]}),
        "security.network.firewall.rules[0].sources[0]",
        "CIDR",
    ),
    (firewall({**RULE, "sources": []}), "security.network.firewall.rules[0].sources", "at least 1"),
    (firewall({**RULE, "ports": [70000]}), "security.network.firewall.rules[0].ports[0]", "65535"),
    (
        firewall({**RULE, "ports": ["2380-2379"]}),
        "security.network.firewall.rules[0].ports[0]",
        "reversed",
    ),
    (
        firewall({**RULE, "ports": ["69"]}),
        "security.network.firewall.rules[0].ports[0]",
        "without quotes",
    ),
    (firewall({**RULE, "protocol": "icmp"}), "security.network.firewall.rules[0].protocol", "udp"),
    (firewall({"name": "r"}), "security.network.firewall.rules[0].sources", "required key"),
    (firewall(RULE, RULE), "security.network.firewall.rules[1].name", "duplicate rule name"),
    (
        {"security": {"network": {"ddos_protection": {"unverified_retries": 11}}}},
        "security.network.ddos_protection.unverified_retries",
        "less than or equal to 10",
    ),
    (
        {"security": {"network": {"ddos_protection": {"rate_limit": 0}}}},
        "security.network.ddos_protection.rate_limit",
        "greater than or equal to 0.1",
    ),
    ({"performance": {"thread_pool": {"workers": 257}}}, "performance.thread_pool.workers", "256"),
    ({"performance": {"cache": {"ttl_seconds": -1}}}, "performance.cache.ttl_seconds", "0"),
    ({"tftp": []}, "tftp", "must be a JSON object"),
    ({"tftp": {"a.b": 1}}, 'tftp["a.b"]', "unknown key"),
    ([], "<config>", "must be a JSON object"),
    ({"api": {"metrics_port": 8080}}, "api.metrics_port", "is the API port"),
    ({"api": {"metrics_bind": "metrics"}}, "api.metrics_bind", "IPv4 or IPv6"),
    (tls({"enabled": True}), "security.tls.ca_file", "no ca_file is set; `fab certs`"),
    (tls({"enabled": True, "ca_file": "/ca"}), "security.tls.cert_file", "no cert_file"),
    (tls({"min_version": "1.2"}), "security.tls.min_version", "unknown key"),
    (
        {"clustering": {"etcd_endpoints": ["http://e:2379", "https://e:2379"]}},
        "clustering.etcd_endpoints[1]",
        "https endpoints need security.tls",
    ),
    (
        {**tls(TLS_ON), "netboot": {"http": {"enabled": True}}},
        "netboot.http.port",
        "client certificates, which boot firmware does not have",
    ),
    (access({"anonymous_read": "yes"}), "security.access.anonymous_read", "valid boolean"),
    (
        access({"certificates": [{"name": "ops", "role": "root"}]}),
        "security.access.certificates[0].role",
        "'read_only' or 'admin'",
    ),
    (
        access({"certificates": [{"name": "has space", "role": "admin"}]}),
        "security.access.certificates[0].name",
        "printable characters without spaces",
    ),
    (
        access({"certificates": [{"name": "a", "role": "admin"}, {"name": "a", "role": "admin"}]}),
        "security.access.certificates[1].name",
        "already mapped at certificates[0]",
    ),
    (
        access({"tokens": [{"name": "ci", "token": "short", "role": "admin"}]}),
        "security.access.tokens[0].token",
        "at least 16 characters",
    ),
    (
        access({"tokens": [{"name": "a", "token": "t" * 16, "role": "admin"}] * 2}),
        "security.access.tokens[1].name",
        "duplicate name",
    ),
    (
        {"api": {"token": "t" * 16}, **access({"tokens": [TOKEN_ROLE]})},
        "security.access.tokens[0].token",
        "same token as api.token",
    ),
]


@pytest.mark.parametrize(("data", "path", "fragment"), BAD_INPUTS, ids=[c[1] for c in BAD_INPUTS])
def test_bad_input_reports_path(data: object, path: str, fragment: str) -> None:
    problems = problems_of(data)
    # "..." in a fragment stands for any text in between.
    matching = [p for p in problems if p.startswith(f"{path}: ")]
    assert matching, problems
    head, _, tail = fragment.partition("...")
    assert any(head in p and tail in p for p in matching), matching


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of({"tftp": {"port": 0, "bind": "x"}, "api": {"port": 0}, "extra": 1})
    assert [p.split(":")[0] for p in problems] == ["tftp.bind", "tftp.port", "api.port", "extra"]


def test_scalar_input_is_echoed() -> None:
    assert problems_of({"tftp": {"port": 70000}}) == [
        "tftp.port: Input should be less than or equal to 65535 (got 70000)"
    ]


def test_tokens_are_never_echoed() -> None:
    secret = "hunter2-secret"
    for data in (
        {"api": {"token": secret}},
        {"multi_site": {"sync": {"token": secret}}},
        access({"tokens": [{**TOKEN_ROLE, "token": secret}]}),
    ):
        assert all(secret not in problem for problem in problems_of(data))
    roles = parse_config(access({"tokens": [TOKEN_ROLE]}))
    assert TOKEN_ROLE["token"] not in repr(roles)
    config = parse_config({"api": {"token": "a" * 32}, "multi_site": {"sync": {"token": "b" * 32}}})
    assert "a" * 32 not in repr(config)
    assert "b" * 32 not in repr(config)
    assert "a" * 32 not in json.dumps(config.summary())


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "tftp": {\n    "port": 69,\n  }\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.startswith(f"{path}: invalid JSON at line 4 column 3: ")


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: configuration file not found"


def test_unreadable_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot read configuration file")


def test_duplicate_json_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"tftp": {"port": 69, "port": 70}}')
    with pytest.raises(ConfigError, match='duplicate key "port"'):
        load_config(path)


def test_file_validation_errors_use_key_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('\ufeff{"tftp": {"port": 0}}')  # a BOM is tolerated
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["tftp.port: Input should be greater than or equal to 1 (got 0)"]


def test_config_error_is_picklable_and_joins_problems() -> None:
    error = pickle.loads(pickle.dumps(ConfigError(["a: x", "b: y"])))
    assert error.problems == ["a: x", "b: y"]
    assert str(error) == "a: x\nb: y"


def test_config_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        Config().tftp.port = 70


def test_apply_overrides() -> None:
    base = load_config(EXAMPLE)
    config = apply_overrides(
        base,
        root=Path("/tmp/boot"),
        bind="127.0.0.1",
        port=6969,
        api_bind="::1",
        api_port=9090,
        single_port=True,
    )
    assert config.tftp.root == Path("/tmp/boot")
    assert (config.tftp.bind, config.tftp.port, config.tftp.single_port) == (
        "127.0.0.1",
        6969,
        True,
    )
    assert (config.api.bind, config.api.port) == ("::1", 9090)
    assert config.clustering == base.clustering
    assert base.tftp.port == 69
    assert apply_overrides(base, port=None, root=None) == base


def test_apply_overrides_revalidates() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), port=0)
    assert info.value.problems == ["tftp.port: Input should be greater than or equal to 1 (got 0)"]
    with pytest.raises(ConfigError, match=r"^api\.bind: "):
        apply_overrides(Config(), api_bind="example.com")
    with pytest.raises(TypeError):
        apply_overrides(Config(), prot=70)


def test_peer_site_shorthand() -> None:
    config = parse_config(
        {
            "multi_site": {
                "sync": {
                    "peer_sites": [
                        "us-west:tftp.us-west.example.net:8080",
                        "ap-1:[2001:db8::1]:8080",
                        {"site_id": "eu-1", "endpoint": "10.0.0.1:8080"},
                    ]
                }
            }
        }
    )
    assert config.multi_site.sync.peer_sites == [
        PeerSite(site_id="us-west", endpoint="tftp.us-west.example.net:8080"),
        PeerSite(site_id="ap-1", endpoint="[2001:db8::1]:8080"),
        PeerSite(site_id="eu-1", endpoint="10.0.0.1:8080"),
    ]


def test_firewall_rule_covers_port() -> None:
    config = parse_config(firewall({**RULE, "ports": [69, "2379-2380"], "sources": ["::/0"]}))
    rule = config.security.network.firewall.rules[0]
    assert [rule.covers_port(p) for p in (68, 69, 70, 2378, 2379, 2380, 2381)] == [
        False,
        True,
        False,
        False,
        True,
        True,
        False,
    ]


def test_valid_values_are_accepted() -> None:
    config = parse_config(
        {
            "tftp": {"bind": "::", "timeout": 2, "port_range": {"low": 1024, "high": 1024}},
            "backup": {"schedule": "*/15 0-23/2 1,15 1-12 0-7"},
            "clustering": {"etcd_endpoints": ["etcd-1.dc1:2379", "http://[::1]:2379"]},
        }
    )
    assert config.tftp.timeout == 2.0
    assert config.backup.schedule == "*/15 0-23/2 1,15 1-12 0-7"


def test_backup_key_from_the_environment_is_enough() -> None:
    backup = {"enabled": True, "locations": ["gs://b/p"], "key_env": "SIMPLE_TFTPD_BACKUP_KEY"}
    config = parse_config({"backup": backup})
    assert config.backup.key_env == "SIMPLE_TFTPD_BACKUP_KEY" and config.backup.key_file is None
    plain = parse_config({"backup": {**backup, "key_env": None, "encryption": False}})
    assert not plain.backup.encryption


def test_summary_has_no_secrets() -> None:
    summary = load_config(EXAMPLE).summary()
    assert summary["node_id"] == "tftp-fra1-01"
    assert summary["tftp_root"] == "/srv/tftp"
    assert not any("token" in key for key in summary)
    json.dumps(summary)


# --- property tests ------------------------------------------------------------------------------

_ALL_KEYS = sorted({name for model in ConfigModel.__subclasses__() for name in model.model_fields})
_STRINGS = st.sampled_from(
    [
        "",
        "::",
        "0.0.0.0",
        "10.0.0.1/8",
        "10.0.0.0/8",
        "h:1",
        "us:h:1",
        "[::1]:1",
        "2379-2380",
        "s3://b",
        "file:///x",
        "0 */6 * * *",
        "uploads/",
        "../",
        "(",
        "\\9",
        "etcd",
        "udp",
        "a" * 20,
    ]
) | st.text(max_size=12)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | _STRINGS
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_ALL_KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=25,
)


def _check_only_config_errors(data: object) -> None:
    try:
        parse_config(data)
    except ConfigError as error:
        assert error.problems
        assert all(isinstance(p, str) and ": " in p for p in error.problems)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_ALL_KEYS) | st.text(max_size=6), _JSON, max_size=6))
def test_random_documents_only_raise_config_error(data: dict[str, Any]) -> None:
    _check_only_config_errors(data)


def _leaf_paths(value: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _leaf_paths(item, (*path, key))]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _leaf_paths(item, (*path, i))]
    return [path]


_EXAMPLE_DATA = json.loads(EXAMPLE.read_text())
_EXAMPLE_LEAVES = _leaf_paths(_EXAMPLE_DATA)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_EXAMPLE_LEAVES), _JSON), min_size=1, max_size=3))
def test_mutated_example_only_raises_config_error(
    mutations: list[tuple[tuple[str | int, ...], object]],
) -> None:
    # Mutating single leaves of a valid document reaches the deep and cross-field validators.
    data = copy.deepcopy(_EXAMPLE_DATA)
    for path, value in mutations:
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    _check_only_config_errors(data)
