"""Tests for control_api.sandbox: results by documented test cards, no card data kept."""

from __future__ import annotations

import gc
from datetime import date
from decimal import Decimal

import pytest

from control_api.cards import CardDetails
from control_api.events import BillingDetails, ErrorCode, ProcessPayment, ProviderResult
from control_api.sandbox import TEST_CARDS, TIMEOUT_CARD, SandboxProcessor

TODAY = date(2025, 6, 15)


def request(number: str, expiry: str = "1230", cvv: str = "123") -> ProcessPayment:
    return ProcessPayment(
        "pay_7",
        "sandbox",
        Decimal("9.99"),
        "GBP",
        BillingDetails("Ada"),
        CardDetails(number, expiry, cvv),
    )


@pytest.mark.parametrize(
    ("number", "outcome", "code"),
    [
        ("4111111111111111", "approved", None),
        ("5555555555554444", "approved", None),
        ("6011111111111117", "approved", None),
        ("4000000000000002", "declined", ErrorCode.CARD_DECLINED),
        ("4000000000009995", "declined", ErrorCode.INSUFFICIENT_FUNDS),
        ("4000000000000069", "declined", ErrorCode.CARD_EXPIRED),
        ("4000000000000119", "error", ErrorCode.PROCESSING_ERROR),
        ("4111111111111112", "declined", ErrorCode.INVALID_CARD),  # Luhn
    ],
)
def test_results_by_test_card(number: str, outcome: str, code: ErrorCode | None) -> None:
    assert SandboxProcessor().authorise(request(number), TODAY) == ProviderResult(
        outcome,
        code,
        "sandbox-pay_7",  # type: ignore[arg-type]
    )


def test_amex_and_validation_before_lookup() -> None:
    p = SandboxProcessor()
    assert p.authorise(request("378282246310005", cvv="1234"), TODAY).outcome == "approved"  # type: ignore[union-attr]
    bad_cvv = p.authorise(request("378282246310005", cvv="123"), TODAY)
    assert bad_cvv is not None and bad_cvv.code is ErrorCode.INVALID_CARD
    expired = p.authorise(request("4000000000000002", expiry="0120"), TODAY)
    assert expired is not None and expired.code is ErrorCode.INVALID_CARD


def test_timeout_card_never_answers() -> None:
    assert SandboxProcessor().authorise(request(TIMEOUT_CARD), TODAY) is None
    assert TIMEOUT_CARD not in TEST_CARDS


def test_keeps_no_card_data() -> None:
    p = SandboxProcessor()
    req = request("4111111111111111")
    result = p.authorise(req, TODAY)
    assert not hasattr(p, "__dict__") and type(p).__slots__ == ()
    assert "4111" not in repr(result) and "4111" not in repr(req)
    card = req.card
    del req
    gc.collect()
    holders = [r for r in gc.get_referrers(card) if r is not globals()]
    assert all(not isinstance(h, (SandboxProcessor, ProviderResult)) for h in holders)
