"""Tests for control_api.links: payment links are unguessable, signed, bound to one session,
expiring, single use, stored hashed, and every refusal looks the same from outside."""

from __future__ import annotations

import hashlib
import hmac
import re
from itertools import count
from pathlib import Path

import pytest

from control_api import links as links_module
from control_api.links import LINK_ERROR_CODES, LinkError, LinkService, PageView
from control_api.storage import Storage

NOW = 1_765_432_198.25
SECRET = b"s" * 32


def service(storage: Storage | None = None, secret: bytes | None = SECRET) -> LinkService:
    return LinkService(storage or Storage(":memory:", now=NOW), secret, "https://pay.example/")


def code(exc: pytest.ExceptionInfo[LinkError]) -> str:
    return exc.value.code


def test_issue_and_verify() -> None:
    links = service()
    token, url = links.issue("pay_a", 3600, NOW)
    assert url == f"https://pay.example/pay/{token}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{44}", token) and not re.search(r"\d{3}", token)
    assert links.verify(token, NOW) == "pay_a"
    assert links.verify(token, NOW + 3599) == "pay_a"
    assert links.expires_at(token, NOW) == NOW + 3600
    other, _ = links.issue("pay_a", 3600, NOW)
    assert other != token  # random: two links of one session differ


def test_stored_hashed_never_the_token() -> None:
    storage = Storage(":memory:", now=NOW)
    links = service(storage)
    token, _ = links.issue("pay_a", 3600, NOW)
    dump = repr(list(storage.dump()))
    assert token not in dump and token[:22] not in dump and token[22:] not in dump
    assert "pay_a" in dump


def test_expired() -> None:
    links = service()
    token, _ = links.issue("pay_a", 60, NOW)
    with pytest.raises(LinkError) as info:
        links.verify(token, NOW + 60)
    assert code(info) == "expired"


def test_single_use() -> None:
    links = service()
    token, _ = links.issue("pay_a", 60, NOW)
    assert links.use(token, NOW) == "pay_a"
    with pytest.raises(LinkError) as info:
        links.use(token, NOW)
    assert code(info) == "used"
    with pytest.raises(LinkError) as info:
        links.verify(token, NOW)
    assert code(info) == "used"


@pytest.mark.parametrize("position", [0, 5, 21, 22, 30, 43])
def test_tampered_any_character(position: int) -> None:
    links = service()
    token, _ = links.issue("pay_a", 60, NOW)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    ch = alphabet[alphabet.index(token[position]) ^ 32]  # a bit that counts, even in the last
    if ch.isdigit():
        ch = alphabet[alphabet.index(token[position]) ^ 48]
    bad = token[:position] + ch + token[position + 1 :]
    with pytest.raises(LinkError) as info:
        links.verify(bad, NOW)
    # the id part changed: no such link; the MAC part changed: tampered
    assert code(info) == ("not_found" if position < 22 else "tampered")


def test_other_sessions_mac_does_not_open_this_link() -> None:
    """A valid MAC from one link glued to another link's id: refused."""
    links = service()
    a, _ = links.issue("pay_a", 60, NOW)
    b, _ = links.issue("pay_b", 60, NOW)
    with pytest.raises(LinkError) as info:
        links.verify(a[:22] + b[22:], NOW)
    assert code(info) == "tampered"
    assert links.verify(b, NOW) == "pay_b"  # each link opens only its own session


def test_other_key_refuses() -> None:
    storage = Storage(":memory:", now=NOW)
    token, _ = service(storage).issue("pay_a", 60, NOW)
    with pytest.raises(LinkError) as info:
        service(storage, b"t" * 32).verify(token, NOW)
    assert code(info) == "tampered"


def test_per_process_key_when_no_secret() -> None:
    storage = Storage(":memory:", now=NOW)
    first = service(storage, None)
    token, _ = first.issue("pay_a", 60, NOW)
    assert first.verify(token, NOW) == "pay_a"
    with pytest.raises(LinkError):
        service(storage, None).verify(token, NOW)  # a "restarted" process: a new key
    with pytest.raises(ValueError):
        service(storage, b"short")


def test_revoke() -> None:
    links = service()
    a, _ = links.issue("pay_a", 60, NOW)
    links.use(a, NOW)
    b, _ = links.issue("pay_a", 60, NOW)
    c, _ = links.issue("pay_c", 60, NOW)
    assert links.revoke("pay_a", NOW) == 1  # b only: a was used
    with pytest.raises(LinkError) as info:
        links.verify(b, NOW)
    assert code(info) == "expired"
    assert links.verify(c, NOW) == "pay_c"


@pytest.mark.parametrize(
    "token",
    ["", "x", "A" * 43, "A" * 45, "A" * 43 + "=", "A" * 43 + "/", "é" * 44, "A" * 10_000],
)
def test_malformed_is_not_found(token: str) -> None:
    with pytest.raises(LinkError) as info:
        service().verify(token, NOW)
    assert code(info) == "not_found"


def test_no_oracle_every_refusal_says_the_same() -> None:
    messages = {str(LinkError(c)) for c in LINK_ERROR_CODES}  # type: ignore[arg-type]
    assert messages == {"This payment link is not valid"}
    assert repr(LinkError("used")) == "LinkError('used')"
    with pytest.raises(ValueError):
        LinkError("nope")  # type: ignore[arg-type]


def test_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = count()
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        next(seen)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module links.py calls
    links = service()
    token, _ = links.issue("pay_a", 60, NOW)
    links.verify(token, NOW)
    with pytest.raises(LinkError):
        links.verify(token[:22] + "A" * 22, NOW)
    assert next(seen) == 2


def test_ttl_bounds() -> None:
    links = service()
    with pytest.raises(ValueError):
        links.issue("pay_a", 0, NOW)
    with pytest.raises(ValueError):
        links.issue("pay_a", 72 * 3600 + 1, NOW)
    token, _ = links.issue("pay_a", 72 * 3600, NOW)
    assert links.verify(token, NOW + 72 * 3600 - 1) == "pay_a"


def test_links_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "pay.sqlite3"
    storage = Storage(db, now=NOW)
    token, _ = service(storage).issue("pay_a", 3600, NOW)
    storage.close()
    again = Storage(db, now=NOW + 10)
    assert service(again).verify(token, NOW + 10) == "pay_a"
    row = again.link(links_module.id_hash(links_module._unb64(token[:22])))
    assert row is not None and row.session_id == "pay_a"
    assert row.id_hash == hashlib.sha256(links_module._unb64(token[:22])).hexdigest().translate(
        str.maketrans("0123456789", "ghijklmnop")
    )


def test_page_view_to_dict() -> None:
    view = PageView("pay_a", "Acme", "Bill", "12.50", "GBP", ("card_number", "cvv"), "link_sent")
    assert view.to_dict() == {
        "session_id": "pay_a",
        "merchant": "Acme",
        "purpose": "Bill",
        "amount": "12.50",
        "currency": "GBP",
        "fields": ["card_number", "cvv"],
        "state": "link_sent",
        "result": None,
        "error": None,
        "brand_hint": None,
    }
