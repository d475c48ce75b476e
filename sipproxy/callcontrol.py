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
from typing import TYPE_CHECKING, Literal, Protocol

import structlog

from sipproxy.b2bua import (
    Call,
    CallAnswered,
    CallEnded,
    ProviderLegAnswered,
    ProviderLegEnded,
    ProviderLegFailed,
)
from sipproxy.b2bua import CallEvent as B2BCallEvent
from sipproxy.media import CallDigit, LegParams
from sipproxy.relay import PortsExhausted

if TYPE_CHECKING:
    from sipproxy.server import SipServer

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
    "ProxyCallControl",
]

log = structlog.get_logger("sipproxy.callcontrol")

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


# --------------------------------------------------------------------------- the proxy's side


@dataclass(slots=True)
class _CallState:
    held: bool = False
    capture: bool = False
    provider: ProviderLegState = "none"
    announced: bool = False  # CallUp sent


class ProxyCallControl:
    """:class:`CallControl` on a running :class:`~sipproxy.server.SipServer`.

    The server hands over the B2BUA's call events and the media plane's digits; this class
    keeps what the payment logic may see (hold, capture, provider leg state) and turns its
    requests into B2BUA and media-plane calls. Everything runs on the event loop.
    """

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self._handlers: list[Callable[[CallControlEvent], None]] = []
        self._state: dict[str, _CallState] = {}
        server.on_call_event = self._on_call_event
        server.on_digit = self._on_digit

    # -- queries -------------------------------------------------------------------------------
    def calls(self) -> list[CallInfo]:
        offset = self.server.unix_time(0.0)  # loop clock -> unix time, once per listing
        return [
            info
            for call in self.server.b2bua.calls
            if (info := self._info(call, offset)) is not None
        ]

    def call(self, call_id: str) -> CallInfo | None:
        call = self._find(call_id)
        return None if call is None else self._info(call, self.server.unix_time(0.0))

    def _find(self, call_id: str) -> Call | None:
        return self.server.b2bua.call_by_id(call_id)

    def _info(self, call: Call, offset: float) -> CallInfo | None:
        if call.state not in ("early", "up", "trying"):
            return None
        st = self._state.get(call.id) or _CallState()
        return CallInfo(
            call_id=call.id,
            caller=call.caller_display,
            called=call.called_number,
            state="up" if call.state == "up" else "ringing",
            started_at=offset + call.started_at,
            held=st.held,
            provider_leg=st.provider,
        )

    # -- requests ------------------------------------------------------------------------------
    async def join_provider(self, call_id: str, sip_uri: str, answer_timeout_s: float) -> None:
        call = self._find(call_id)
        if call is None or call.state != "up":
            raise KeyError(call_id)
        st = self._state.setdefault(call_id, _CallState())
        if st.provider != "none":
            raise RuntimeError(f"call {call_id} already has a provider leg")
        handle = self.server.relay.calls.get(call_id)
        if handle is None:
            raise RuntimeError(f"call {call_id} has no media")
        st.provider = "joining"
        try:
            port = await self.server.relay.open_provider(call_id)
        except (PortsExhausted, OSError) as exc:
            st.provider = "none"
            raise RuntimeError(f"no media port for the provider leg: {exc}") from exc
        if self._find(call_id) is None or st.provider != "joining":
            self.server.relay.close_provider(call_id)  # the call ended while binding
            raise KeyError(call_id)
        codec = handle.media.caller.codec
        handle.media.attach_provider(LegParams(codec=codec), self.server.now())
        try:
            sends = self.server.b2bua.join_provider(
                call_id, sip_uri, port, codec, self.server.now(), answer_timeout_s
            )
        except (KeyError, ValueError) as exc:
            st.provider = "none"
            handle.media.detach_provider()
            self.server.relay.close_provider(call_id)
            if isinstance(exc, KeyError):
                raise
            raise RuntimeError(str(exc)) from exc
        self.server.dispatch(sends)
        log.info("provider leg dialled", call=call_id)

    def release_provider(self, call_id: str) -> None:
        st = self._state.get(call_id)
        if st is None or st.provider == "none":
            return
        st.provider = "none"
        # the B2BUA's release tells the media plane (RelayMedia.provider_media(None)), which
        # detaches the leg and frees its ports
        self.server.dispatch(self.server.b2bua.release_provider(call_id, self.server.now()))

    def hold(self, call_id: str) -> None:
        call = self._find(call_id)
        handle = self.server.relay.calls.get(call_id)
        if call is None or handle is None:
            raise KeyError(call_id)
        st = self._state.setdefault(call_id, _CallState())
        if st.held:
            return
        st.held = True
        handle.media.set_hold(True)
        self._emit(HoldChanged(call_id, True))

    def retrieve(self, call_id: str) -> None:
        st = self._state.get(call_id)
        if st is None or not st.held:
            return
        st.held = False
        handle = self.server.relay.calls.get(call_id)
        if handle is not None:
            handle.media.set_hold(False)
        self._emit(HoldChanged(call_id, False))

    def start_capture(self, call_id: str) -> None:
        handle = self.server.relay.calls.get(call_id)
        if handle is None or self._find(call_id) is None:
            raise KeyError(call_id)
        self._state.setdefault(call_id, _CallState()).capture = True
        handle.media.set_capture(True)

    def stop_capture(self, call_id: str) -> None:
        st = self._state.get(call_id)
        if st is None or not st.capture:
            return
        st.capture = False
        handle = self.server.relay.calls.get(call_id)
        if handle is not None:
            handle.media.set_capture(False)

    def subscribe(self, handler: Callable[[CallControlEvent], None]) -> None:
        self._handlers.append(handler)

    # -- from the server -----------------------------------------------------------------------
    def _emit(self, event: CallControlEvent) -> None:
        for handler in list(self._handlers):
            try:
                handler(event)
            except Exception as exc:  # one subscriber's bug must not stop the others
                log.error("call event handler failed", error=type(exc).__name__)

    def _on_call_event(self, event: B2BCallEvent) -> None:
        call_id = event.call_id
        if isinstance(event, CallAnswered):
            call = self._find(call_id)
            state = self._state.setdefault(call_id, _CallState())
            info = None if call is None else self._info(call, self.server.unix_time(0.0))
            if info is not None and not state.announced:
                state.announced = True
                self._emit(CallUp(call_id, info))
        elif isinstance(event, CallEnded):
            gone = self._state.pop(call_id, None)
            if gone is not None and gone.announced:
                self._emit(CallGone(call_id, event.by))
        elif isinstance(event, ProviderLegAnswered):
            st = self._state.get(call_id)
            if st is None or st.provider != "joining":
                return
            st.provider = "joined"
            self._emit(ProviderJoined(call_id))
        elif isinstance(event, ProviderLegFailed | ProviderLegEnded):
            # the leg's media is already gone: the B2BUA told the media plane first
            st = self._state.get(call_id)
            if st is None or st.provider == "none":
                return
            st.provider = "none"
            if isinstance(event, ProviderLegFailed):
                self._emit(ProviderFailed(call_id, event.reason, event.status))
            else:
                self._emit(ProviderLeft(call_id))

    def _on_digit(self, digit: CallDigit) -> None:
        st = self._state.get(digit.call_id)
        if st is not None and st.capture:
            self._emit(Digit(digit.call_id, digit.digit))
