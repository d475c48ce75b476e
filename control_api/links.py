"""Payment links for self-service sessions, and what the hosted page is shown.

A link is ``https://<public base>/pay/<token>``. The token is unguessable (a 128-bit random
id), signed (an HMAC over the id, the session id and the expiry, keyed from
``payments.links.secret``), bound to one session, expiring, and single-use for submission.

This module starts with the two types the hosted page (``control_api.hostedpage``) imports:

- :class:`PageView`: what the customer's page shows; built by ``PaymentService.page_view``.
- :class:`LinkError`: raised for a link that cannot be used. Its ``code`` (``not_found``,
  ``tampered``, ``expired``, ``used``) is for logs and metrics only; its message is the same
  for every code, and the page must show one plain answer for all of them so that nothing
  tells a prober which it hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

LinkErrorCode = Literal["not_found", "tampered", "expired", "used"]
LINK_ERROR_CODES: frozenset[str] = frozenset({"not_found", "tampered", "expired", "used"})


class LinkError(Exception):
    """A payment link that cannot be used. ``str()`` is the same whatever the ``code``."""

    MESSAGE = "This payment link is not valid"

    def __init__(self, code: LinkErrorCode) -> None:
        if code not in LINK_ERROR_CODES:
            raise ValueError(f"unknown link error code {code!r}")
        super().__init__(self.MESSAGE)
        self.code: LinkErrorCode = code

    def __repr__(self) -> str:
        return f"LinkError({self.code!r})"


@dataclass(frozen=True, slots=True)
class PageView:
    """What the hosted payment page shows the customer: no card data, ever.

    ``fields`` are the names of the fields to ask for, in order (``card_number``, ``expiry``,
    ``cvv``, and ``postal_code`` when the profile asks). ``state`` is the self-service
    session's state (``link_sent``, ``customer_active``, ``processing``, ``finished``, ...);
    ``result`` and ``error`` are set once it finished (``succeeded``, ``declined``,
    ``failed``, ``cancelled``; error codes from the fixed list). ``brand_hint`` is reserved
    for a brand the page could pre-select (always ``None`` for now).
    """

    session_id: str
    merchant: str
    purpose: str
    amount: str
    currency: str
    fields: tuple[str, ...]
    state: str
    result: str | None = None
    error: str | None = None
    brand_hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "merchant": self.merchant,
            "purpose": self.purpose,
            "amount": self.amount,
            "currency": self.currency,
            "fields": list(self.fields),
            "state": self.state,
            "result": self.result,
            "error": self.error,
            "brand_hint": self.brand_hint,
        }
