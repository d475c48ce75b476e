"""The payment session: a sans-I/O state machine, one per call (guided payments; its
sibling for self-service payments by SMS link is :mod:`control_api.selfservice`, with the same
view shape).

No sockets, no clock, no asyncio: inputs (:mod:`control_api.events`) and the current time go
in, actions and notifications come out. The HTTP API, the call-control adapter and the
provider connector are adapters around it::

    session = PaymentSession("pay_1", "call-id", profile, provider, today=date.today(), now=t)
    outputs = session.handle(Proceed(), now=t)   # [JoinProvider, HoldCaller, SessionUpdated]
    ...
    if (deadline := session.get_timer()) is not None:  # arm one timer per session
        outputs = session.handle_timer(now=deadline)

``now`` is any monotonic clock in seconds (the adapter's ``loop.time()``); ``today`` is the
calendar date card expiries are checked against, fixed at creation.

The guided flow (``state``)::

    created --Proceed--> provider_joining --ProviderAnswered--> awaiting_details
      --SetDetails, StartCapture--> capturing --(every field complete)--> ready
      --Process--> processing --ProviderResult--> finished

Every other way out goes straight to ``finished`` with a ``result`` and an ``error``:

====================================  ===========  ====================  ===================
what happened                         when         result                error
====================================  ===========  ====================  ===================
ProviderFailed no_answer / deadline   joining      failed                provider_no_answer
ProviderFailed busy                   joining      failed                provider_busy
ProviderFailed rejected               joining      failed                provider_rejected
ProviderFailed error                  joining      failed                provider_error
ProviderHungUp                        joined       failed                provider_hung_up
hold deadline                         awaiting     failed                hold_timeout
capture deadline (idle)               capturing    failed                capture_timeout
processing deadline                   processing   failed                processing_timeout
ProviderResult error                  processing   failed                processing_error
ProviderResult declined               processing   declined              the decline code
Cancel                                before proc  cancelled             cancelled
CallEnded caller / agent              before proc  interrupted           caller/agent_hung_up
Restarted                             any          interrupted           process_restart
====================================  ===========  ====================  ===================

**Nobody stranded** (DESIGN.md invariant 5): every move to ``finished``, success included,
emits ``ReleaseProviderLeg`` then ``RetrieveCaller`` (after ``StopDigitCapture`` if capture was
on). The adapter executes them idempotently (no leg, or a caller who hung up: no-op). Once
``Process`` was sent, the provider's answer decides: a hang-up of the call or of the provider
leg is recorded, and the session waits for the result until the processing deadline (the money
may have moved; reporting ``interrupted`` would hide a charge). A result after the session
finished comes out as ``LateProviderResult`` for an operator to reconcile.

**Keypad convention** (the caller keys fields in order: card number, expiry MMYY, security
code, postal code if the profile asks; the *current field* is the first one not complete):

- ``0``-``9`` add a digit to the current field; on a field marked invalid the first digit
  starts it again.
- A field ends by itself at its longest length (card number: the brand's longest, 19 while
  the brand is unknown, so Mastercard 16 and Amex 15 end by themselves; expiry 4; security
  code: Amex 4, others 3; postal code 10), or earlier with ``#`` (a 16-digit Visa: ``#``).
- ``#`` on a field with no digits is ignored (a stray ``#`` after a field that ended by
  itself does nothing).
- ``*`` clears the current field; if it has no digits yet, ``*`` reopens the field before it
  (so ``*`` right after a field ended lets the caller key that field again).
- Any other key (``A``-``D``) is ignored.

A field is validated when it ends: the card number by brand, length and Luhn; the expiry not in
the past nor more than 20 years ahead; the security code's length for the brand (re-checked
when the card number changes); the postal code's basic shape.

**Card data** (DESIGN.md invariant 3): digits live only in this object's per-field buffers
(``bytearray``, zeroed when a field is cleared, fails, or the session finishes) and in the
``ProcessPayment`` action, whose card the session hands over and forgets. ``repr``, the view,
errors and every event hold no digits; the view shows asterisks and, after a valid card
number (if the profile allows), its last four.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, Generic, TypeVar

from control_api.cards import (
    CardBrand,
    CardDetails,
    CardError,
    CardValidationError,
    cvv_lengths,
    detect_brand,
    mask_digits,
    mask_pan,
    max_pan_length,
    validate_cvv,
    validate_expiry,
    validate_pan,
    validate_postal_code,
)
from control_api.events import (
    BillingDetails,
    CallEnded,
    CallerHoldChanged,
    Cancel,
    ErrorCode,
    FieldName,
    FieldState,
    FieldUpdated,
    HoldCaller,
    Input,
    JoinProvider,
    KeyPressed,
    LateProviderResult,
    Output,
    Proceed,
    Process,
    ProcessPayment,
    ProviderAnswered,
    ProviderFailed,
    ProviderHungUp,
    ProviderLegState,
    ProviderResult,
    ReleaseProviderLeg,
    ResetField,
    Restarted,
    Result,
    RetrieveCaller,
    SessionFinished,
    SessionState,
    SessionUpdated,
    SetDetails,
    StartCapture,
    StartDigitCapture,
    StopDigitCapture,
)
from control_api.profiles import PaymentProfile, ProviderConfig, currency_exponent

__all__ = [
    "DECLINE_CODES",
    "FieldCapture",
    "FieldView",
    "PaymentSession",
    "SessionCore",
    "SessionError",
    "SessionErrorCode",
    "SessionView",
    "SmsView",
    "check_details",
]

DECLINE_CODES: Final = frozenset(
    {
        ErrorCode.CARD_DECLINED,
        ErrorCode.INSUFFICIENT_FUNDS,
        ErrorCode.CARD_EXPIRED,
        ErrorCode.INVALID_CARD,
    }
)
MAX_NAME: Final = 200
MAX_ADDRESS: Final = 500
_CARD_LIKE: Final = re.compile(r"\d(?:[ \t-]{0,3}\d){11,}")
_MAX_DIGITS: Final = {
    FieldName.EXPIRY: 4,
    FieldName.POSTAL_CODE: 10,
}
_FAILED_JOIN: Final = {
    "no_answer": ErrorCode.PROVIDER_NO_ANSWER,
    "busy": ErrorCode.PROVIDER_BUSY,
    "rejected": ErrorCode.PROVIDER_REJECTED,
    "error": ErrorCode.PROVIDER_ERROR,
}
_BEFORE_PROCESSING: Final = frozenset(
    {
        SessionState.CREATED,
        SessionState.PROVIDER_JOINING,
        SessionState.AWAITING_DETAILS,
        SessionState.CAPTURING,
        SessionState.READY,
    }
)

# --------------------------------------------------------------------------- data types


class SessionErrorCode(StrEnum):
    """Why an agent action was refused (the API maps ``wrong_state`` to 409, others 422)."""

    WRONG_STATE = "wrong_state"
    DETAILS_REQUIRED = "details_required"
    BAD_AMOUNT = "bad_amount"
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
    CURRENCY_NOT_ALLOWED = "currency_not_allowed"
    BAD_BILLING = "bad_billing"
    BILLING_CONTAINS_CARD_NUMBER = "billing_contains_card_number"
    UNKNOWN_FIELD = "unknown_field"
    BAD_PROGRESS = "bad_progress"


class SessionError(Exception):
    """An agent action the session refuses. ``message`` never holds card data or input."""

    def __init__(self, code: SessionErrorCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code.value}: {message}")


@dataclass(frozen=True, slots=True)
class FieldView:
    """One field as the agent may see it."""

    name: FieldName
    state: FieldState
    digits: int
    masked: str
    brand: CardBrand | None
    valid: bool | None
    error: CardError | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name.value,
            "state": self.state.value,
            "digits": self.digits,
            "masked": self.masked,
            "brand": self.brand.value if self.brand else None,
            "valid": self.valid,
            "error": self.error.value if self.error else None,
        }


@dataclass(frozen=True, slots=True)
class SmsView:
    """A self-service session's SMS as the agent sees it: ``state`` ``queued``, ``sent`` or
    ``failed`` (then ``error``, a code of :data:`control_api.sms.SMS_ERRORS`), and the
    number it went to, masked (``+44*******123``)."""

    state: str
    error: str | None
    to: str

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error, "to": self.to}


@dataclass(frozen=True, slots=True)
class SessionView:
    """Exactly what the agent UI may see (the body of ``GET /v1/payments/{id}``).

    A self-service view (``method`` ``self_service``) has two more keys: ``sms``
    (:class:`SmsView`, ``None`` before the first send) and ``link_expires_at`` (unix time,
    ``None`` before the first send)."""

    id: str
    call_id: str
    profile: str
    method: str
    state: SessionState
    fields: tuple[FieldView, ...]
    required: tuple[FieldName, ...]
    result: Result | None
    error: ErrorCode | None
    reference: str | None
    amount: Decimal | None
    currency: str
    billing: BillingDetails | None
    caller_held: bool
    provider_leg: ProviderLegState
    version: int
    sms: SmsView | None = None
    link_expires_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, amount as a decimal string (``"12.50"``)."""
        billing = self.billing
        doc: dict[str, Any] = {
            "id": self.id,
            "call_id": self.call_id,
            "profile": self.profile,
            "method": self.method,
            "state": self.state.value,
            "fields": [f.to_dict() for f in self.fields],
            "required": [f.value for f in self.required],
            "result": self.result.value if self.result else None,
            "error": self.error.value if self.error else None,
            "reference": self.reference,
            "amount": str(self.amount) if self.amount is not None else None,
            "currency": self.currency,
            "billing": (
                {
                    "name": billing.name,
                    "address": billing.address,
                    "postal_code": billing.postal_code,
                    "country": billing.country,
                }
                if billing
                else None
            ),
            "caller_held": self.caller_held,
            "provider_leg": self.provider_leg.value,
            "version": self.version,
        }
        if self.method == "self_service":
            doc["sms"] = self.sms.to_dict() if self.sms else None
            doc["link_expires_at"] = self.link_expires_at
        return doc


class FieldCapture:
    """One card field as the agent sees it: a state, a count and asterisks, never a value.
    The self-service session keeps these as the page reports them; the guided one adds the
    digits' buffer (:class:`_Field`)."""

    __slots__ = ("brand", "count", "error", "masked", "name", "state")

    def __init__(self, name: FieldName) -> None:
        self.name = name
        self.state = FieldState.PENDING
        self.count = 0
        self.error: CardError | None = None
        self.brand: CardBrand | None = None
        self.masked = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name.value}, {self.state.value}, digits={self.count})"

    def view(self) -> FieldView:
        valid = {FieldState.COMPLETE: True, FieldState.INVALID: False}.get(self.state)
        return FieldView(
            self.name, self.state, self.count, self.masked, self.brand, valid, self.error
        )


class _Field(FieldCapture):
    """One card field's capture; ``buf`` is the only place its digits live."""

    __slots__ = ("buf",)

    def __init__(self, name: FieldName) -> None:
        super().__init__(name)
        self.buf = bytearray()

    def wipe(self) -> None:
        self.buf[:] = bytes(len(self.buf))
        self.buf.clear()

    def clear(self) -> None:
        self.wipe()
        self.state = FieldState.PENDING
        self.count = 0
        self.error = None
        self.brand = None
        self.masked = ""

    def text(self) -> str:
        return self.buf.decode("ascii")

    def fail(self, code: CardError) -> None:
        self.wipe()
        self.state = FieldState.INVALID
        self.error = code
        self.masked = mask_digits(self.count)


def check_details(profile: PaymentProfile, event: SetDetails) -> tuple[Decimal, BillingDetails]:
    """The amount (quantized to the currency) and billing details of ``event`` if
    ``profile`` takes them; else :class:`SessionError` (no input in its message)."""
    if event.currency != profile.currency:
        raise SessionError(
            SessionErrorCode.CURRENCY_NOT_ALLOWED,
            f"profile {profile.name!r} takes {profile.currency} only",
        )
    amount = event.amount
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise SessionError(SessionErrorCode.BAD_AMOUNT, "amount must be a decimal number")
    if not profile.min_amount <= amount <= profile.max_amount:
        raise SessionError(
            SessionErrorCode.AMOUNT_OUT_OF_RANGE,
            f"amount must be {profile.min_amount}-{profile.max_amount} {profile.currency}",
        )
    places = currency_exponent(profile.currency)
    quantum = Decimal(1).scaleb(-places)
    if amount != amount.quantize(quantum):
        raise SessionError(
            SessionErrorCode.BAD_AMOUNT,
            f"{profile.currency} amounts have at most {places} decimals",
        )
    billing = event.billing
    texts = (billing.name, billing.address, billing.postal_code, billing.country)
    if any(_CARD_LIKE.search(t) for t in texts):
        raise SessionError(
            SessionErrorCode.BILLING_CONTAINS_CARD_NUMBER,
            "billing details must not hold a long number: the caller keys the card",
        )
    if not billing.name.strip() or len(billing.name) > MAX_NAME:
        raise SessionError(SessionErrorCode.BAD_BILLING, f"name must be 1-{MAX_NAME} characters")
    if len(billing.address) > MAX_ADDRESS or len(billing.postal_code) > 20:
        raise SessionError(
            SessionErrorCode.BAD_BILLING,
            f"address at most {MAX_ADDRESS} characters, postal code at most 20",
        )
    if billing.country and not re.fullmatch(r"[A-Z]{2}", billing.country):
        raise SessionError(
            SessionErrorCode.BAD_BILLING, "country must be an ISO 3166 code such as GB"
        )
    return amount.quantize(quantum), billing


# ------------------------------------------------------------------------------ machine


_F = TypeVar("_F", bound=FieldCapture)


class SessionCore(ABC, Generic[_F]):
    """What the guided and the self-service session share: the payment's record (ids,
    amount, billing, result), the agent's view, the one deadline, the step that turns a
    change into ``FieldUpdated``/``SessionUpdated``, and the provider's answer. The methods
    add how an input moves the state (:meth:`_dispatch`), what a deadline means
    (:meth:`_timeout`) and what finishing does besides recording (:meth:`_finish`)."""

    def __init__(
        self,
        session_id: str,
        call_id: str,
        profile: PaymentProfile,
        provider: ProviderConfig,
        fields: dict[FieldName, _F],
        *,
        today: date,
        now: float,
    ) -> None:
        if provider.name != profile.provider:
            raise ValueError(f"profile {profile.name!r} uses provider {profile.provider!r}")
        self.id = session_id
        self.call_id = call_id
        self.profile = profile
        self.provider = provider
        self.today = today
        self.created_at = now
        self.state = SessionState.CREATED
        self.result: Result | None = None
        self.error: ErrorCode | None = None
        self.reference: str | None = None
        self.amount: Decimal | None = None
        self.currency = profile.currency
        self.billing: BillingDetails | None = None
        self.caller_held = False
        self.provider_leg = ProviderLegState.NONE
        self.sms: SmsView | None = None
        self.link_expires_at: float | None = None
        self.version = 1
        self.call_ended: str | None = None
        self._fields = fields
        self._deadline: float | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, call_id={self.call_id!r}, "
            f"state={self.state.value}, version={self.version})"
        )

    # -- public surface

    @property
    def finished(self) -> bool:
        return self.state is SessionState.FINISHED

    @property
    def method(self) -> str:
        return self.profile.method

    def view(self) -> SessionView:
        """What the agent UI may see: states, counts, asterisks, last four after validation
        (and, self-service, ``sms`` and ``link_expires_at``)."""
        fields = tuple(f.view() for f in self._fields.values())
        required = tuple(f.name for f in self._fields.values() if f.state != FieldState.COMPLETE)
        return SessionView(
            id=self.id,
            call_id=self.call_id,
            profile=self.profile.name,
            method=self.profile.method,
            state=self.state,
            fields=fields,
            required=required,
            result=self.result,
            error=self.error,
            reference=self.reference,
            amount=self.amount,
            currency=self.currency,
            billing=self.billing,
            caller_held=self.caller_held,
            provider_leg=self.provider_leg,
            version=self.version,
            sms=self.sms,
            link_expires_at=self.link_expires_at,
        )

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (``None``: no timer)."""
        return self._deadline

    def handle_timer(self, now: float) -> list[Output]:
        """Fire the deadline if ``now`` reached it; early calls do nothing."""
        if self._deadline is None or now < self._deadline:
            return []
        return self._run(self._timeout)

    def handle(self, event: Input, now: float) -> list[Output]:
        """Apply one input. Agent inputs the state refuses raise :class:`SessionError`;
        inputs that no longer matter are ignored."""
        return self._run(lambda out: self._dispatch(event, now, out))

    # -- plumbing

    def _run(self, step: Callable[[list[Output]], None]) -> list[Output]:
        before_fields = {name: f.view() for name, f in self._fields.items()}
        before = self.view()
        out: list[Output] = []
        step(out)
        for name, f in self._fields.items():
            v = f.view()
            b = before_fields[name]
            if (v.state, v.digits, v.brand, v.error) != (b.state, b.digits, b.brand, b.error):
                out.append(FieldUpdated(self.id, name, v.state, v.digits, v.brand, v.error))
        if self.view() != before:
            self.version += 1
            out.append(SessionUpdated(self.id, self.version, self.state))
        return out

    def _require(self, *states: SessionState) -> None:
        if self.state not in states:
            allowed = ", ".join(s.value for s in states)
            raise SessionError(
                SessionErrorCode.WRONG_STATE,
                f"not allowed in state {self.state.value} (only in {allowed})",
            )

    @abstractmethod
    def _dispatch(self, event: Input, now: float, out: list[Output]) -> None: ...

    @abstractmethod
    def _timeout(self, out: list[Output]) -> None: ...

    # -- the provider's answer and the end

    def _provider_result(self, event: ProviderResult, out: list[Output]) -> None:
        if self.finished:
            out.append(LateProviderResult(self.id, event.outcome, event.reference))
            return
        if self.state is not SessionState.PROCESSING:
            return  # nothing was sent: not ours
        if event.outcome == "approved":
            self._finish(Result.SUCCEEDED, None, out, event.reference)
        elif event.outcome == "declined":
            code = event.code if event.code in DECLINE_CODES else ErrorCode.CARD_DECLINED
            self._finish(Result.DECLINED, code, out, event.reference)
        else:
            code = event.code or ErrorCode.PROCESSING_ERROR
            if code in DECLINE_CODES:
                code = ErrorCode.PROCESSING_ERROR
            self._finish(Result.FAILED, code, out, event.reference)

    def _finish(
        self,
        result: Result,
        error: ErrorCode | None,
        out: list[Output],
        reference: str | None = None,
    ) -> None:
        """The one way to ``finished``: the record. A method that touched the call adds
        its call actions before this."""
        self.state = SessionState.FINISHED
        self.result = result
        self.error = error
        self.reference = reference
        self._deadline = None
        out.append(SessionFinished(self.id, result, error, reference))


class PaymentSession(SessionCore[_Field]):
    """One payment on one call (guided method). See the module docstring for the flow."""

    def __init__(
        self,
        session_id: str,
        call_id: str,
        profile: PaymentProfile,
        provider: ProviderConfig,
        *,
        today: date,
        now: float,
    ) -> None:
        if profile.method != "guided":
            raise ValueError(f"profile {profile.name!r}: only guided sessions are modelled yet")
        fields = {name: _Field(name) for name in profile.fields}
        super().__init__(session_id, call_id, profile, provider, fields, today=today, now=now)

    def _dispatch(self, event: Input, now: float, out: list[Output]) -> None:
        match event:
            case KeyPressed(key=key):
                self._key(key, now, out)
            case Proceed():
                self._proceed(now, out)
            case SetDetails():
                self._set_details(event)
            case StartCapture():
                self._start_capture(now, out)
            case ResetField(field=name):
                self._reset_field(name, now)
            case Process():
                self._process(now, out)
            case Cancel():
                self._cancel(out)
            case ProviderAnswered():
                self._provider_answered(now, out)
            case ProviderFailed(reason=reason):
                if self.state is SessionState.PROVIDER_JOINING:
                    self._finish(Result.FAILED, _FAILED_JOIN[reason], out)
            case ProviderHungUp():
                self._provider_hung_up(out)
            case CallerHoldChanged(held=held):
                if not self.finished:  # a finished session is a record, not the call
                    self.caller_held = held
            case CallEnded(by=by):
                self._call_ended(by, out)
            case ProviderResult():
                self._provider_result(event, out)
            case Restarted():
                if not self.finished:
                    self._finish(Result.INTERRUPTED, ErrorCode.PROCESS_RESTART, out)

    # -- agent actions

    def _proceed(self, now: float, out: list[Output]) -> None:
        self._require(SessionState.CREATED)
        self.state = SessionState.PROVIDER_JOINING
        self.provider_leg = ProviderLegState.JOINING
        self.caller_held = True
        out.append(JoinProvider(self.id, self.call_id, self.provider.name))
        out.append(HoldCaller(self.id, self.call_id))
        self._deadline = now + self.provider.answer_timeout_s

    def _set_details(self, event: SetDetails) -> None:
        self._require(
            SessionState.CREATED,
            SessionState.PROVIDER_JOINING,
            SessionState.AWAITING_DETAILS,
            SessionState.CAPTURING,
            SessionState.READY,
        )
        self.amount, self.billing = check_details(self.profile, event)

    def _start_capture(self, now: float, out: list[Output]) -> None:
        self._require(SessionState.AWAITING_DETAILS)
        if self.amount is None:
            raise SessionError(
                SessionErrorCode.DETAILS_REQUIRED, "set amount, currency and billing first"
            )
        self.state = SessionState.CAPTURING
        self.caller_held = False
        out.append(RetrieveCaller(self.id, self.call_id))
        out.append(StartDigitCapture(self.id, self.call_id))
        self._deadline = now + self.profile.capture_timeout_s

    def _reset_field(self, name: FieldName, now: float) -> None:
        self._require(SessionState.CAPTURING, SessionState.READY)
        field = self._fields.get(name)
        if field is None:
            raise SessionError(
                SessionErrorCode.UNKNOWN_FIELD,
                f"profile {self.profile.name!r} does not capture {name.value}",
            )
        field.clear()
        self.state = SessionState.CAPTURING
        self._deadline = now + self.profile.capture_timeout_s

    def _process(self, now: float, out: list[Output]) -> None:
        if self.state in (SessionState.PROCESSING, SessionState.FINISHED):
            return  # idempotent: a retried request changes nothing
        self._require(SessionState.READY)
        f = self._fields
        postal = f[FieldName.POSTAL_CODE].text() if FieldName.POSTAL_CODE in f else None
        card = CardDetails(
            number=f[FieldName.CARD_NUMBER].text(),
            expiry=f[FieldName.EXPIRY].text(),
            cvv=f[FieldName.CVV].text(),
            postal_code=postal,
        )
        for field in f.values():
            field.wipe()
        assert self.amount is not None and self.billing is not None
        self.state = SessionState.PROCESSING
        out.append(StopDigitCapture(self.id, self.call_id))
        out.append(
            ProcessPayment(
                self.id, self.provider.name, self.amount, self.currency, self.billing, card
            )
        )
        self._deadline = now + self.provider.processing_timeout_s

    def _cancel(self, out: list[Output]) -> None:
        self._require(*_BEFORE_PROCESSING)
        self._finish(Result.CANCELLED, ErrorCode.CANCELLED, out)

    # -- call control and provider

    def _provider_answered(self, now: float, out: list[Output]) -> None:
        if self.finished:  # answered after we gave up on it: hang it up again
            out.append(ReleaseProviderLeg(self.id, self.call_id))
        elif self.state is SessionState.PROVIDER_JOINING:
            self.state = SessionState.AWAITING_DETAILS
            self.provider_leg = ProviderLegState.JOINED
            self._deadline = now + self.profile.hold_timeout_s

    def _provider_hung_up(self, out: list[Output]) -> None:
        if self.state is SessionState.PROCESSING:
            self.provider_leg = ProviderLegState.RELEASED  # the result still decides
        elif self.state in _BEFORE_PROCESSING and self.state is not SessionState.CREATED:
            self._finish(Result.FAILED, ErrorCode.PROVIDER_HUNG_UP, out)

    def _call_ended(self, by: str, out: list[Output]) -> None:
        if self.finished:
            return
        self.call_ended = by
        if self.state in _BEFORE_PROCESSING:
            code = ErrorCode.CALLER_HUNG_UP if by == "caller" else ErrorCode.AGENT_HUNG_UP
            self._finish(Result.INTERRUPTED, code, out)

    def _timeout(self, out: list[Output]) -> None:
        code = {
            SessionState.PROVIDER_JOINING: ErrorCode.PROVIDER_NO_ANSWER,
            SessionState.AWAITING_DETAILS: ErrorCode.HOLD_TIMEOUT,
            SessionState.CAPTURING: ErrorCode.CAPTURE_TIMEOUT,
            SessionState.READY: ErrorCode.CAPTURE_TIMEOUT,
            SessionState.PROCESSING: ErrorCode.PROCESSING_TIMEOUT,
        }.get(self.state)
        if code is None:
            self._deadline = None
            return
        self._finish(Result.FAILED, code, out)

    def _finish(
        self,
        result: Result,
        error: ErrorCode | None,
        out: list[Output],
        reference: str | None = None,
    ) -> None:
        """The one way to ``finished``: capture off, provider leg released, caller back."""
        if self.state in (SessionState.CAPTURING, SessionState.READY):
            out.append(StopDigitCapture(self.id, self.call_id))
        out.append(ReleaseProviderLeg(self.id, self.call_id))
        out.append(RetrieveCaller(self.id, self.call_id))
        for field in self._fields.values():
            field.wipe()
        if self.provider_leg is not ProviderLegState.NONE:
            self.provider_leg = ProviderLegState.RELEASED
        self.caller_held = False
        super()._finish(result, error, out, reference)

    # -- key presses

    def _current(self) -> _Field | None:
        for field in self._fields.values():
            if field.state is not FieldState.COMPLETE:
                return field
        return None

    def _key(self, key: str, now: float, out: list[Output]) -> None:
        if self.state not in (SessionState.CAPTURING, SessionState.READY):
            return  # keys outside capture are not card data for this session
        if key not in "0123456789*#" or len(key) != 1:
            return
        self._deadline = now + self.profile.capture_timeout_s
        field = self._current()
        if key == "*":
            if field is not None and field.state is FieldState.CAPTURING:
                field.clear()
            else:
                self._reopen_previous(field)
        elif field is None:
            return  # READY: every field complete; digits and # do nothing
        elif key == "#":
            if field.state is FieldState.CAPTURING:
                self._end_field(field)
        else:
            if field.state is FieldState.INVALID:
                field.clear()
            field.buf.append(ord(key))
            field.count += 1
            field.state = FieldState.CAPTURING
            if field.name is FieldName.CARD_NUMBER:
                field.brand = detect_brand(field.text())
                field.masked = mask_pan(field.text(), valid=False)
            else:
                field.masked = mask_digits(field.count)
            if field.count >= self._max_digits(field):
                self._end_field(field)
        self.state = SessionState.READY if self._current() is None else SessionState.CAPTURING

    def _reopen_previous(self, field: _Field | None) -> None:
        names = list(self._fields)
        index = len(names) if field is None else names.index(field.name)
        if field is not None and field.state is FieldState.INVALID:
            field.clear()
        elif index > 0:
            self._fields[names[index - 1]].clear()

    def _brand(self) -> CardBrand | None:
        pan = self._fields.get(FieldName.CARD_NUMBER)
        return pan.brand if pan is not None and pan.state is FieldState.COMPLETE else None

    def _max_digits(self, field: _Field) -> int:
        if field.name is FieldName.CARD_NUMBER:
            return max_pan_length(field.brand)
        if field.name is FieldName.CVV:
            return max(cvv_lengths(self._brand()))
        return _MAX_DIGITS[field.name]

    def _end_field(self, field: _Field) -> None:
        text = field.text()
        try:
            if field.name is FieldName.CARD_NUMBER:
                field.brand = validate_pan(text)
                field.masked = mask_pan(
                    text, valid=True, show_last_four=self.profile.show_last_four
                )
            elif field.name is FieldName.EXPIRY:
                validate_expiry(text, self.today)
            elif field.name is FieldName.CVV:
                validate_cvv(text, self._brand())
            else:
                validate_postal_code(text)
        except CardValidationError as exc:
            field.fail(exc.code)
            return
        field.state = FieldState.COMPLETE
        if field.name is FieldName.CARD_NUMBER:
            self._recheck_cvv()

    def _recheck_cvv(self) -> None:
        cvv = self._fields.get(FieldName.CVV)
        if cvv is not None and cvv.state is FieldState.COMPLETE:
            try:
                validate_cvv(cvv.text(), self._brand())
            except CardValidationError as exc:
                cvv.fail(exc.code)
