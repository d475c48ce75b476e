"""The narrow call-control interface the payment logic uses (DESIGN.md "Dependency direction").

``control_api`` never touches the B2BUA or the media plane: it lists calls, asks for the
provider leg, hold, retrieve and digit capture through :class:`CallControl`, and hears back
through :data:`CallControlEvent` dataclasses. :class:`sipproxy.server.SipServer` implements it.

Key values travel only in :class:`Digit`, whose repr hides them, and only for calls whose
capture is on (a payment session is collecting the card).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "CallControl",
    "CallControlEvent",
    "CallGone",
    "CallInfo",
    "CallUp",
    "Digit",
    "HoldChanged",
    "ProviderFailed",
    "ProviderJoined",
    "ProviderLeft",
]

EndedBy = Literal["caller", "agent", "proxy"]
ProviderFailure = Literal["no_answer", "busy", "rejected", "error"]
ProviderLegState = Literal["none", "joining", "joined"]


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What the agent UI may know about a call (no media, no SIP internals)."""

    call_id: str
    caller: str  # the caller's display name, else their number
    called: str  # the dialled number (request-URI user of the caller's INVITE)
    state: Literal["ringing", "up"]
    started_at: float  # unix time
    held: bool
    provider_leg: ProviderLegState


@dataclass(frozen=True, slots=True)
class CallUp:
    call_id: str
    info: CallInfo


@dataclass(frozen=True, slots=True)
class CallGone:
    call_id: str
    by: EndedBy


@dataclass(frozen=True, slots=True, repr=False)
class Digit:
    """A key the caller pressed (counted once across transports) while capture was on."""

    call_id: str
    key: str

    def __repr__(self) -> str:
        return f"Digit(call_id={self.call_id!r})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ProviderJoined:
    call_id: str


@dataclass(frozen=True, slots=True)
class ProviderFailed:
    call_id: str
    reason: ProviderFailure
    status: int | None  # the SIP final response, None for a timeout or transport error


@dataclass(frozen=True, slots=True)
class ProviderLeft:
    """The provider hung up its leg (a leg we released ourselves gives no event)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class HoldChanged:
    call_id: str
    held: bool


CallControlEvent = (
    CallUp | CallGone | Digit | ProviderJoined | ProviderFailed | ProviderLeft | HoldChanged
)


class CallControl(Protocol):
    def calls(self) -> list[CallInfo]:
        """Calls in progress (ringing or up)."""

    def call(self, call_id: str) -> CallInfo | None: ...

    async def join_provider(self, call_id: str, sip_uri: str, answer_timeout_s: float) -> None:
        """Dial the provider leg and mix it into the call. Returns once the INVITE is out; the
        outcome comes as :class:`ProviderJoined` or :class:`ProviderFailed`. Raises KeyError
        (no such call up) or RuntimeError (a provider leg exists, no media ports)."""

    def release_provider(self, call_id: str) -> None:
        """Hang up the provider leg (BYE, or CANCEL while ringing). Idempotent."""

    def hold(self, call_id: str) -> None:
        """The caller hears hold audio instead of the agent. Idempotent; KeyError if gone."""

    def retrieve(self, call_id: str) -> None:
        """Back from hold. Idempotent; a call that is gone is a no-op."""

    def start_capture(self, call_id: str) -> None:
        """From now, the caller's keys go to the subscriber (:class:`Digit`) and to the
        provider leg as RFC 4733 events."""

    def stop_capture(self, call_id: str) -> None:
        """Idempotent."""

    def subscribe(self, handler: Callable[[CallControlEvent], None]) -> None:
        """``handler`` gets every event, on the event loop, in order."""
