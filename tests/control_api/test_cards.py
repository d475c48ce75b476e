"""Tests for control_api.cards: brands, lengths, Luhn, expiry, CVV, postal code, masking."""

from __future__ import annotations

import pickle
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_api.cards import (
    CardBrand,
    CardDetails,
    CardError,
    CardValidationError,
    cvv_lengths,
    detect_brand,
    luhn_valid,
    mask_pan,
    possible_brands,
    validate_card,
    validate_cvv,
    validate_expiry,
    validate_pan,
    validate_postal_code,
)

TODAY = date(2025, 6, 15)


def with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


@pytest.mark.parametrize(
    ("pan", "brand"),
    [
        ("4111111111111111", CardBrand.VISA),
        ("4222222222222", CardBrand.VISA),
        ("5555555555554444", CardBrand.MASTERCARD),
        ("2221000000000009", CardBrand.MASTERCARD),
        ("2720990000000007", CardBrand.MASTERCARD),
        ("378282246310005", CardBrand.AMEX),
        ("341111111111111", CardBrand.AMEX),
        ("6011111111111117", CardBrand.DISCOVER),
        ("6445644564456445", CardBrand.DISCOVER),
        ("30569309025904", CardBrand.DINERS),
        ("36227206271667", CardBrand.DINERS),
        ("3530111333300000", CardBrand.JCB),
        ("6200000000000005", CardBrand.UNIONPAY),
        ("6759649826438453", CardBrand.MAESTRO),
        ("501800000009", CardBrand.MAESTRO),
    ],
)
def test_published_test_cards_validate(pan: str, brand: CardBrand) -> None:
    assert validate_pan(pan) is brand


@pytest.mark.parametrize(
    ("body", "brand"),
    [
        ("222099999999999", None),  # just below the Mastercard 2-series
        ("272100000000000", None),  # just above it
        ("352700000000000", None),  # just below JCB
        ("359000000000000", None),  # just above JCB
        ("306000000000000", None),  # between Diners 300-305 and 3095
        ("309500000000000", CardBrand.DINERS),
        ("643000000000000", None),  # below Discover 644
        ("810000000000000", CardBrand.UNIONPAY),
    ],
)
def test_range_edges(body: str, brand: CardBrand | None) -> None:
    pan = with_check_digit(body)
    if brand is None:
        with pytest.raises(CardValidationError) as info:
            validate_pan(pan)
        assert info.value.code is CardError.UNKNOWN_BRAND
    else:
        assert validate_pan(pan) is brand


@pytest.mark.parametrize(
    ("pan", "code"),
    [
        ("", CardError.EMPTY),
        ("4111 1111 1111 1111", CardError.NOT_DIGITS),
        ("４１１１", CardError.NOT_DIGITS),  # fullwidth digits are not card digits
        ("9111111111111111", CardError.UNKNOWN_BRAND),
        ("411111111111111", CardError.WRONG_LENGTH),  # Visa 15
        ("55555555555544", CardError.WRONG_LENGTH),  # Mastercard 14
        ("3782822463100050", CardError.WRONG_LENGTH),  # Amex 16
        ("4111111111111112", CardError.LUHN_FAILED),
    ],
)
def test_pan_errors(pan: str, code: CardError) -> None:
    with pytest.raises(CardValidationError) as info:
        validate_pan(pan)
    assert info.value.code is code
    assert info.value.field == "card_number"


def test_unionpay_needs_no_luhn() -> None:
    pan = "6200000000000005"
    bad = pan[:-1] + "6"
    assert not luhn_valid(bad)
    assert validate_pan(bad) is CardBrand.UNIONPAY


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("")
    assert not luhn_valid("12a4")


@given(st.text(alphabet="0123456789", min_size=1, max_size=18))
def test_luhn_check_digit_is_unique(body: str) -> None:
    assert sum(luhn_valid(body + d) for d in "0123456789") == 1


def test_brand_detection_while_typing() -> None:
    assert detect_brand("") is None
    assert detect_brand("4") is CardBrand.VISA
    assert detect_brand("5") is None  # Mastercard or Maestro
    assert detect_brand("51") is CardBrand.MASTERCARD
    assert detect_brand("2") is CardBrand.MASTERCARD
    assert detect_brand("20") is None
    assert detect_brand("3") is None
    assert set(possible_brands("3")) == {CardBrand.AMEX, CardBrand.DINERS, CardBrand.JCB}
    assert detect_brand("37") is CardBrand.AMEX
    assert detect_brand("35") is CardBrand.JCB
    assert detect_brand("6") is None
    assert detect_brand("601") is CardBrand.DISCOVER
    assert detect_brand("675") is CardBrand.MAESTRO
    assert detect_brand("9") is None
    assert possible_brands("9") == ()
    assert detect_brand("4x") is None


@given(st.text(alphabet="0123456789", min_size=12, max_size=19))
def test_detected_prefix_brand_agrees_with_validation(pan: str) -> None:
    try:
        brand = validate_pan(pan)
    except CardValidationError:
        return
    for n in range(1, len(pan) + 1):
        found = detect_brand(pan[:n])
        assert found in (None, brand)
        assert brand in possible_brands(pan[:n])


@pytest.mark.parametrize(
    ("mmyy", "code"),
    [
        ("0625", None),  # this month is still valid
        ("1230", None),
        ("0545", None),  # 20 years ahead, this month
        ("0745", CardError.TOO_FAR_AHEAD),
        ("0525", CardError.EXPIRED),
        ("1299", CardError.EXPIRED),  # 1999
        ("0025", CardError.BAD_MONTH),
        ("1325", CardError.BAD_MONTH),
        ("125", CardError.BAD_MONTH),
        ("12255", CardError.BAD_MONTH),
        ("12/5", CardError.NOT_DIGITS),
        ("", CardError.EMPTY),
    ],
)
def test_expiry(mmyy: str, code: CardError | None) -> None:
    if code is None:
        exp = validate_expiry(mmyy, TODAY)
        assert 1 <= exp.month <= 12 and exp.year >= TODAY.year
        assert "20" not in repr(exp) and mmyy not in str(exp)
    else:
        with pytest.raises(CardValidationError) as info:
            validate_expiry(mmyy, TODAY)
        assert info.value.code is code


def test_expiry_century_near_today() -> None:
    assert validate_expiry("0101", date(2099, 12, 1)).year == 2101


@pytest.mark.parametrize(
    ("cvv", "brand", "code"),
    [
        ("123", CardBrand.VISA, None),
        ("1234", CardBrand.AMEX, None),
        ("123", CardBrand.AMEX, CardError.WRONG_CVV_LENGTH),
        ("1234", CardBrand.MASTERCARD, CardError.WRONG_CVV_LENGTH),
        ("12", None, CardError.WRONG_CVV_LENGTH),
        ("1234", None, None),
        ("12a", CardBrand.VISA, CardError.NOT_DIGITS),
        ("", CardBrand.VISA, CardError.EMPTY),
    ],
)
def test_cvv(cvv: str, brand: CardBrand | None, code: CardError | None) -> None:
    if code is None:
        validate_cvv(cvv, brand)
    else:
        with pytest.raises(CardValidationError) as info:
            validate_cvv(cvv, brand)
        assert info.value.code is code
    assert cvv_lengths(CardBrand.AMEX) == {4} and cvv_lengths(CardBrand.JCB) == {3}


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("94107", "94107"),
        ("941071234", "941071234"),
        (" sw1a 1aa ", "SW1A 1AA"),
        ("10-115", "10-115"),
        ("12", None),
        ("12345678901", None),
        ("-123", None),
        ("12_34", None),
        ("   ", None),
    ],
)
def test_postal_code(code: str, ok: str | None) -> None:
    if ok is not None:
        assert validate_postal_code(code) == ok
    else:
        with pytest.raises(CardValidationError) as info:
            validate_postal_code(code)
        assert info.value.code in (CardError.BAD_POSTAL_CODE, CardError.EMPTY)


def test_masking() -> None:
    assert mask_pan("41111", valid=False) == "*****"
    assert mask_pan("4111111111111111", valid=False) == "*" * 16
    assert mask_pan("4111111111111111", valid=True) == "*" * 12 + "1111"
    assert mask_pan("4111111111111111", valid=True, show_last_four=False) == "*" * 16
    assert mask_pan("4111", valid=True) == "****"  # never a whole short number


def test_validate_card_and_repr_hides_digits() -> None:
    card = CardDetails("378282246310005", "1230", "7373", "94107")
    assert validate_card(card, TODAY) is CardBrand.AMEX
    for text in (repr(card), str(card), f"{card}", repr([card]), repr({"c": card})):
        for secret in ("378282246310005", "37828", "1230", "7373", "94107"):
            assert secret not in text
    assert card != CardDetails("378282246310005", "1230", "7373", "94107")
    with pytest.raises(TypeError):
        pickle.dumps(card)
    with pytest.raises(CardValidationError) as info:
        validate_card(CardDetails("378282246310005", "1230", "737"), TODAY)
    assert info.value.code is CardError.WRONG_CVV_LENGTH


@given(st.text(max_size=25))
def test_errors_never_echo_input(text: str) -> None:
    for check in (
        validate_pan,
        lambda t: validate_expiry(t, TODAY),
        lambda t: validate_cvv(t, None),
        validate_postal_code,
    ):
        try:
            check(text)
        except CardValidationError as exc:
            # the message is fixed by field and code alone: nothing of the input is in it
            assert str(exc) == f"{exc.field}: {exc.code.value}: {exc.code.sentence}"
            assert repr(exc) == f"CardValidationError(code={exc.code.value!r}, field={exc.field!r})"
