"""The payment session's vocabulary: its states and codes, what drives it, what it emits.

Everything here is a frozen dataclass or a string enum (:mod:`control_api.session` is the
machine). Three kinds of event:

- **Inputs** (:data:`Input`): something happened. Agent actions come from the HTTP API
  (:class:`Proceed`, :class:`SetDetails`, :class:`StartCapture`, :class:`ResetField`,
  :class:`Process`, :class:`Cancel`); call events from the call-control adapter
  (:class:`ProviderAnswered`, :class:`ProviderFailed`, :class:`ProviderHungUp`,
  :class:`CallerHoldChanged`, :class:`CallEnded`); key presses from the DSP engine
  (:class:`KeyPressed`); the provider connector's answer (:class:`ProviderResult`); and
  :class:`Restarted` for a session found live in storage after a crash. Self-service sessions
  (:mod:`control_api.selfservice`) add the agent's :class:`SendLink` and
  :class:`SwitchToGuided`, the SMS sender's :class:`SmsOutcome`, and the hosted page's
  :class:`PageOpened`, :class:`FieldProgress` (counts, never values) and :class:`SubmitCard`.
  Time is never an event: it is the ``now`` argument of ``handle`` and ``handle_timer``.
- **Actions** (:data:`Action`): what the call-control adapter and the provider connector must
  do: :class:`JoinProvider`, :class:`HoldCaller`, :class:`RetrieveCaller`,
  :class:`StartDigitCapture`, :class:`StopDigitCapture`, :class:`ProcessPayment`,
  :class:`ReleaseProviderLeg`; for self-service :class:`SendPaymentLink`. All of them are
  idempotent at the adapter: releasing a leg that is gone, or retrieving a caller who hung
  up, is a no-op there.
- **Notifications** (:data:`Notification`): for the API's long-poll, webhooks and the audit log:
  :class:`SessionUpdated`, :class:`FieldUpdated`, :class:`SessionFinished`,
  :class:`LateProviderResult`, and for self-service :class:`CardRefused`.

No event carries card digits in its ``repr`` or ``str``. :class:`ProcessPayment` and
:class:`SubmitCard` carry the card itself (the provider connector needs it) in a
:class:`~control_api.cards.CardDetails`, whose ``repr`` hides it. Phone numbers are shown
masked in ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from control_api.cards import CardBrand, CardDetails, CardError

__all__ = [
    "Action",
    "BillingDetails",
    "CallEnded",
    "CallerHoldChanged",
    "Cancel",
    "CardRefused",
    "ErrorCode",
    "FieldName",
    "FieldProgress",
    "FieldState",
    "FieldUpdated",
    "HoldCaller",
    "Input",
    "JoinProvider",
    "KeyPressed",
    "LateProviderResult",
    "Notification",
    "Output",
    "PageOpened",
    "Proceed",
    "Process",
    "ProcessPayment",
    "ProviderAnswered",
    "ProviderFailed",
    "ProviderHungUp",
    "ProviderLegState",
    "ProviderOutcome",
    "ProviderResult",
    "ReleaseProviderLeg",
    "ResetField",
    "Restarted",
    "Result",
    "RetrieveCaller",
    "SendLink",
    "SendPaymentLink",
    "SessionFinished",
    "SessionState",
    "SessionUpdated",
    "SetDetails",
    "SmsOutcome",
    "StartCapture",
    "StartDigitCapture",
    "StopDigitCapture",
    "SubmitCard",
    "SwitchToGuided",
]

# ----------------------------------------------------------------------------- vocabulary


class FieldName(StrEnum):
    """Card fields, in the order they are captured."""

    CARD_NUMBER = "card_number"
    EXPIRY = "expiry"
    CVV = "cvv"
    POSTAL_CODE = "postal_code"


class FieldState(StrEnum):
    PENDING = "pending"
    """Nothing keyed yet (or reset)."""
    CAPTURING = "capturing"
    """At least one digit keyed, not ended yet."""
    COMPLETE = "complete"
    """Ended and valid."""
    INVALID = "invalid"
    """Ended and refused; ``error`` says why. The next digit starts it again."""


class SessionState(StrEnum):
    """The guided flow, in order, then the self-service states; every state can jump to
    ``finished``."""

    CREATED = "created"
    """The agent picked a profile; nothing happened on the call yet (self-service: no link
    sent yet, the amount is awaited)."""
    PROVIDER_JOINING = "provider_joining"
    """The provider leg is being dialled; the caller is on hold."""
    AWAITING_DETAILS = "awaiting_details"
    """The provider is on the call; the caller is on hold while the agent enters amount,
    currency and billing details."""
    CAPTURING = "capturing"
    """The caller is back and keys the card; digits go to the provider only."""
    READY = "ready"
    """Every required field is complete and valid: the agent may process."""
    PROCESSING = "processing"
    """Sent to the provider; waiting for its result."""
    FINISHED = "finished"
    """``result`` and ``error`` say how it ended."""
    LINK_SENT = "link_sent"
    """Self-service: the SMS with the payment link is queued or sent; the customer has not
    opened the page yet."""
    SMS_FAILED = "sms_failed"
    """Self-service: the SMS could not be sent; the agent may resend or switch to guided."""
    CUSTOMER_ACTIVE = "customer_active"
    """Self-service: the customer opened the page (and may be typing)."""


class Result(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


class ErrorCode(StrEnum):
    """Why a session did not succeed. Stable codes (API, webhooks, audit)."""

    # declined by the issuer (result declined)
    CARD_DECLINED = "card_declined"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    CARD_EXPIRED = "card_expired"
    INVALID_CARD = "invalid_card"
    # the provider (result failed)
    PROVIDER_NO_ANSWER = "provider_no_answer"
    PROVIDER_BUSY = "provider_busy"
    PROVIDER_REJECTED = "provider_rejected"
    PROVIDER_HUNG_UP = "provider_hung_up"
    PROVIDER_ERROR = "provider_error"
    PROCESSING_ERROR = "processing_error"
    PROCESSING_TIMEOUT = "processing_timeout"
    # nobody acted in time (result failed)
    HOLD_TIMEOUT = "hold_timeout"
    CAPTURE_TIMEOUT = "capture_timeout"
    # the agent (result cancelled)
    CANCELLED = "cancelled"
    SWITCHED_TO_GUIDED = "switched_to_guided"
    # self-service: the link expired unused (result failed)
    LINK_EXPIRED = "link_expired"
    # the call or the process went away (result interrupted)
    CALLER_HUNG_UP = "caller_hung_up"
    AGENT_HUNG_UP = "agent_hung_up"
    PROCESS_RESTART = "process_restart"


class ProviderLegState(StrEnum):
    NONE = "none"
    JOINING = "joining"
    JOINED = "joined"
    RELEASED = "released"


ProviderOutcome = Literal["approved", "declined", "error"]


@dataclass(frozen=True, slots=True)
class BillingDetails:
    """What the agent enters for the cardholder (no card data: checked by the session)."""

    name: str
    address: str = ""
    postal_code: str = ""
    country: str = ""


# ---------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Proceed:
    """Agent: start the payment (guided: dial the provider in and hold the caller)."""


@dataclass(frozen=True, slots=True)
class SetDetails:
    """Agent: amount (in major units: ``Decimal("12.50")``), currency (ISO 4217), billing."""

    amount: Decimal
    currency: str
    billing: BillingDetails


@dataclass(frozen=True, slots=True)
class StartCapture:
    """Agent: retrieve the caller and let them key the card."""


@dataclass(frozen=True, slots=True)
class ResetField:
    """Agent: clear ``field`` so the caller keys it again."""

    field: FieldName


@dataclass(frozen=True, slots=True)
class Process:
    """Agent: send the card to the provider."""


@dataclass(frozen=True, slots=True)
class Cancel:
    """Agent: abandon the payment (refused once processing started)."""


@dataclass(frozen=True, slots=True)
class KeyPressed:
    """DSP engine: the caller pressed ``key`` (``0``-``9``, ``*``, ``#``; others ignored)."""

    key: str

    def __repr__(self) -> str:
        return "KeyPressed(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ProviderAnswered:
    """Call control: the provider leg answered (200 OK) and is mixed into the call."""


@dataclass(frozen=True, slots=True)
class ProviderFailed:
    """Call control: the provider leg could not be set up: ``no_answer`` (408/480 or no
    response), ``busy`` (486/600), ``rejected`` (any other 4xx-6xx), ``error`` (transport)."""

    reason: Literal["no_answer", "busy", "rejected", "error"]
    status: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderHungUp:
    """Call control: the provider sent BYE (or its leg died)."""


@dataclass(frozen=True, slots=True)
class CallerHoldChanged:
    """Call control: the caller was held or retrieved (e.g. the agent's manual retrieve)."""

    held: bool


@dataclass(frozen=True, slots=True)
class CallEnded:
    """Call control: the call ended; ``by`` who hung up."""

    by: Literal["caller", "agent"]


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """Provider connector: the answer to :class:`ProcessPayment`. ``code`` is required for
    ``declined`` (one of the decline codes) and optional for ``error``."""

    outcome: ProviderOutcome
    code: ErrorCode | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class Restarted:
    """Storage: this session was live when the process stopped; it cannot go on (a
    self-service session waiting for the customer can: it ignores this unless processing)."""


def _masked_phone(number: str) -> str:
    digits = number[1:] if number.startswith("+") else number
    if len(digits) < 7:
        return "*" * len(number)
    return "+" + digits[:2] + "*" * (len(digits) - 5) + digits[-3:]


@dataclass(frozen=True, slots=True)
class SendLink:
    """Agent (self-service): send the payment link by SMS to ``to`` (E.164); again, to resend
    (the earlier link is revoked)."""

    to: str

    def __repr__(self) -> str:
        return f"SendLink(to={_masked_phone(self.to)!r})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SwitchToGuided:
    """Agent (self-service): give up the link; the service starts a guided session."""


@dataclass(frozen=True, slots=True)
class SmsOutcome:
    """SMS sender: what happened to the link's message (``queued`` in the outbox, ``sent``
    by a gateway, or ``failed`` with an error code of :data:`control_api.sms.SMS_ERRORS`).
    ``link`` is the link's number (1, 2, ...): the answer about an older send is ignored."""

    state: Literal["queued", "sent", "failed"]
    error: str | None = None
    link: int = 0


@dataclass(frozen=True, slots=True)
class PageOpened:
    """Hosted page: the customer opened the link."""


@dataclass(frozen=True, slots=True)
class FieldProgress:
    """Hosted page: the customer has ``digits`` characters in ``field`` (counts only, never
    the values); ``brand`` as the page detects it from the number's first digits."""

    field: FieldName
    digits: int
    brand: CardBrand | None = None


@dataclass(frozen=True, slots=True, repr=False)
class SubmitCard:
    """Hosted page: the customer submitted the card (checked by the session, then sent to
    the provider as :class:`ProcessPayment`)."""

    card: CardDetails
    today: date | None = None
    """The date the expiry is checked against (default: the session's ``today``)."""

    def __repr__(self) -> str:
        return f"SubmitCard({self.card!r})"

    __str__ = __repr__


Input = (
    Proceed
    | SetDetails
    | StartCapture
    | ResetField
    | Process
    | Cancel
    | KeyPressed
    | ProviderAnswered
    | ProviderFailed
    | ProviderHungUp
    | CallerHoldChanged
    | CallEnded
    | ProviderResult
    | Restarted
    | SendLink
    | SwitchToGuided
    | SmsOutcome
    | PageOpened
    | FieldProgress
    | SubmitCard
)

# --------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class JoinProvider:
    """Dial the provider leg and mix it into the call."""

    session_id: str
    call_id: str
    provider: str


@dataclass(frozen=True, slots=True)
class HoldCaller:
    session_id: str
    call_id: str


@dataclass(frozen=True, slots=True)
class RetrieveCaller:
    session_id: str
    call_id: str


@dataclass(frozen=True, slots=True)
class StartDigitCapture:
    """Route the caller's key presses to this session and to the provider leg (masked for the
    agent in any case)."""

    session_id: str
    call_id: str


@dataclass(frozen=True, slots=True)
class StopDigitCapture:
    session_id: str
    call_id: str


@dataclass(frozen=True, slots=True)
class ReleaseProviderLeg:
    session_id: str
    call_id: str


@dataclass(frozen=True, slots=True, repr=False)
class ProcessPayment:
    """Ask the provider to authorise. The adapter hands ``card`` to the connector and drops
    it; answer with :class:`ProviderResult`."""

    session_id: str
    provider: str
    amount: Decimal
    currency: str
    billing: BillingDetails
    card: CardDetails

    def __repr__(self) -> str:
        return (
            f"ProcessPayment(session_id={self.session_id!r}, provider={self.provider!r}, "
            f"amount={self.amount!r}, currency={self.currency!r}, card={self.card!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SendPaymentLink:
    """Self-service: issue link number ``link`` for the session, valid until ``expires_at``
    (the session's clock: wall time), and send it by SMS to ``to``; answer with
    :class:`SmsOutcome`."""

    session_id: str
    to: str
    expires_at: float
    link: int

    def __repr__(self) -> str:
        return (
            f"SendPaymentLink(session_id={self.session_id!r}, to={_masked_phone(self.to)!r}, "
            f"link={self.link})"
        )

    __str__ = __repr__


Action = (
    JoinProvider
    | HoldCaller
    | RetrieveCaller
    | StartDigitCapture
    | StopDigitCapture
    | ReleaseProviderLeg
    | ProcessPayment
    | SendPaymentLink
)

# --------------------------------------------------------------------------- notifications


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """The agent's view changed; ``version`` is the new one (ETag, long-poll wake-up)."""

    session_id: str
    version: int
    state: SessionState


@dataclass(frozen=True, slots=True)
class FieldUpdated:
    """A field's state or digit count changed (audit: counts and states, never digits)."""

    session_id: str
    field: FieldName
    state: FieldState
    digits: int
    brand: CardBrand | None
    error: CardError | None


@dataclass(frozen=True, slots=True)
class SessionFinished:
    session_id: str
    result: Result
    error: ErrorCode | None
    reference: str | None


@dataclass(frozen=True, slots=True)
class LateProviderResult:
    """A provider answer after the session finished (timed out or interrupted): the money may
    have moved, so an operator must reconcile it."""

    session_id: str
    outcome: ProviderOutcome
    reference: str | None


@dataclass(frozen=True, slots=True)
class CardRefused:
    """Self-service: the card the page submitted was refused (``field`` and the code; never
    the value). Nothing was sent; the customer may correct it and submit again."""

    session_id: str
    field: FieldName
    error: CardError


Notification = SessionUpdated | FieldUpdated | SessionFinished | LateProviderResult | CardRefused
Output = Action | Notification
