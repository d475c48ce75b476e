"""Tests for the payments: keys the control API added to control_api.profiles: accounts'
numbers (which calls an account sees), api.listen and storage.path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from control_api.profiles import (
    DEFAULT_API_LISTEN,
    DEFAULT_STORAGE_PATH,
    PaymentsConfig,
    default_payments,
    load_payments,
    parse_payments,
)
from sipproxy.config import ConfigError, HostPort

REPO = Path(__file__).resolve().parents[2]
ENV = {
    "DTMFMASK_DEMO_AGENT_TOKEN": "a" * 40,
    "DTMFMASK_DEMO_ADMIN_TOKEN": "b" * 40,
    "DTMFMASK_LINK_SECRET": "l" * 40,
}

ACCOUNTS = """
payments:
  accounts:
    acme:
      payments: true
      numbers: ['0800100*', '0800*', '+441234567890']
    other:
      payments: true
      numbers: ['08001002*', '*']
    none:
      payments: true
"""


def parse(text: str) -> PaymentsConfig:
    return parse_payments(textwrap.dedent(text).lstrip("\n"), filename="profiles.yaml", env={})


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value).splitlines()


def test_numbers_pick_the_best_account() -> None:
    cfg = parse(ACCOUNTS)
    assert cfg.accounts["acme"].numbers == ("0800100*", "0800*", "+441234567890")
    assert cfg.accounts["none"].numbers == ()
    assert cfg.account_for_number("+441234567890") == "acme"  # exact beats '*'
    assert cfg.account_for_number("0800100999") == "acme"  # 0800100* over '*'
    assert cfg.account_for_number("0800100200") == "other"  # longer prefix 08001002*
    assert cfg.account_for_number("0800555") == "acme"
    assert cfg.account_for_number("12345") == "other"  # '*' catches the rest
    one = parse(ACCOUNTS.replace("'08001002*', '*'", "'0900*'"))
    assert one.account_for_number("12345") is None  # nobody's call
    assert default_payments().account_for_number("0800") is None


@pytest.mark.parametrize(
    ("numbers", "expected"),
    [
        ("[800100]", "write numbers in quotes"),
        ("['08 00']", "must be a dialled number"),
        ("['0800**']", "must be a dialled number"),
        ("['0800', '0800']", "'0800' is listed twice"),
        ("[true]", "must be a dialled number"),
        ("'0800'", "must be a list of dialled numbers"),
    ],
)
def test_number_errors(numbers: str, expected: str) -> None:
    text = ACCOUNTS.replace("['0800100*', '0800*', '+441234567890']", numbers)
    found = errors(text)
    assert any(expected in e and "payments.accounts.acme.numbers" in e for e in found), found


def test_a_number_belongs_to_one_account() -> None:
    text = ACCOUNTS.replace("'08001002*'", "'0800*'")
    (err,) = errors(text)
    assert "payments.accounts.other.numbers" in err and "also belongs to account acme" in err


def test_api_listen_and_storage_path() -> None:
    cfg = parse("payments: {}\n")
    assert cfg.api.listen == DEFAULT_API_LISTEN == HostPort("127.0.0.1", 8080)
    assert cfg.storage.path == DEFAULT_STORAGE_PATH
    cfg = parse(
        "payments:\n  api: {listen: '[::1]:0'}\n  storage: {path: /var/lib/dtmfmask/pay.db}\n"
    )
    assert cfg.api.listen == HostPort("::1", 0)
    assert cfg.storage.path == "/var/lib/dtmfmask/pay.db"
    for bad in ("localhost:8080", "127.0.0.1", "127.0.0.1:70000", "::1:80", "[1.2.3.4]:80"):
        (err,) = errors(f"payments:\n  api: {{listen: '{bad}'}}\n")
        assert "payments.api.listen: must be an IP host:port" in err, err
    (err,) = errors("payments:\n  api: {port: 80}\n")
    assert "payments.api.port: unknown key" in err
    (err,) = errors("payments:\n  storage: {path: 'db/'}\n")
    assert "payments.storage.path: must name a file" in err
    (err,) = errors("payments:\n  storage: {path: 5}\n")
    assert "payments.storage.path" in err


def test_relative_storage_path_is_read_from_the_files_directory(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "profiles.yaml"
    conf.parent.mkdir()
    conf.write_text("payments:\n  storage: {path: data/pay.sqlite3}\n")
    assert load_payments(conf).storage.path == str(tmp_path / "etc" / "data" / "pay.sqlite3")
    conf.write_text("payments:\n  storage: {path: ':memory:'}\n")
    assert load_payments(conf).storage.path == ":memory:"


def test_example_file_documents_the_keys() -> None:
    cfg = load_payments(REPO / "profiles.yaml", env=ENV)
    assert cfg.api.listen == HostPort("127.0.0.1", 8080)
    assert cfg.storage.path == str(REPO / "dtmfmask.sqlite3")
    assert cfg.account_for_number("1000") == "demo"
