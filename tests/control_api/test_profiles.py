"""Tests for control_api.profiles: the payments: section, every key, positions, tokens."""

from __future__ import annotations

import io
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from control_api.events import FieldName
from control_api.profiles import (
    DEFAULT_FIELDS,
    PaymentsConfig,
    default_payments,
    hash_token,
    load_payments,
    main,
    parse_payments,
)
from sipproxy.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
AGENT = "agent-token-" + "a" * 32
ADMIN = "admin-token-" + "b" * 32
ENV = {
    "DTMFMASK_DEMO_AGENT_TOKEN": AGENT,
    "DTMFMASK_DEMO_ADMIN_TOKEN": ADMIN,
    "DTMFMASK_LINK_SECRET": "l" * 40,
}

BASE = """
payments:
  accounts:
    acme:
      payments: true
      tokens:
        - {role: agent, env: ACME_AGENT}
        - {role: admin, sha256: ADMIN_HASH}
    closed:
      payments: false
  providers:
    sandbox: {type: sandbox}
  profiles:
    card:
      account: acme
      provider: sandbox
      currency: GBP
      min_amount: 1.00
      max_amount: 500.00
""".replace("ADMIN_HASH", hash_token(ADMIN))


def parse(text: str, env: dict[str, str] | None = None) -> PaymentsConfig:
    return parse_payments(
        textwrap.dedent(text).lstrip("\n"),
        filename="profiles.yaml",
        env=env or {"ACME_AGENT": AGENT},
    )


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return str(info.value).splitlines()


def one_error(text: str, env: dict[str, str] | None = None) -> str:
    found = errors(text, env)
    assert len(found) == 1, found
    return found[0]


def with_profile(extra: str) -> str:
    """BASE with one more key line under profiles.card."""
    return BASE + "      " + extra + "\n"


# ------------------------------------------------------------------------------- example


def test_example_file_loads_and_proxy_still_reads_it() -> None:
    cfg = load_payments(REPO / "profiles.yaml", env=ENV)
    assert cfg.source.endswith("profiles.yaml")
    assert cfg.authenticate(AGENT).account == "demo"  # type: ignore[union-attr]
    assert cfg.authenticate(ADMIN).role == "admin"  # type: ignore[union-attr]
    guided, link = cfg.profiles_for("demo")
    assert link.method == "self_service" and link.link_ttl_s == 86400
    profile = guided
    assert profile.method == "guided" and profile.currency == "GBP"
    assert profile.min_amount == Decimal("1.00") and str(profile.max_amount) == "5000.00"
    assert profile.fields[-1] is FieldName.POSTAL_CODE
    assert cfg.providers["sandbox"].sip_uri.startswith("sip:")
    load_config(REPO / "profiles.yaml")  # the proxy ignores payments:


def test_example_file_without_env_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_payments(REPO / "profiles.yaml", env={})
    text = str(info.value)
    assert "DTMFMASK_DEMO_AGENT_TOKEN is not set" in text
    assert "payments.accounts.demo.tokens[0].env" in text


def test_defaults() -> None:
    assert load_payments(None) == default_payments()
    cfg = parse("proxy: {}\n")
    assert cfg.accounts == {} and set(cfg.providers) == {"sandbox"}
    cfg = parse(BASE)
    p = cfg.profiles["card"]
    assert p.method == "guided" and p.fields == DEFAULT_FIELDS and p.masking == "tone"
    assert p.show_last_four and p.hold_timeout_s == 300 and p.capture_timeout_s == 120


# ---------------------------------------------------------------------------------- tokens


def test_tokens_store_hashes_only() -> None:
    cfg = parse(BASE)
    assert cfg.authenticate(AGENT) is not None
    assert cfg.authenticate("nope" * 10) is None
    assert AGENT not in repr(cfg) and hash_token(AGENT) not in repr(cfg)
    for account in cfg.accounts.values():
        for token in account.tokens:
            assert token.sha256 != AGENT


def test_disabled_account_has_no_profiles() -> None:
    cfg = parse(BASE.replace("account: acme", "account: closed"))
    assert cfg.profiles_for("closed") == ()
    assert cfg.profiles_for("acme") == ()
    assert cfg.profiles_for("unknown") == ()
    assert parse(BASE).profiles_for("acme")[0].name == "card"


@pytest.mark.parametrize(
    ("token_line", "expected"),
    [
        ("- {role: agent, token: hunter2}", "tokens[2].token: tokens are never written"),
        ("- {role: agent}", "tokens[2]: give exactly one of env: or sha256:"),
        ("- {role: agent, env: A, sha256: b}", "give exactly one of env: or sha256:"),
        ("- {role: boss, env: ACME_AGENT2}", "tokens[2].role: must be one of agent, admin"),
        ("- {env: ACME_AGENT2}", "tokens[2].role: required key is missing"),
        ("- {role: agent, env: UNSET_VAR}", "environment variable UNSET_VAR is not set"),
        ("- {role: agent, env: SHORT}", "the token in SHORT is too short"),
        ("- {role: agent, env: 'bad name'}", "not a variable name"),
        ("- {role: agent, sha256: ABC}", "must be 64 lowercase hex digits"),
        ("- {role: agent, env: ACME_AGENT}", "the same token is also given for account acme"),
        ("- {role: agent, env: ACME_AGENT, roles: x}", "unknown key (did you mean role?)"),
    ],
)
def test_token_errors(token_line: str, expected: str) -> None:
    # the new token goes third, after the agent and admin tokens
    text = BASE.replace("    closed:", f"        {token_line}\n    closed:", 1)
    found = errors(text, {"ACME_AGENT": AGENT, "SHORT": "x" * 10, "ACME_AGENT2": "c" * 40})
    assert any(expected in line for line in found), found
    assert all(AGENT not in line for line in found)


def test_token_error_has_line_and_key() -> None:
    text = BASE.replace("env: ACME_AGENT", "env: NOPE")
    line = one_error(text)
    assert line.startswith("profiles.yaml:6:")
    assert "payments.accounts.acme.tokens[0].env" in line


# -------------------------------------------------------------------------------- accounts


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      payments: true\n",
            "      payments: yes please\n",
            "acme.payments: must be true or false",
        ),
        ("      payments: true\n", "      name: Acme\n", "acme.payments: required key is missing"),
        (
            "      payments: true\n",
            "      payments: true\n      name: ''\n",
            "acme.name: must be a display name",
        ),
        (
            "      payments: true\n",
            "      payments: true\n      paymnets: true\n",
            "did you mean payments?",
        ),
        (
            "    closed:\n      payments: false\n",
            "    'bad id!':\n      payments: false\n",
            "ids are 1-64",
        ),
        (
            "    closed:\n      payments: false\n",
            "    closed: 3\n",
            "accounts.closed: must be a mapping",
        ),
        ("      tokens:\n", "      tokens: {}\n      x:\n", "unknown key"),
    ],
)
def test_account_errors(old: str, new: str, expected: str) -> None:
    text = BASE.replace(old, new, 1)
    assert text != BASE
    found = errors(text)
    assert any(expected in line for line in found), found


def test_yaml_11_boolean_key_is_refused() -> None:
    found = errors(BASE.replace("    closed:", "    off:"))
    assert any("payments.accounts: keys must be names, got a boolean" in x for x in found)


def test_account_name() -> None:
    cfg = parse(
        BASE.replace("      payments: true\n", "      payments: true\n      name: Acme Ltd\n")
    )
    assert cfg.accounts["acme"].name == "Acme Ltd"
    assert cfg.accounts["closed"].name == "closed"


# ------------------------------------------------------------------------------- providers


def test_provider_keys() -> None:
    cfg = parse(
        BASE.replace(
            "sandbox: {type: sandbox}",
            "sandbox: {type: sandbox, sip_uri: 'sip:pay@192.0.2.5:5060', answer_timeout_s: 5,"
            " processing_timeout_s: 90}",
        )
    )
    p = cfg.providers["sandbox"]
    assert (p.sip_uri, p.answer_timeout_s, p.processing_timeout_s) == (
        "sip:pay@192.0.2.5:5060",
        5.0,
        90.0,
    )


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("{type: stripe}", "sandbox.type: must be one of sandbox, got 'stripe'"),
        ("{}", "sandbox.type: required key is missing"),
        ("{type: sandbox, sip_uri: 'http://x'}", "sip_uri: must be a SIP URI"),
        (
            "{type: sandbox, answer_timeout_s: 0}",
            "answer_timeout_s: must be a number of seconds 1-300",
        ),
        ("{type: sandbox, processing_timeout_s: '60'}", "processing_timeout_s: must be a number"),
        ("{type: sandbox, timeout: 3}", "unknown key"),
    ],
)
def test_provider_errors(provider: str, expected: str) -> None:
    found = errors(BASE.replace("{type: sandbox}", provider))
    assert any(expected in line for line in found), found


# -------------------------------------------------------------------------------- profiles


def test_profile_keys() -> None:
    text = BASE + textwrap.indent(
        textwrap.dedent(
            """\
            method: guided
            purpose: Council tax
            destination_account: merchant-1
            fields: [card_number, expiry, cvv, postal_code]
            masking: noise
            show_last_four: false
            hold_timeout_s: 60
            capture_timeout_s: 30
            """
        ),
        "      ",
    )
    p = parse(text).profiles["card"]
    assert p.purpose == "Council tax" and p.destination_account == "merchant-1"
    assert p.fields == (*DEFAULT_FIELDS, FieldName.POSTAL_CODE)
    assert p.masking == "noise" and not p.show_last_four
    assert (p.hold_timeout_s, p.capture_timeout_s) == (60, 30)


def test_self_service_link_ttl() -> None:
    p = parse(with_profile("method: self_service\n      link_ttl_s: 3600")).profiles["card"]
    assert p.method == "self_service" and p.link_ttl_s == 3600


def test_amounts_are_exact_decimals() -> None:
    p = parse(
        BASE.replace("max_amount: 500.00", "max_amount: '0.30'").replace(
            "min_amount: 1.00", "min_amount: 0.10"
        )
    ).profiles["card"]
    assert p.min_amount == Decimal("0.10") and p.max_amount == Decimal("0.30")
    p = parse(
        BASE.replace("currency: GBP", "currency: JPY")
        .replace("1.00", "100")
        .replace("500.00", "50000")
    ).profiles["card"]
    assert p.currency == "JPY" and p.max_amount == 50000


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("method: ivr", "card.method: must be one of guided, self_service"),
        ("purpose: 12", "card.purpose: must be a short description"),
        ("destination_account: []", "card.destination_account: must be a merchant account id"),
        ("fields: [card_number, cvv, expiry]", "card.fields: must be card_number, expiry, cvv"),
        ("fields: [card_number, expiry]", "card.fields: must be card_number, expiry, cvv"),
        ("fields: [card_number, expiry, cvv, pin]", "card.fields[3]: must be one of"),
        ("fields: card_number", "card.fields: must be a list"),
        ("masking: beep", "card.masking: must be one of tone, silence, noise"),
        ("show_last_four: 1", "card.show_last_four: must be true or false"),
        ("hold_timeout_s: 5", "card.hold_timeout_s: must be a number of seconds 10-3600"),
        ("capture_timeout_s: 99999", "card.capture_timeout_s: must be a number of seconds"),
        ("link_ttl_s: 3600", "card.link_ttl_s: only for method: self_service"),
        (
            "method: self_service\n      link_ttl_s: 300000",
            "link_ttl_s: must be a number of seconds 300-259200",
        ),
        ("currencey: GBP", "unknown key (did you mean currency?)"),
    ],
)
def test_profile_errors(extra: str, expected: str) -> None:
    found = errors(with_profile(extra))
    assert any(expected in line for line in found), found


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("account: acme", "account: nobody", "card.account: unknown account 'nobody'"),
        (
            "provider: sandbox\n      currency",
            "provider: psp\n      currency",
            "unknown provider 'psp'",
        ),
        ("currency: GBP", "currency: gbp", "card.currency: must be an ISO 4217 code"),
        ("currency: GBP", "currency: POUNDS", "must be an ISO 4217 code"),
        ("min_amount: 1.00", "min_amount: 0", "min_amount: must be an amount above 0"),
        (
            "min_amount: 1.00",
            "min_amount: 1.001",
            "min_amount: must be an amount above 0, at most 2",
        ),
        ("min_amount: 1.00", "min_amount: one", "min_amount: must be an amount"),
        ("max_amount: 500.00", "max_amount: 0.50", "max_amount: must be at least min_amount"),
        ("max_amount: 500.00", "max_amount: .inf", "max_amount: must be an amount"),
        ("      min_amount: 1.00\n", "", "card.min_amount: required key is missing"),
        ("      account: acme\n", "", "card.account: required key is missing"),
    ],
)
def test_profile_reference_and_amount_errors(old: str, new: str, expected: str) -> None:
    text = BASE.replace(old, new, 1)
    assert text != BASE
    found = errors(text)
    assert any(expected in line for line in found), found


def test_every_error_at_once_with_lines() -> None:
    found = errors(
        with_profile("masking: beep\n      method: ivr").replace("env: ACME_AGENT", "env: NOPE")
    )
    assert len(found) == 3
    assert [int(line.split(":")[1]) for line in found] == sorted(
        int(line.split(":")[1]) for line in found
    )
    assert found[0].startswith("profiles.yaml:6:")


# ----------------------------------------------------------------------------- whole file


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payments: [1]\n", "payments: must be a mapping of accounts, providers, profiles"),
        ("payments: {accounts: {}, extra: 1}\n", "payments.extra: unknown key"),
        ("payments: {}\nproxy: !!python/object:os.system x\n", "is not allowed (plain YAML only)"),
        ("payments: {}\npayments: {}\n", "payments: duplicate key (first at line 1)"),
        ("payments: {accounts: {a: {payments: true}, a: {payments: true}}}\n", "duplicate key"),
        ("payments: {accounts: [\n", "YAML syntax"),
        ("- 1\n", "the file must be a mapping of sections"),
        ("payments:\n  providers:\n    <<: {type: sandbox}\n", "merge keys"),
    ],
)
def test_whole_file_errors(text: str, expected: str) -> None:
    found = errors(text)
    assert any(expected in line for line in found), found


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_payments(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"payments:\n  \xff\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2:3: not UTF-8"):
        load_payments(bad)
    with pytest.raises(ConfigError, match="larger than"):
        parse_payments("#" * (2 << 20))


def test_alias_bomb_is_cheap() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    cfg = parse(bomb + BASE)
    assert "card" in cfg.profiles


def test_hash_token_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(AGENT + "\n"))
    assert main(["hash-token"]) == 0
    assert capsys.readouterr().out.strip() == f"sha256: {hash_token(AGENT)}"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["hash-token"]) == 1
    assert main([]) == 2
