"""Card fields: brand detection, Luhn, lengths, expiry, CVV, postal code, and masking.

Pure functions over digit strings, no I/O. Everything that holds card digits keeps them out
of ``repr``/``str`` (DESIGN.md invariant 3: card digits never reach logs), and every error is
one of a fixed list of codes (:class:`CardError`) with a fixed sentence: no digits ever go
into an exception message.

Brands and their ranges, as the networks publish them (IIN/BIN prefixes, PAN lengths):

==========  ============================================================  ==============
brand       prefixes                                                      PAN lengths
==========  ============================================================  ==============
visa        4                                                             13, 16, 19
mastercard  51-55, 2221-2720                                              16
amex        34, 37                                                        15
discover    6011, 644-649, 65                                             16-19
diners      300-305, 3095, 36, 38-39                                      14-19
jcb         3528-3589                                                     16-19
unionpay    62, 81                                                        16-19
maestro     5018, 5020, 5038, 5893, 6304, 6759, 6761-6763                 12-19
==========  ============================================================  ==============

UnionPay cards in 622126-622925 are also accepted on the Discover network; they are reported
here as ``unionpay``, the issuing brand. Every brand must pass the Luhn check except UnionPay,
whose network does not require it (some of its older cards fail it). A number that matches no
range is refused (``unknown_brand``): the provider could not route it anyway.

Masking (:func:`mask_pan`): one asterisk per digit while the number is typed; after the number
is complete and valid, at most the last four digits. Expiry, CVV and postal code are only ever
asterisks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Final

__all__ = [
    "BRANDS",
    "MAX_EXPIRY_YEARS",
    "MAX_PAN_LENGTH",
    "MIN_PAN_LENGTH",
    "BrandSpec",
    "CardBrand",
    "CardDetails",
    "CardError",
    "CardValidationError",
    "ExpiryDate",
    "cvv_lengths",
    "detect_brand",
    "luhn_valid",
    "mask_digits",
    "mask_pan",
    "max_pan_length",
    "parse_expiry",
    "possible_brands",
    "validate_card",
    "validate_cvv",
    "validate_expiry",
    "validate_pan",
    "validate_postal_code",
]

MIN_PAN_LENGTH: Final = 12
"""Shortest PAN of any brand (Maestro)."""
MAX_PAN_LENGTH: Final = 19
"""Longest PAN of any brand (ISO/IEC 7812)."""
MAX_EXPIRY_YEARS: Final = 20
"""An expiry more than this many years ahead is refused as a keying error."""

# --------------------------------------------------------------------------- data types


class CardBrand(StrEnum):
    VISA = "visa"
    MASTERCARD = "mastercard"
    AMEX = "amex"
    DISCOVER = "discover"
    DINERS = "diners"
    JCB = "jcb"
    UNIONPAY = "unionpay"
    MAESTRO = "maestro"


class CardError(StrEnum):
    """Why a card field is refused. Stable codes: the API and the audit log carry them."""

    EMPTY = "empty"
    NOT_DIGITS = "not_digits"
    UNKNOWN_BRAND = "unknown_brand"
    WRONG_LENGTH = "wrong_length"
    LUHN_FAILED = "luhn_failed"
    BAD_MONTH = "bad_month"
    EXPIRED = "expired"
    TOO_FAR_AHEAD = "too_far_ahead"
    WRONG_CVV_LENGTH = "wrong_cvv_length"
    BAD_POSTAL_CODE = "bad_postal_code"

    @property
    def sentence(self) -> str:
        """A human sentence for the code. Fixed text: never any of the input."""
        return _SENTENCES[self]


_SENTENCES: Final = {
    CardError.EMPTY: "nothing was entered",
    CardError.NOT_DIGITS: "only the digits 0-9 are allowed",
    CardError.UNKNOWN_BRAND: "the card number matches no supported card brand",
    CardError.WRONG_LENGTH: "the card number has the wrong number of digits for its brand",
    CardError.LUHN_FAILED: "the card number fails its check digit (a digit was mistyped)",
    CardError.BAD_MONTH: "the expiry date must be four digits MMYY with a month 01-12",
    CardError.EXPIRED: "the expiry date is in the past",
    CardError.TOO_FAR_AHEAD: f"the expiry date is more than {MAX_EXPIRY_YEARS} years ahead",
    CardError.WRONG_CVV_LENGTH: "the security code has the wrong number of digits for the card",
    CardError.BAD_POSTAL_CODE: "the postal code must be 3-10 letters, digits, spaces or dashes",
}


class CardValidationError(ValueError):
    """A card field was refused. The message is the code's fixed sentence: no input in it."""

    def __init__(self, code: CardError, field: str) -> None:
        self.code = code
        self.field = field
        super().__init__(f"{field}: {code.value}: {code.sentence}")

    def __repr__(self) -> str:
        return f"CardValidationError(code={self.code.value!r}, field={self.field!r})"


@dataclass(frozen=True, slots=True)
class BrandSpec:
    """One brand's published ranges: ``(low, high)`` prefixes of equal length, inclusive."""

    brand: CardBrand
    ranges: tuple[tuple[str, str], ...]
    lengths: frozenset[int]
    cvv_length: int
    luhn: bool = True

    def matches(self, pan: str) -> bool:
        """Whether the complete number ``pan`` lies in one of the ranges."""
        return any(lo <= pan[: len(lo)] <= hi for lo, hi in self.ranges if len(pan) >= len(lo))

    def may_match(self, prefix: str) -> bool:
        """Whether some number starting with ``prefix`` lies in one of the ranges."""
        for lo, hi in self.ranges:
            n = min(len(prefix), len(lo))
            if lo[:n] <= prefix[:n] <= hi[:n]:
                return True
        return False


def _span(lo: int, hi: int) -> tuple[str, str]:
    return (str(lo), str(hi))


BRANDS: Final[tuple[BrandSpec, ...]] = (
    BrandSpec(CardBrand.VISA, (_span(4, 4),), frozenset({13, 16, 19}), 3),
    BrandSpec(CardBrand.MASTERCARD, (_span(51, 55), _span(2221, 2720)), frozenset({16}), 3),
    BrandSpec(CardBrand.AMEX, (_span(34, 34), _span(37, 37)), frozenset({15}), 4),
    BrandSpec(
        CardBrand.DISCOVER,
        (_span(6011, 6011), _span(644, 649), _span(65, 65)),
        frozenset(range(16, 20)),
        3,
    ),
    BrandSpec(
        CardBrand.DINERS,
        (_span(300, 305), _span(3095, 3095), _span(36, 36), _span(38, 39)),
        frozenset(range(14, 20)),
        3,
    ),
    BrandSpec(CardBrand.JCB, (_span(3528, 3589),), frozenset(range(16, 20)), 3),
    BrandSpec(
        CardBrand.UNIONPAY, (_span(62, 62), _span(81, 81)), frozenset(range(16, 20)), 3, luhn=False
    ),
    BrandSpec(
        CardBrand.MAESTRO,
        (*(_span(p, p) for p in (5018, 5020, 5038, 5893, 6304, 6759)), _span(6761, 6763)),
        frozenset(range(12, 20)),
        3,
    ),
)
_BY_BRAND: Final = {spec.brand: spec for spec in BRANDS}
_DIGITS: Final = re.compile(r"[0-9]*\Z")
_POSTAL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 -]*[A-Za-z0-9])?\Z")


def _redacted(value: str | None) -> str:
    return "None" if value is None else f"<{len(value)} redacted>"


@dataclass(frozen=True, slots=True, repr=False)
class ExpiryDate:
    """A card's expiry month: valid through the last day of ``month`` in ``year``."""

    month: int
    year: int

    def __repr__(self) -> str:
        return "ExpiryDate(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class CardDetails:
    """A whole card as keyed: digit strings. ``repr``/``str`` show lengths only, never digits.

    Comparison is by identity (``eq=False``), so no assertion failure can print digits.
    The holder drops its reference after use; Python cannot wipe immutable strings, so the
    rule is: keep no reference after the result (the session and the sandbox do not).
    """

    number: str
    expiry: str
    cvv: str
    postal_code: str | None = None

    def __repr__(self) -> str:
        return (
            f"CardDetails(number={_redacted(self.number)}, expiry={_redacted(self.expiry)}, "
            f"cvv={_redacted(self.cvv)}, postal_code={_redacted(self.postal_code)})"
        )

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("CardDetails cannot be pickled (card data is never stored)")


# ------------------------------------------------------------------------------- brands


def possible_brands(prefix: str) -> tuple[CardBrand, ...]:
    """Brands a number starting with ``prefix`` (digits) may still turn out to be."""
    if not prefix:
        return tuple(spec.brand for spec in BRANDS)
    return tuple(spec.brand for spec in BRANDS if spec.may_match(prefix))


def detect_brand(prefix: str) -> CardBrand | None:
    """The brand once the first digits leave only one, else ``None`` (unknown or ambiguous)."""
    if not prefix or not _DIGITS.match(prefix):
        return None
    found = possible_brands(prefix[:MAX_PAN_LENGTH])
    return found[0] if len(found) == 1 else None


def cvv_lengths(brand: CardBrand | None) -> frozenset[int]:
    """Allowed security-code lengths: Amex 4 (CID), others 3; unknown brand: 3 or 4."""
    if brand is None:
        return frozenset({3, 4})
    return frozenset({_BY_BRAND[brand].cvv_length})


def max_pan_length(brand: CardBrand | None) -> int:
    """The longest number ``brand`` allows (19 for an unknown brand)."""
    return MAX_PAN_LENGTH if brand is None else max(_BY_BRAND[brand].lengths)


# ------------------------------------------------------------------------------ checks


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of ISO/IEC 7812-1 over a string of ASCII digits."""
    if not digits or not _DIGITS.match(digits):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(value: str, field: str) -> str:
    if not value:
        raise CardValidationError(CardError.EMPTY, field)
    if not _DIGITS.match(value):
        raise CardValidationError(CardError.NOT_DIGITS, field)
    return value


def validate_pan(number: str) -> CardBrand:
    """Check a complete card number; returns its brand or raises :class:`CardValidationError`.

    Checked in this order: digits only, brand by range, length for the brand, Luhn.
    """
    _digits(number, "card_number")
    specs = [spec for spec in BRANDS if spec.matches(number)]
    if not specs:
        raise CardValidationError(CardError.UNKNOWN_BRAND, "card_number")
    spec = specs[0]
    if len(number) not in spec.lengths:
        raise CardValidationError(CardError.WRONG_LENGTH, "card_number")
    if spec.luhn and not luhn_valid(number):
        raise CardValidationError(CardError.LUHN_FAILED, "card_number")
    return spec.brand


def parse_expiry(mmyy: str, today: date) -> ExpiryDate:
    """``MMYY`` as keyed to a month; the century is the one that puts it nearest ``today``."""
    _digits(mmyy, "expiry")
    if len(mmyy) != 4 or not 1 <= int(mmyy[:2]) <= 12:
        raise CardValidationError(CardError.BAD_MONTH, "expiry")
    yy = int(mmyy[2:])
    year = today.year - today.year % 100 + yy
    if year < today.year - 50:
        year += 100
    elif year > today.year + 50:
        year -= 100
    return ExpiryDate(int(mmyy[:2]), year)


def validate_expiry(mmyy: str, today: date) -> ExpiryDate:
    """Check an expiry ``MMYY``: a real month, not before ``today``'s month (a card is valid
    through the end of its expiry month), at most :data:`MAX_EXPIRY_YEARS` years ahead."""
    exp = parse_expiry(mmyy, today)
    if (exp.year, exp.month) < (today.year, today.month):
        raise CardValidationError(CardError.EXPIRED, "expiry")
    if (exp.year, exp.month) > (today.year + MAX_EXPIRY_YEARS, today.month):
        raise CardValidationError(CardError.TOO_FAR_AHEAD, "expiry")
    return exp


def validate_cvv(cvv: str, brand: CardBrand | None) -> None:
    """Check a security code's length for ``brand`` (Amex 4, others 3; unknown: 3 or 4)."""
    _digits(cvv, "cvv")
    if len(cvv) not in cvv_lengths(brand):
        raise CardValidationError(CardError.WRONG_CVV_LENGTH, "cvv")


def validate_postal_code(code: str) -> str:
    """Basic postal-code check: 3-10 letters, digits, inner spaces or dashes; returns it
    stripped and upper-cased. Keyed on a phone it is digits only (a US ZIP, ZIP+4 without
    the dash); typed on the hosted page it may be ``SW1A 1AA``. Nothing country-specific."""
    text = code.strip().upper()
    if not text:
        raise CardValidationError(CardError.EMPTY, "postal_code")
    if not 3 <= len(text) <= 10 or not _POSTAL.match(text):
        raise CardValidationError(CardError.BAD_POSTAL_CODE, "postal_code")
    return text


def validate_card(card: CardDetails, today: date) -> CardBrand:
    """Every field of ``card``; the first problem raises :class:`CardValidationError`."""
    brand = validate_pan(card.number)
    validate_expiry(card.expiry, today)
    validate_cvv(card.cvv, brand)
    if card.postal_code is not None:
        validate_postal_code(card.postal_code)
    return brand


# ------------------------------------------------------------------------------ masking


def mask_digits(count: int) -> str:
    """One asterisk per key: what the agent sees of an expiry, CVV or postal code."""
    return "*" * count


def mask_pan(number: str, *, valid: bool, show_last_four: bool = True) -> str:
    """The card number as the agent may see it: asterisks, and only once the number is
    complete and ``valid`` (and the profile allows it) its last four digits."""
    if valid and show_last_four and len(number) >= MIN_PAN_LENGTH:
        return "*" * (len(number) - 4) + number[-4:]
    return "*" * len(number)
