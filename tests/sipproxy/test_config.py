"""Tests for sipproxy.config: every key's validation, error positions, hostile YAML."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipproxy.config import (
    MAX_FILE_SIZE,
    Config,
    ConfigError,
    HostPort,
    default_config,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def errors(text: str, filename: str = "profiles.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(yaml_text(text), filename=filename)
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems)
    return lines


def one_error(text: str) -> str:
    found = errors(text)
    assert len(found) == 1, found
    return found[0]


def section(dotted: str, value: str) -> str:
    """A proxy file setting one key: section('media.port_min', '7001')."""
    parts = dotted.split(".")
    lines = ["proxy:"]
    for depth, part in enumerate(parts[:-1], start=1):
        lines.append("  " * depth + part + ":")
    lines.append("  " * len(parts) + f"{parts[-1]}: {value}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ defaults, example


def test_embedded_default_is_valid_loopback_demo() -> None:
    cfg = load_config(None)
    assert cfg == default_config() == Config()
    assert cfg.sip.listen == "127.0.0.1"
    assert cfg.upstream.pbx == HostPort("127.0.0.1", 5070)
    assert cfg.trunks.allows("127.0.0.1") and cfg.trunks.allows("::1")
    assert not cfg.trunks.allows("192.0.2.1")
    assert cfg.media.max_calls >= 1
    assert cfg.masking.mask == "always"
    # the default survives its own validation (written out key by key)
    text = f"""
    proxy:
      sip: {{listen: {cfg.sip.listen}, udp_port: {cfg.sip.udp_port}, tcp_port: {cfg.sip.tcp_port},
            max_message_size: {cfg.sip.max_message_size}}}
      media: {{address: {cfg.media.address}, port_min: {cfg.media.port_min},
              port_max: {cfg.media.port_max}, timeout_s: {cfg.media.timeout_s},
              codec_fallback: {cfg.media.codec_fallback}}}
      upstream: {{pbx: "{cfg.upstream.pbx}", transport: {cfg.upstream.transport}}}
      trunks: {{allow: [{", ".join(f"'{n}'" for n in cfg.trunks.allow)}]}}
      masking: {{style: {cfg.masking.style}, lookahead_ms: {cfg.masking.lookahead_ms},
                tone_hz: {cfg.masking.tone_hz}, tone_level_dbm0: {cfg.masking.tone_level_dbm0},
                mask: {cfg.masking.mask}}}
      metrics: {{listen: "{cfg.metrics.listen}"}}
      drain_grace_s: {cfg.drain_grace_s}
    """
    assert parse_config(yaml_text(text), filename="x") == Config(source="x")


def test_masking_defaults_are_the_engines() -> None:
    from dtmfmask.masker import MaskConfig

    engine, ours = MaskConfig(), Config().masking
    assert (ours.style, ours.lookahead_ms, ours.tone_hz, ours.tone_level_dbm0) == (
        engine.style,
        engine.lookahead_ms,
        engine.tone_hz,
        engine.tone_level_dbm0,
    )


def test_example_file_loads_and_documents_every_key() -> None:
    path = REPO / "profiles.yaml"
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert cfg == Config(source=str(path))  # the example shows the defaults
    lines = path.read_text().splitlines()
    keys = [
        i
        for i, line in enumerate(lines)
        if line.startswith("  ") and ":" in line and not line.lstrip().startswith(("#", "-"))
    ]
    for i in keys:
        line = lines[i]
        if line.rstrip().endswith(":"):
            continue  # a section header
        assert lines[i - 1].lstrip().startswith("#"), f"no comment above: {line.strip()}"
    assert "PAYMENT PROFILES" in path.read_text()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "other: {x: 1}\n", "proxy:\n"])
def test_empty_or_no_proxy_section_gives_defaults(text: str) -> None:
    assert parse_config(text, filename="f") == Config(source="f")


def test_unknown_top_level_sections_are_ignored() -> None:
    cfg = parse_config(
        yaml_text("""
        payment_profiles:
          default: {anything: [1, 2, {deep: true}], unknown_key: 3}
        proxy:
          drain_grace_s: 5
    """)
    )
    assert cfg.drain_grace_s == 5.0


def test_partial_sections_keep_other_defaults() -> None:
    cfg = parse_config(section("media.port_min", "30500"))
    assert cfg.media.port_min == 30500
    assert cfg.media.port_max == Config().media.port_max
    assert cfg.sip == Config().sip


# ------------------------------------------------------------------------- every key: good


@pytest.mark.parametrize(
    ("dotted", "value", "get", "expected"),
    [
        ("sip.listen", "0.0.0.0", lambda c: c.sip.listen, "0.0.0.0"),
        ("sip.listen", "'::'", lambda c: c.sip.listen, "::"),
        ("sip.listen", "'2001:db8::1'", lambda c: c.sip.listen, "2001:db8::1"),
        ("sip.udp_port", "5080", lambda c: c.sip.udp_port, 5080),
        ("sip.udp_port", "0", lambda c: c.sip.udp_port, 0),
        ("sip.tcp_port", "5061", lambda c: c.sip.tcp_port, 5061),
        ("sip.max_message_size", "2048", lambda c: c.sip.max_message_size, 2048),
        ("sip.max_message_size", "1048576", lambda c: c.sip.max_message_size, 1 << 20),
        ("media.address", "192.0.2.10", lambda c: c.media.address, "192.0.2.10"),
        ("media.port_min", "5062", lambda c: c.media.port_min, 5062),
        ("media.port_max", "65534", lambda c: c.media.port_max, 65534),
        ("media.timeout_s", "1", lambda c: c.media.timeout_s, 1.0),
        ("media.timeout_s", "2.5", lambda c: c.media.timeout_s, 2.5),
        ("media.timeout_s", "1.0e+3", lambda c: c.media.timeout_s, 1000.0),
        ("media.codec_fallback", "rfc4733_only", lambda c: c.media.codec_fallback, "rfc4733_only"),
        (
            "upstream.pbx",
            "pbx.example.com:5060",
            lambda c: c.upstream.pbx,
            HostPort("pbx.example.com", 5060),
        ),
        (
            "upstream.pbx",
            "'[2001:db8::5]:5070'",
            lambda c: c.upstream.pbx,
            HostPort("2001:db8::5", 5070),
        ),
        ("upstream.pbx", "10.0.0.1:5060", lambda c: str(c.upstream.pbx), "10.0.0.1:5060"),
        ("upstream.transport", "tcp", lambda c: c.upstream.transport, "tcp"),
        (
            "trunks.allow",
            "[192.0.2.10, 198.51.100.0/24, '2001:db8::/32']",
            lambda c: [str(n) for n in c.trunks.allow],
            ["192.0.2.10/32", "198.51.100.0/24", "2001:db8::/32"],
        ),
        ("masking.style", "silence", lambda c: c.masking.style, "silence"),
        ("masking.style", "noise", lambda c: c.masking.style, "noise"),
        ("masking.lookahead_ms", "30", lambda c: c.masking.lookahead_ms, 30.0),
        ("masking.tone_hz", "440.5", lambda c: c.masking.tone_hz, 440.5),
        ("masking.tone_level_dbm0", "-60", lambda c: c.masking.tone_level_dbm0, -60.0),
        ("masking.tone_level_dbm0", "3", lambda c: c.masking.tone_level_dbm0, 3.0),
        ("masking.mask", "during_payment", lambda c: c.masking.mask, "during_payment"),
        ("metrics.listen", "'[::1]:9100'", lambda c: c.metrics.listen, HostPort("::1", 9100)),
        ("metrics.listen", "127.0.0.1:0", lambda c: c.metrics.listen, HostPort("127.0.0.1", 0)),
        ("metrics.listen", "null", lambda c: c.metrics.listen, None),
        ("drain_grace_s", "0", lambda c: c.drain_grace_s, 0.0),
    ],
)
def test_each_key_accepts(dotted, value, get, expected) -> None:
    assert get(parse_config(section(dotted, value))) == expected


def test_trunks_allows_matches_networks_and_mapped_addresses() -> None:
    cfg = parse_config(section("trunks.allow", "[198.51.100.0/24, '2001:db8::/32']"))
    assert cfg.trunks.allows("198.51.100.77")
    assert cfg.trunks.allows("::ffff:198.51.100.77")
    assert cfg.trunks.allows("2001:db8::1")
    assert not cfg.trunks.allows("198.51.101.1")
    assert not cfg.trunks.allows("not an address")
    assert all(
        isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) for n in cfg.trunks.allow
    )


def test_media_port_range_properties() -> None:
    cfg = parse_config(
        yaml_text("""
        proxy:
          media: {port_min: 40000, port_max: 40004}
    """)
    )
    assert list(cfg.media.rtp_ports) == [40000, 40002, 40004]
    assert cfg.media.max_calls == 1


# -------------------------------------------------------------------------- every key: bad

BAD = [
    ("sip.listen", "localhost", "must be an IP address to bind", "'localhost'"),
    ("sip.listen", "5060", "must be an IP address to bind", "5060"),
    ("sip.listen", "[a, b]", "must be an IP address to bind", "a list"),
    ("sip.udp_port", "70000", "must be a port 0-65535", "70000"),
    ("sip.udp_port", "-1", "must be a port 0-65535", "-1"),
    ("sip.udp_port", "'5060'", "must be a port 0-65535", "'5060'"),
    ("sip.udp_port", "5060.0", "must be a port 0-65535", "5060.0"),
    ("sip.udp_port", "true", "must be a port 0-65535", "true"),
    ("sip.tcp_port", "65536", "must be a port 0-65535", "65536"),
    ("sip.tcp_port", "{a: 1}", "must be a port 0-65535", "a mapping"),
    ("sip.max_message_size", "1000", "must be an integer 2048-1048576", "1000"),
    ("sip.max_message_size", "2000000", "must be an integer 2048-1048576", "2000000"),
    ("media.address", "0.0.0.0", "must be a specific IP address", "'0.0.0.0'"),
    ("media.address", "'::'", "must be a specific IP address", "'::'"),
    ("media.address", "media.example.com", "must be a specific IP address", "'media.example"),
    ("media.port_min", "7001", "must be an even port 1024-65534", "7001"),
    ("media.port_min", "1022", "must be an even port 1024-65534", "1022"),
    ("media.port_max", "65535", "must be an even port 1024-65534", "65535"),
    ("media.port_max", "65536", "must be an even port 1024-65534", "65536"),
    ("media.port_max", "null", "must be an even port 1024-65534", "null"),
    ("media.timeout_s", "0", "must be a number of seconds 1-86400", "0"),
    ("media.timeout_s", "100000", "must be a number of seconds 1-86400", "100000"),
    ("media.timeout_s", ".nan", "must be a number of seconds 1-86400", "nan"),
    ("media.timeout_s", ".inf", "must be a number of seconds 1-86400", "inf"),
    ("media.timeout_s", "1e3", "must be a number of seconds 1-86400", "write a plain number"),
    ("media.timeout_s", "sixty", "must be a number of seconds 1-86400", "'sixty'"),
    ("media.codec_fallback", "transcode", "must be one of reject, rfc4733_only", "'transcode'"),
    ("upstream.pbx", "pbx.example.com", "must be host:port", "'pbx.example.com'"),
    ("upstream.pbx", "'pbx:0'", "must be host:port", "'pbx:0'"),
    ("upstream.pbx", "'pbx:99999'", "must be host:port", "'pbx:99999'"),
    ("upstream.pbx", "'2001:db8::5:5060'", "must be host:port", "'2001:db8::5:5060'"),
    ("upstream.pbx", "'bad_host!:5060'", "must be host:port", "'bad_host!:5060'"),
    ("upstream.pbx", "'[10.0.0.1]:5060'", "must be host:port", "'[10.0.0.1]:5060'"),
    ("upstream.pbx", "'1.2.3:5060'", "must be host:port", "'1.2.3:5060'"),
    ("upstream.pbx", "5060", "must be host:port", "5060"),
    ("upstream.pbx", "null", "must be host:port", "null"),
    ("upstream.transport", "tls", "must be one of udp, tcp", "'tls'"),
    ("upstream.transport", "UDP", "must be one of udp, tcp", "'UDP'"),
    ("trunks.allow", "192.0.2.1", "must be a list of IP addresses or CIDRs", "a string"),
    ("trunks.allow", "[]", "must list at least one", "[] (which would refuse every call)"),
    ("trunks.allow", "[10.0.0.1/24]", "must be an IP address or CIDR", "did you mean 10.0.0.0/24"),
    ("trunks.allow", "[example.com]", "must be an IP address or CIDR", "'example.com'"),
    ("trunks.allow", "[[1, 2]]", "must be an IP address or CIDR", "a list"),
    ("masking.style", "beep", "must be one of tone, silence, noise", "'beep'"),
    ("masking.lookahead_ms", "10", "must be a number of ms 15-500", "10"),
    ("masking.lookahead_ms", "501", "must be a number of ms 15-500", "501"),
    ("masking.tone_hz", "20", "must be a frequency in Hz 50-3900", "20"),
    ("masking.tone_hz", "4000", "must be a frequency in Hz 50-3900", "4000"),
    ("masking.tone_level_dbm0", "6", "must be a level in dBm0 from -60 to 3", "6"),
    ("masking.tone_level_dbm0", "-61", "must be a level in dBm0 from -60 to 3", "-61"),
    ("masking.mask", "never", "must be one of always, during_payment", "'never'"),
    ("masking.mask", "true", "must be one of always, during_payment", "true"),
    ("metrics.listen", "9464", "must be host:port with an IP address", "9464"),
    (
        "metrics.listen",
        "localhost:9464",
        "must be host:port with an IP address",
        "'localhost:9464'",
    ),
    ("drain_grace_s", "-1", "must be a number of seconds 0-86400", "-1"),
    ("drain_grace_s", "'30'", "must be a number of seconds 0-86400", "'30'"),
]


@pytest.mark.parametrize(("dotted", "value", "rule", "got"), BAD)
def test_each_key_rejects_with_position_key_rule_and_value(dotted, value, rule, got) -> None:
    text = section(dotted, value)
    error = one_error(text)
    depth = dotted.count(".") + 1
    line = depth + 1  # 'proxy:' is line 1, one line per section level
    key = dotted.rsplit(".", 1)[-1]
    column = 2 * depth + len(key) + 3  # the value's first character
    if dotted == "trunks.allow" and value.startswith("[") and value != "[]":  # first item
        column, dotted = column + 1, dotted + "[0]"
    assert error.startswith(f"profiles.yaml:{line}:{column}: proxy.{dotted}: "), error
    assert rule in error
    assert "got " in error and got in error.split("got ", 1)[1], error


def test_example_error_message_shape() -> None:
    text = "# comment\n" * 9 + "proxy:\n  media:\n    port_min: 7001\n"
    assert one_error(text) == (
        "profiles.yaml:12:15: proxy.media.port_min: must be an even port 1024-65534, got 7001"
    )


def test_port_range_too_small_for_one_call() -> None:
    error = one_error("""
        proxy:
          media:
            port_min: 40000
            port_max: 40002
    """)
    assert error.startswith("profiles.yaml:4:15: proxy.media.port_max: must be at least port_min")
    assert "one call takes 6 ports" in error


def test_port_range_reversed() -> None:
    error = one_error("""
        proxy:
          media: {port_min: 50000, port_max: 40000}
    """)
    assert "proxy.media.port_max: must be at least port_min + 4" in error
    assert "port_min 50000, port_max 40000" in error


def test_invalid_port_min_does_not_also_report_range() -> None:
    assert len(errors("proxy:\n  media: {port_min: 7001, port_max: 7002}\n")) == 1


def test_sip_port_inside_media_range_on_same_address() -> None:
    error = one_error("""
        proxy:
          sip: {udp_port: 30010}
    """)
    assert "proxy.sip.udp_port: must lie outside the media ports 30000-30999" in error
    # another address: no clash
    parse_config(
        "proxy:\n  sip: {udp_port: 30010, listen: 10.0.0.1}\n  media: {address: 10.0.0.2}\n"
    )


def test_metrics_port_clash_with_sip_tcp() -> None:
    error = one_error("proxy:\n  metrics: {listen: '127.0.0.1:5060'}\n")
    assert "proxy.metrics.listen: must not use proxy.sip.tcp_port 5060" in error


# ------------------------------------------------------------------------ unknown, duplicates


def test_unknown_keys_inside_proxy_are_rejected_with_suggestion() -> None:
    found = errors("""
        proxy:
          sip:
            listen: 127.0.0.1
            udp_prot: 5060
          medai: {}
          debug: true
    """)
    assert found == [
        "profiles.yaml:4:5: proxy.sip.udp_prot: unknown key (did you mean udp_port?); "
        "allowed: listen, udp_port, tcp_port, max_message_size",
        "profiles.yaml:5:3: proxy.medai: unknown key (did you mean media?); allowed: sip, "
        "media, upstream, trunks, masking, metrics, drain_grace_s",
        "profiles.yaml:6:3: proxy.debug: unknown key; allowed: sip, media, upstream, trunks, "
        "masking, metrics, drain_grace_s",
    ]


def test_non_string_keys_and_merge_keys_inside_proxy() -> None:
    found = errors("""
        base: &base {listen: 10.0.0.1}
        proxy:
          sip:
            <<: *base
            5060: udp
    """)
    assert any("proxy.sip: merge keys (<<) are not supported" in e for e in found)
    assert any("proxy.sip: keys must be names, got an integer" in e for e in found)


def test_duplicate_keys_anywhere_name_both_lines() -> None:
    found = errors("""
        proxy:
          media:
            port_min: 40000
            port_min: 40002
        payments:
          a: 1
          a: 2
        proxy:
          drain_grace_s: 1
    """)
    assert "profiles.yaml:4:5: proxy.media.port_min: duplicate key (first at line 3)" in found
    assert "profiles.yaml:7:3: payments.a: duplicate key (first at line 6)" in found
    assert "profiles.yaml:8:1: proxy: duplicate key (first at line 1)" in found


def test_section_of_wrong_type() -> None:
    error = one_error("proxy:\n  media: [1, 2]\n")
    assert error.startswith("profiles.yaml:2:10: proxy.media: must be a mapping of address,")
    assert error.endswith("got a list")
    error = one_error("proxy: 5\n")
    assert error.startswith("profiles.yaml:1:8: proxy: must be a mapping")


def test_many_problems_reported_together_in_file_order() -> None:
    found = errors("""
        proxy:
          sip: {udp_port: x, tcp_port: y}
          media: {port_min: 7001, timeout_s: 0}
          masking: {style: loud}
          upstream: {transport: sctp}
    """)
    assert [e.split(": ")[1] for e in found] == [
        "proxy.sip.udp_port",
        "proxy.sip.tcp_port",
        "proxy.media.port_min",
        "proxy.media.timeout_s",
        "proxy.masking.style",
        "proxy.upstream.transport",
    ]
    lines = [int(e.split(":")[1]) for e in found]
    assert lines == sorted(lines)


def test_problems_are_structured() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(section("media.port_min", "7001"), filename="p.yaml")
    (p,) = info.value.problems
    assert (p.file, p.line, p.column, p.key) == ("p.yaml", 3, 15, "proxy.media.port_min")
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------- hostile input


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("proxy:\n  media:\n    port_min: 7001\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3:15: proxy\.media\.port_min"):
        load_config(bad)


def test_huge_file_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"a: " + b"x" * MAX_FILE_SIZE + b"\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)
    with pytest.raises(ConfigError, match="larger than"):
        parse_config("#" * (MAX_FILE_SIZE + 1))


def test_alias_bomb_is_cheap_and_harmless() -> None:
    # billion laughs: 9^9 strings if expanded; composing keeps it at a few dozen nodes
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        levels.append(f"a{i}: &a{i} [{refs}]")
    bomb = "\n".join(levels) + "\n"
    assert parse_config(bomb + "proxy: {drain_grace_s: 3}\n").drain_grace_s == 3.0
    # the bomb used where the proxy wants values: a clean error, no expansion
    found = errors(bomb + "proxy:\n  trunks: {allow: *a9}\n")
    assert len(found) == 9
    assert "proxy.trunks.allow[8]: must be an IP address or CIDR, got a list" in found[-1]
    error = one_error(bomb + "proxy:\n  sip: *a9\n")
    assert "proxy.sip: must be a mapping" in error


def test_aliases_for_plain_values_work() -> None:
    cfg = parse_config(
        yaml_text("""
        hosts: {lan: &lan 10.0.0.5}
        proxy:
          sip: {listen: *lan}
          media: {address: *lan}
    """)
    )
    assert cfg.sip.listen == cfg.media.address == "10.0.0.5"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"proxy:\n  sip: {listen: \xff\xfe}\n", r"^<string>:2:17: not UTF-8 text \(byte 0xff\)"),
        (b"\x00\x01\x02\x03binary", r"^<string>:1:1: character #x0000 is not allowed"),
        (b'proxy:\n  sip: {listen: "a\x07"}\n', r"^<string>:2:19: character #x0007"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", r"^<string>:1:1: character #x007f"),
        (bytes(range(256)), "not UTF-8"),
    ],
)
def test_binary_input(data: bytes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- proxy\n- x\n", r"^<string>:1:1: the file must be a mapping .* got a list"),
        ("just a string\n", "must be a mapping with a proxy: section, got a string"),
        ("42\n", "got an integer"),
        ("proxy: {a: 1}\n---\nproxy: {}\n", r"<string>:2:1: YAML syntax: expected a single"),
        ("proxy:\n  sip: {listen: [}\n", r"<string>:2:\d+: YAML syntax"),
        ("proxy:\n\tsip: 1\n", r"<string>:2:1: YAML syntax"),
        ("proxy: *undefined\n", "YAML syntax.*undefined alias"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "YAML syntax|nested too deeply"),
        ("".join(" " * i + f"k{i}:\n" for i in range(1100)), "YAML syntax|nested too deeply"),
        ("x: !!python/object/apply:os.system [echo hi]\n", r"x: tag .*python/object/apply"),
        ("proxy:\n  drain_grace_s: !!python/name:os.system\n", "proxy.drain_grace_s: tag"),
        ("proxy:\n  drain_grace_s: !custom 3\n", "tag '!custom' is not allowed"),
        ("proxy:\n  drain_grace_s: !!binary aGVsbG8=\n", "must be a number of seconds"),
        ("proxy:\n  drain_grace_s: 2001-12-14\n", "must be a number of seconds"),
        ("proxy:\n  drain_grace_s: !!int x\n", r"2:18: proxy.drain_grace_s: cannot be read as"),
        ("proxy:\n  drain_grace_s: !!bool x\n", r"proxy.drain_grace_s: cannot be read as a bool"),
        ("proxy:\n  drain_grace_s: !!float x\n", r"proxy.drain_grace_s: cannot be read as a num"),
        (
            "proxy:\n  trunks: {allow: [!!binary '%']}\n",
            r"proxy.trunks.allow\[0\]: must be an IP address or CIDR, got b''",
        ),
    ],
)
def test_hostile_or_broken_yaml_is_a_clean_config_error(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_config_or_config_error(text: str) -> None:
    try:
        cfg = parse_config(text)
    except ConfigError as exc:
        assert exc.problems and str(exc)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_under_proxy_give_config_or_config_error(data: bytes) -> None:
    try:
        parse_config(b"proxy:\n  sip:\n    listen: " + data + b"\n")
    except ConfigError as exc:
        assert exc.problems


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "- " * 3000 + "x\n",
        "proxy:\n  media:\n    port_min: 7001\n",
        "x: !!python/object/apply:os.system [echo hi]\n",
        "proxy: {a: 1}\n---\nproxy: {}\n",
    ],
)
def test_pure_python_loader_also_gives_clean_errors(monkeypatch, text: str) -> None:
    import yaml

    import sipproxy.yamlreader

    monkeypatch.setattr(sipproxy.yamlreader, "_Loader", yaml.SafeLoader)
    with pytest.raises(ConfigError):
        parse_config(text)
