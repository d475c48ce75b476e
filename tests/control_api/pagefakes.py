"""A stand-in for the three PaymentService methods the hosted page calls (``page_view``,
``page_progress``, ``page_submit``; signatures in control_api/hostedpage.PageService), for
the page's HTTP tests: links that can be expired, used or tampered with, key counts the
test reads back, and the sandbox's outcomes by card number. It keeps no card data: a submit
is recorded as the lengths of what came."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date

from control_api.cards import CardDetails, CardValidationError, validate_card
from control_api.links import LinkError, PageView
from control_api.service import ServiceError
from tests.control_api.servicekit import DECLINE, PROCESSING_ERROR, TODAY

FIELDS = ("card_number", "expiry", "cvv", "postal_code")
_ALPHABET = string.ascii_letters  # no digits: a token never looks like card data


@dataclass
class FakeLink:
    session_id: str
    mac: str
    expires_at: float
    used: bool = False


@dataclass
class FakeSession:
    view: PageView
    digits: dict[str, int] = field(default_factory=dict)
    brand: str | None = None
    submits: list[tuple[int, int, int, int | None]] = field(default_factory=list)


class FakePageService:
    """Tokens are ``<22 letters id><22 letters mac>``; :meth:`tamper` changes one letter."""

    def __init__(self, *, today: Callable[[], date] = lambda: TODAY) -> None:
        self.now = 0.0
        self.today = today
        self.sessions: dict[str, FakeSession] = {}
        self.links: dict[str, FakeLink] = {}
        self._n = 0
        self.fail_submit: BaseException | None = None
        self.answer: PageView | None = None  # page_submit returns this instead (processing)
        self.gate: asyncio.Event | None = None  # page_submit waits on it, link already used
        self.fail_late: BaseException | None = None  # raised after the gate

    def add(
        self,
        session_id: str = "pay_a",
        *,
        fields: tuple[str, ...] = FIELDS,
        ttl_s: float = 3600.0,
        merchant: str = "Acme",
        purpose: str = "Invoice payment",
        amount: str = "12.50",
        currency: str = "GBP",
    ) -> str:
        """A session in ``link_sent`` with a live link; returns the token."""
        if session_id not in self.sessions:
            view = PageView(session_id, merchant, purpose, amount, currency, fields, "link_sent")
            self.sessions[session_id] = FakeSession(view)
        self._n += 1
        link_id = self._letters(self._n, 22)
        mac = self._letters(hash((link_id, session_id)) % 10**12, 22)
        self.links[link_id] = FakeLink(session_id, mac, self.now + ttl_s)
        return link_id + mac

    @staticmethod
    def _letters(n: int, width: int) -> str:
        out = ""
        while len(out) < width:
            n, r = divmod(n, len(_ALPHABET))
            out = _ALPHABET[r] + out
        return out

    @staticmethod
    def tamper(token: str) -> str:
        last = token[-1]
        return token[:-1] + ("a" if last != "a" else "b")

    def splice(self, token_a: str, token_b: str) -> str:
        """A's id with B's MAC: a link for one session dressed as another's."""
        return token_a[:22] + token_b[22:]

    # -- the PageService methods

    def _link(self, token: str) -> FakeLink:
        if len(token) != 44:
            raise LinkError("not_found")
        link = self.links.get(token[:22])
        if link is None:
            raise LinkError("not_found")
        if link.mac != token[22:]:
            raise LinkError("tampered")
        if link.used:
            raise LinkError("used")
        if self.now >= link.expires_at:
            raise LinkError("expired")
        return link

    def page_view(self, token: str) -> PageView:
        return self.sessions[self._link(token).session_id].view

    def page_progress(self, token: str, field: str, digits: int, brand: str | None) -> None:
        session = self.sessions[self._link(token).session_id]
        if field not in session.view.fields:
            raise ServiceError(422, "bad_field", "no such field on this payment")
        if session.view.result is not None:
            raise ServiceError(409, "wrong_state", "the payment session has finished")
        session.digits[field] = digits
        if field == "card_number":
            session.brand = brand
        session.view = replace(session.view, state="customer_active")

    async def page_submit(self, token: str, card: CardDetails) -> PageView:
        link = self._link(token)
        session = self.sessions[link.session_id]
        postal = len(card.postal_code) if card.postal_code is not None else None
        session.submits.append((len(card.number), len(card.expiry), len(card.cvv), postal))
        if self.fail_submit is not None:
            raise self.fail_submit
        try:
            validate_card(card, self.today())
        except CardValidationError as exc:
            raise ServiceError(422, exc.code.value, exc.code.sentence) from None
        link.used = True
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_late is not None:
            raise self.fail_late
        if self.answer is not None:
            return self.answer
        if card.number == DECLINE:
            result, error, reference = "declined", "card_declined", None
        elif card.number == PROCESSING_ERROR:
            result, error, reference = "failed", "processing_error", None
        else:
            result, error, reference = "succeeded", None, "ref_sandbox_abcdef"
        session.view = replace(session.view, state="finished", result=result, error=error)
        if reference is not None and "reference" in PageView.__dataclass_fields__:
            session.view = replace(session.view, reference=reference)  # type: ignore[call-arg]
        return session.view
