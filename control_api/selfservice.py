"""The self-service payment session: a sans-I/O state machine, the sibling of
:class:`~control_api.session.PaymentSession`.

The customer gets an SMS with a link to the hosted payment page and types the card there; the
agent's view is the guided one (``fields`` with states, digit counts and asterisks,
``required``, ``result``, ``error``, ``version``) plus ``sms`` (``state`` queued / sent /
failed, ``error``, ``to`` masked) and ``link_expires_at``. The call is not needed: the
session does not end when the call does, and it survives a process restart
(:meth:`SelfServiceSession.snapshot` / :meth:`SelfServiceSession.restore`).

``now`` is **wall-clock time** (seconds since the epoch): deadlines (the link's expiry) must
mean the same after a restart. ``today`` is the date expiries are checked against.

The flow (``state``)::

    created --SetDetails (phone known) or SendLink--> link_sent
    link_sent --SmsOutcome failed--> sms_failed --SendLink (resend)--> link_sent
    link_sent / sms_failed --PageOpened or FieldProgress--> customer_active
    link_sent / sms_failed / customer_active --SubmitCard (valid)--> processing
    processing --ProviderResult--> finished

================================  ==================  ===========  ==================
what happened                     when                result       error
================================  ==================  ===========  ==================
the link expired (or never sent)  before processing   failed       link_expired
processing deadline               processing          failed       processing_timeout
ProviderResult error / declined   processing          failed /     as guided
                                                      declined
Cancel                            before processing   cancelled    cancelled
SwitchToGuided                    before processing   cancelled    switched_to_guided
Restarted                         processing only     interrupted  process_restart
================================  ==================  ===========  ==================

A ``created`` session waits for the amount (``SetDetails``); if the agent gave the phone
number when creating it, setting the details sends the link at once (the agent's "Send
payment link"). The deadline of a ``created`` session is its creation plus the profile's
``link_ttl_s``. ``CallEnded`` is recorded and changes nothing else. The hosted page reports
key presses as counts (:class:`~control_api.events.FieldProgress`), never values, so the
agent sees asterisks filling exactly as in a guided payment.

**Card data**: the card arrives once, in :class:`~control_api.events.SubmitCard`; it is
validated (a refusal is the :class:`~control_api.events.CardRefused` notification, which
names the field and a code, never the input, and leaves that field ``invalid`` in the view)
and handed on in the :class:`~control_api.events.ProcessPayment` action. Nothing here keeps
it.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from decimal import Decimal
from typing import Any, Final

from control_api.cards import (
    CardBrand,
    CardDetails,
    CardError,
    CardValidationError,
    mask_digits,
    mask_pan,
    validate_card,
)
from control_api.events import (
    BillingDetails,
    CallEnded,
    Cancel,
    CardRefused,
    ErrorCode,
    FieldName,
    FieldProgress,
    FieldState,
    Input,
    Output,
    PageOpened,
    Proceed,
    Process,
    ProcessPayment,
    ProviderResult,
    ResetField,
    Restarted,
    Result,
    SendLink,
    SendPaymentLink,
    SessionState,
    SetDetails,
    SmsOutcome,
    StartCapture,
    SubmitCard,
    SwitchToGuided,
)
from control_api.links import PageView
from control_api.profiles import PaymentProfile, ProviderConfig
from control_api.session import (
    FieldCapture,
    SessionCore,
    SessionError,
    SessionErrorCode,
    SmsView,
    check_details,
)
from control_api.sms import is_e164, mask_phone

__all__ = ["MAX_FIELD_CHARS", "SelfServiceSession"]

MAX_FIELD_CHARS: Final = {
    FieldName.CARD_NUMBER: 19,
    FieldName.EXPIRY: 4,
    FieldName.CVV: 4,
    FieldName.POSTAL_CODE: 10,
}
"""The most characters the page may report for a field."""
WAITING: Final = (SessionState.LINK_SENT, SessionState.SMS_FAILED, SessionState.CUSTOMER_ACTIVE)
"""States in which the customer may use the page."""
BEFORE_PROCESSING: Final = (SessionState.CREATED, *WAITING)
_GUIDED_ONLY: Final = "self-service: the customer enters the card on the payment page"


class SelfServiceSession(SessionCore[FieldCapture]):
    """One self-service payment (SMS link, hosted page). See the module docstring."""

    def __init__(
        self,
        session_id: str,
        call_id: str,
        profile: PaymentProfile,
        provider: ProviderConfig,
        *,
        today: date,
        now: float,
        phone: str | None = None,
    ) -> None:
        if profile.method != "self_service":
            raise ValueError(f"profile {profile.name!r} is not a self-service profile")
        fields = {name: FieldCapture(name) for name in profile.fields}
        super().__init__(session_id, call_id, profile, provider, fields, today=today, now=now)
        if phone is not None and not is_e164(phone):
            raise ValueError("phone must be an E.164 number")
        self.phone = phone
        self.links_sent = 0
        self._deadline = now + profile.link_ttl_s

    def page_view(self, merchant: str) -> PageView:
        """What the customer's page shows (no card data; the amount as a string)."""
        return PageView(
            session_id=self.id,
            merchant=merchant,
            purpose=self.profile.purpose,
            amount=str(self.amount) if self.amount is not None else "",
            currency=self.currency,
            fields=tuple(f.value for f in self._fields),
            state=self.state.value,
            result=self.result.value if self.result else None,
            error=self.error.value if self.error else None,
        )

    @property
    def takes_card(self) -> bool:
        """Whether the page may report progress and submit now."""
        return self.state in WAITING

    def _dispatch(self, event: Input, now: float, out: list[Output]) -> None:
        match event:
            case SetDetails():
                self._require(SessionState.CREATED)
                self.amount, self.billing = check_details(self.profile, event)
                if self.phone is not None:
                    self._send(self.phone, now, out)
            case SendLink(to=to):
                self._require(SessionState.CREATED, SessionState.LINK_SENT, SessionState.SMS_FAILED)
                if self.amount is None:
                    raise SessionError(
                        SessionErrorCode.DETAILS_REQUIRED,
                        "set amount, currency and billing before the link is sent",
                    )
                if not is_e164(to):
                    raise ValueError("to must be an E.164 number")
                self._send(to, now, out)
            case SmsOutcome():
                self._sms_outcome(event)
            case PageOpened():
                if self.state in (SessionState.LINK_SENT, SessionState.SMS_FAILED):
                    self.state = SessionState.CUSTOMER_ACTIVE
            case FieldProgress():
                self._progress(event)
            case SubmitCard(card=card, today=today):
                self._submit(card, today or self.today, now, out)
            case ProviderResult():
                self._provider_result(event, out)
            case Cancel():
                self._require(*BEFORE_PROCESSING)
                self._finish(Result.CANCELLED, ErrorCode.CANCELLED, out)
            case SwitchToGuided():
                self._require(*BEFORE_PROCESSING)
                self._finish(Result.CANCELLED, ErrorCode.SWITCHED_TO_GUIDED, out)
            case CallEnded(by=by):
                if not self.finished:
                    self.call_ended = by  # the customer may still pay by the link
            case Restarted():
                if self.state is SessionState.PROCESSING:  # the provider's answer is lost
                    self._finish(Result.INTERRUPTED, ErrorCode.PROCESS_RESTART, out)
            case Proceed() | StartCapture() | ResetField() | Process():
                raise SessionError(SessionErrorCode.WRONG_STATE, _GUIDED_ONLY)
            case _:
                pass  # key presses, provider-leg and hold events: not this method's

    # -- the link

    def _send(self, to: str, now: float, out: list[Output]) -> None:
        self.phone = to
        self.links_sent += 1
        self.link_expires_at = round(now + self.profile.link_ttl_s, 3)
        self.sms = SmsView("queued", None, mask_phone(to))
        self.state = SessionState.LINK_SENT
        self._deadline = self.link_expires_at
        out.append(SendPaymentLink(self.id, to, self.link_expires_at, self.links_sent))

    def _sms_outcome(self, event: SmsOutcome) -> None:
        if self.finished or self.sms is None or event.link != self.links_sent:
            return  # an answer about an older message, or too late to matter
        self.sms = SmsView(
            event.state, event.error if event.state == "failed" else None, self.sms.to
        )
        if event.state == "failed" and self.state is SessionState.LINK_SENT:
            self.state = SessionState.SMS_FAILED

    # -- the page

    def _progress(self, event: FieldProgress) -> None:
        if not self.takes_card:
            raise SessionError(SessionErrorCode.WRONG_STATE, "the payment page is closed")
        field = self._fields.get(event.field)
        if field is None:
            raise SessionError(
                SessionErrorCode.UNKNOWN_FIELD,
                f"this payment does not take {event.field.value}",
            )
        limit = MAX_FIELD_CHARS[event.field]
        if not isinstance(event.digits, int) or not 0 <= event.digits <= limit:
            raise SessionError(
                SessionErrorCode.BAD_PROGRESS, f"{event.field.value} has 0-{limit} characters"
            )
        self.state = SessionState.CUSTOMER_ACTIVE
        field.count = event.digits
        field.state = FieldState.CAPTURING if event.digits else FieldState.PENDING
        field.error = None
        field.masked = mask_digits(event.digits)
        if field.name is FieldName.CARD_NUMBER:
            field.brand = event.brand if event.digits else None

    def _submit(self, card: CardDetails, today: date, now: float, out: list[Output]) -> None:
        if not self.takes_card:
            raise SessionError(SessionErrorCode.WRONG_STATE, "the payment page is closed")
        wants_postal = FieldName.POSTAL_CODE in self._fields
        if wants_postal and not (card.postal_code or "").strip():
            self._refuse(FieldName.POSTAL_CODE, CardError.EMPTY, out)
            return
        if not wants_postal and card.postal_code is not None:
            card = CardDetails(card.number, card.expiry, card.cvv)
        try:
            brand = validate_card(card, today)
        except CardValidationError as exc:
            self._refuse(FieldName(exc.field), exc.code, out)
            return
        assert self.amount is not None and self.billing is not None
        lengths = {
            FieldName.CARD_NUMBER: len(card.number),
            FieldName.EXPIRY: len(card.expiry),
            FieldName.CVV: len(card.cvv),
            FieldName.POSTAL_CODE: len((card.postal_code or "").strip()),
        }
        for name, field in self._fields.items():
            field.state = FieldState.COMPLETE
            field.error = None
            field.count = lengths[name]
            field.masked = mask_digits(field.count)
            if name is FieldName.CARD_NUMBER:
                field.brand = brand
                field.masked = mask_pan(
                    card.number, valid=True, show_last_four=self.profile.show_last_four
                )
        self.state = SessionState.PROCESSING
        self._deadline = now + self.provider.processing_timeout_s
        out.append(
            ProcessPayment(
                self.id, self.provider.name, self.amount, self.currency, self.billing, card
            )
        )

    def _refuse(self, name: FieldName, code: CardError, out: list[Output]) -> None:
        """The field the page must fix shows ``invalid`` with the code."""
        field = self._fields.get(name)
        if field is not None:
            field.state = FieldState.INVALID
            field.error = code
        self.state = SessionState.CUSTOMER_ACTIVE
        out.append(CardRefused(self.id, name, code))

    # -- the provider and the clock

    def _timeout(self, out: list[Output]) -> None:
        if self.state is SessionState.PROCESSING:
            self._finish(Result.FAILED, ErrorCode.PROCESSING_TIMEOUT, out)
        elif self.state in BEFORE_PROCESSING:
            self._finish(Result.FAILED, ErrorCode.LINK_EXPIRED, out)
        else:
            self._deadline = None

    # -- restart

    def snapshot(self) -> dict[str, Any] | None:
        """What :meth:`restore` needs besides the view (``None`` once finished): the profile
        and provider as they started, amount, billing, phone, the link's number, the
        deadline. No card data (there is none to keep)."""
        if self.finished:
            return None
        profile = asdict(self.profile)
        profile.update(
            min_amount=str(self.profile.min_amount),
            max_amount=str(self.profile.max_amount),
            fields=[f.value for f in self.profile.fields],
        )
        return {
            "profile": profile,
            "provider": asdict(self.provider),
            "today": self.today.isoformat(),
            "created_at": self.created_at,
            "amount": str(self.amount) if self.amount is not None else None,
            "billing": asdict(self.billing) if self.billing is not None else None,
            "phone": self.phone,
            "links_sent": self.links_sent,
            "deadline": self._deadline,
            "call_ended": self.call_ended,
        }

    @classmethod
    def restore(cls, view: dict[str, Any], resume: dict[str, Any]) -> SelfServiceSession:
        """The session as it was stored (``view``: the agent's view; ``resume``:
        :meth:`snapshot`). Raises ``ValueError``/``KeyError``/``TypeError`` on a bad row."""
        p = dict(resume["profile"])
        p.update(
            min_amount=Decimal(p["min_amount"]),
            max_amount=Decimal(p["max_amount"]),
            fields=tuple(FieldName(f) for f in p["fields"]),
        )
        profile = PaymentProfile(**p)
        provider = ProviderConfig(**resume["provider"])
        session = cls(
            view["id"],
            view["call_id"],
            profile,
            provider,
            today=date.fromisoformat(resume["today"]),
            now=float(resume["created_at"]),
            phone=resume.get("phone"),
        )
        session.state = SessionState(view["state"])
        session.version = int(view["version"])
        if resume.get("amount") is not None:
            session.amount = Decimal(resume["amount"])
        if resume.get("billing") is not None:
            session.billing = BillingDetails(**resume["billing"])
        session.links_sent = int(resume.get("links_sent", 0))
        session._deadline = resume.get("deadline")
        session.call_ended = resume.get("call_ended")
        session.link_expires_at = view.get("link_expires_at")
        sms = view.get("sms")
        if sms is not None:
            session.sms = SmsView(sms["state"], sms["error"], sms["to"])
        for f in view["fields"]:
            field = session._fields[FieldName(f["name"])]
            field.state = FieldState(f["state"])
            field.count = int(f["digits"])
            field.masked = str(f["masked"])
            field.brand = CardBrand(f["brand"]) if f["brand"] else None
            field.error = CardError(f["error"]) if f.get("error") else None
        if session.view().to_dict() | {"billing": None} != view | {"billing": None}:
            raise ValueError(f"session {session.id}: the stored view does not restore")
        return session
