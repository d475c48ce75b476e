"""The embedded ``sandbox`` provider's processor (sans-I/O): decides by test card numbers.

It validates the card as a real acquirer would (brand, length, Luhn, expiry, CVV length; an
invalid card is declined ``invalid_card``), then answers by the card number. Documented test
cards (any valid expiry and CVV):

=====================  ==========  ===================================================
card number            brand       result
=====================  ==========  ===================================================
4000000000000002       visa        declined, ``card_declined``
4000000000009995       visa        declined, ``insufficient_funds``
4000000000000069       visa        declined, ``card_expired`` (the issuer says so)
4000000000000119       visa        failed, ``processing_error``
4000000000000101       visa        no answer: the adapter never replies, so the session's
                                   processing deadline ends it (``processing_timeout``)
any other valid card   any         succeeded (e.g. 4111111111111111, 5555555555554444,
                                   378282246310005, 6011111111111117)
=====================  ==========  ===================================================

It keeps no card data: :meth:`SandboxProcessor.authorise` reads the card and returns a
:class:`~control_api.events.ProviderResult` (or ``None`` for the timeout card) holding a
reference derived from the session id only; nothing is stored on the processor.
"""

from __future__ import annotations

from datetime import date
from typing import Final

from control_api.cards import CardDetails, CardValidationError, validate_card
from control_api.events import ErrorCode, ProcessPayment, ProviderResult

__all__ = ["TEST_CARDS", "TIMEOUT_CARD", "SandboxProcessor"]

TEST_CARDS: Final[dict[str, ProviderResult]] = {
    "4000000000000002": ProviderResult("declined", ErrorCode.CARD_DECLINED),
    "4000000000009995": ProviderResult("declined", ErrorCode.INSUFFICIENT_FUNDS),
    "4000000000000069": ProviderResult("declined", ErrorCode.CARD_EXPIRED),
    "4000000000000119": ProviderResult("error", ErrorCode.PROCESSING_ERROR),
}
TIMEOUT_CARD: Final = "4000000000000101"


class SandboxProcessor:
    """Authorises :class:`ProcessPayment` actions against the test-card table. Stateless."""

    __slots__ = ()

    def authorise(self, request: ProcessPayment, today: date) -> ProviderResult | None:
        """The result for ``request``; ``None`` means "never answer" (the timeout card)."""
        return decide(request.session_id, request.card, today)


def decide(session_id: str, card: CardDetails, today: date) -> ProviderResult | None:
    """Validate ``card`` then look it up; the reference names the session, never the card."""
    try:
        validate_card(card, today)
    except CardValidationError:
        return ProviderResult("declined", ErrorCode.INVALID_CARD, f"sandbox-{session_id}")
    if card.number == TIMEOUT_CARD:
        return None
    canned = TEST_CARDS.get(card.number)
    reference = f"sandbox-{session_id}"
    if canned is None:
        return ProviderResult("approved", None, reference)
    return ProviderResult(canned.outcome, canned.code, reference)
