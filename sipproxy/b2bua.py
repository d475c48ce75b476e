"""The B2BUA call model, sans-I/O: two dialogs per call, media anchored on the proxy.

A call comes in from a trunk (the caller's leg, "A") and goes out to the upstream PBX (the
agent's leg, "B") as a new INVITE with its own Call-ID, tags and branches. The proxy answers
the caller itself from the PBX's responses, rewrites every SDP so both legs send their RTP
to the proxy's media relay, and forwards in-dialog requests from one leg to the other.

Messages in (``receive``), messages out (:class:`~sipproxy.transaction.SendMessage` in the
returned list), timers by ``deadline()``/``timer(now)``. The media plane is reached through
the narrow :class:`MediaControl` interface; SIP INFO DTMF from the caller is answered here,
handed to the media plane as a digit, and never forwarded toward the agent.

Scope and simplifications (each is deliberate, and logged per call where it applies):

- Calls are set up from trunk to PBX only; an INVITE from a source outside the trunk
  allow-list is refused with 403.
- Early offer only: an INVITE without SDP is refused with 488 (late offer is rare on trunks).
- Reliable provisionals (100rel) are not used on either leg: ``100rel`` is removed from
  Supported toward the PBX, and a caller that *requires* it gets 420.
- In-dialog requests toward the caller go to the address its INVITE came from (symmetric
  signalling, as behind NAT), toward the PBX to the configured upstream.

During a payment a third leg joins the call: the provider leg (``join_provider``), an
INVITE from the proxy to the payment provider (see :mod:`sipproxy.providerleg`). What
happens to calls and provider legs is reported as call events (``take_call_events``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol

import structlog

from sipproxy.dialog import Dialog, DialogError, new_invite, new_tag
from sipproxy.providerleg import (
    ProviderFailure,
    ProviderLeg,
    answer_reoffer,
    failure_reason,
    provider_offer,
    provider_target,
)
from sipproxy.sdp import (
    Codec,
    SdpError,
    SessionDescription,
    anchor_media,
    audio_codecs,
    has_g711,
    negotiate,
    parse_sdp,
    telephone_event,
)
from sipproxy.sipmessage import (
    SipParseError,
    SipRequest,
    SipResponse,
    build_response,
    parse_uri,
    parse_via,
)
from sipproxy.transaction import (
    DEFAULT_TIMERS,
    AckReceived,
    Address,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    TimerConfig,
    TransactionKey,
    TransactionLayer,
    TransactionStateError,
    TransactionTimeout,
    TransportError,
)

log = structlog.get_logger("sipproxy.b2bua")

Side = Literal["caller", "pbx"]
EndedBy = Literal["caller", "agent", "proxy"]
CodecFallback = Literal["reject", "rfc4733_only"]

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE"
# headers carried from one leg's request/response to the other's (the rest is per leg)
_CARRIED = ("Content-Type", "Authorization", "Proxy-Authorization", "Subject", "Priority")
_CARRIED_RESPONSE = ("WWW-Authenticate", "Proxy-Authenticate", "Retry-After", "Warning", "Reason")
_DTMF_INFO_TYPES = ("application/dtmf-relay", "application/dtmf")
_MAX_FORWARDS = 70
_ORPHANS_MAX = 1024  # client INVITEs of ended calls whose late 2xx still needs an ACK
_EVENTS_MAX = 65_536  # call events waiting for take_call_events (drained after each input)
_RPORT = re.compile(r";\s*rport(?=\s*(?:;|$))", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class LegMedia:
    """What SDP negotiation decided for one leg: where its peer listens, and the formats."""

    remote: Address | None  # None: hold with a null address, or no audio
    codec: str | None  # "PCMU" / "PCMA" / other name; None: no common voice codec
    codec_pt: int | None
    telephone_event_pt: int | None
    direction: str


@dataclass(frozen=True, slots=True)
class MediaRequest:
    """A new call needs its media opened: the adapter opens it (sockets take a moment) and
    calls :meth:`B2BUA.media_ready` with the two legs' RTP ports, or
    :meth:`B2BUA.media_failed`."""

    call_id: str
    caller: LegMedia
    masked: bool


# -- call events: what the call-control side hears (drained by take_call_events) -------------


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The PBX answered: the call is up."""

    call_id: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over (every call that started ends with exactly one of these): ``by``
    the caller (BYE, CANCEL), the agent (the PBX's BYE or refusal) or the proxy (timeouts,
    media loss, shutdown)."""

    call_id: str
    by: EndedBy


@dataclass(frozen=True, slots=True)
class ProviderLegAnswered:
    """The provider answered its leg; ``media`` is what its SDP answer agreed."""

    call_id: str
    media: LegMedia


@dataclass(frozen=True, slots=True)
class ProviderLegFailed:
    """The provider leg did not come up: ``busy`` (486/600), ``no_answer`` (408/480, or our
    answer timeout: ``status`` None), ``rejected`` (other finals, or an answer without our
    codec), ``error`` (no response at all, transport error, a 2xx we cannot use)."""

    call_id: str
    reason: ProviderFailure
    status: int | None


@dataclass(frozen=True, slots=True)
class ProviderLegEnded:
    """The provider hung up its answered leg (a leg we release ourselves gives no event)."""

    call_id: str


CallEvent = CallAnswered | CallEnded | ProviderLegAnswered | ProviderLegFailed | ProviderLegEnded


class MediaControl(Protocol):
    """The call-control side of the media plane."""

    def configure(self, call_id: str, side: Side, leg: LegMedia, *, masked: bool) -> None:
        """Apply negotiated media for one leg (``masked``: in-band masking can run)."""

    def release(self, call_id: str) -> None:
        """Free the call's sockets and engine streams."""

    def sip_info_digit(self, call_id: str, digit: str, duration_ms: int, now: float) -> None:
        """A DTMF key press the caller sent as SIP INFO."""

    def provider_media(self, call_id: str, leg: LegMedia | None) -> None:
        """The provider leg's negotiated media (its SDP answer, or a re-offer it made), or
        None: the provider leg is gone (released, failed, ended, or the call ended)."""


@dataclass(frozen=True, slots=True)
class B2BConfig:
    sip_host: str  # our address as peers reach it (Via sent-by, Contact)
    sip_port: int
    pbx: Address
    media_address: str
    trunks_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    codec_fallback: CodecFallback = "reject"
    transport: str = "UDP"
    tcp_port: int | None = None  # where we listen for SIP over TCP (None: same as sip_port)

    @property
    def via(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sip_host}:{self.sip_port}"

    @property
    def contact(self) -> str:
        return f"sip:{self.sip_host}:{self.sip_port}"

    def via_for(self, transport: str) -> str:
        """Our Via sent-by for a request sent over ``transport`` (the caller's leg may be TCP)."""
        if transport == "UDP":
            return self.via
        return f"SIP/2.0/{transport} {self.sip_host}:{self.tcp_port or self.sip_port}"

    def contact_for(self, transport: str) -> str:
        if transport == "UDP":
            return self.contact
        port = self.tcp_port or self.sip_port
        return f"sip:{self.sip_host}:{port};transport={transport.lower()}"


@dataclass(eq=False)
class Call:
    """One call: the caller's leg (we are its UAS) and the PBX leg (we are its UAC), and
    during a payment the provider leg (we are its UAC too)."""

    id: str
    a_invite: SipRequest
    a_key: TransactionKey
    a_source: Address
    a_tag: str
    a_offer: SessionDescription
    ports: tuple[int, int] = (0, 0)
    b_invite: SipRequest | None = None
    b_key: TransactionKey | None = None
    a_dialog: Dialog | None = None
    b_dialog: Dialog | None = None
    state: Literal["trying", "early", "up", "ended"] = "trying"
    cancelled: bool = False
    masked: bool = True
    # forwarded in-dialog requests: our client key -> (side it came from, its server key,
    # the request as received)
    forwarded: dict[TransactionKey, tuple[Side, TransactionKey, SipRequest]] = field(
        default_factory=dict
    )
    # the SDP offer we forwarded on each pending re-INVITE/UPDATE (for the answer's rewrite)
    offers: dict[TransactionKey, SessionDescription] = field(default_factory=dict)
    a_transport: str = "UDP"  # the caller's leg (from its INVITE's Via); the PBX leg is UDP
    # the last SDP each peer sent (caller, PBX) and the last one we sent each of them
    a_sdp: SessionDescription | None = None
    b_sdp: SessionDescription | None = None
    a_sdp_sent: bytes = b""
    b_sdp_sent: bytes = b""
    # a re-INVITE without SDP we answered with an offer: the side whose ACK brings the answer
    local_offer: Side | None = None
    # the ACK we sent for the 2xx of each client INVITE (resent when the 2xx is retransmitted)
    acks: dict[TransactionKey, SendMessage] = field(default_factory=dict)
    started_at: float = 0.0  # ``now`` when the caller's INVITE came
    answered_at: float | None = None
    provider: ProviderLeg | None = None  # the call's provider leg, while it has one
    end_by: EndedBy | None = None  # who asked for the end, when it comes later (CANCEL)

    # parsed once: the agent UI lists calls several times a second (measured: re-parsing
    # the INVITE per listing cost 12 ms per GET /v1/calls at 200 calls)
    @cached_property
    def caller_display(self) -> str:
        """Who calls, for the agent UI: the From display name, else its user part."""
        try:
            from_ = self.a_invite.from_
        except (SipParseError, ValueError):
            return "unknown"
        name = (from_.display_name or "").strip()
        return name or getattr(from_.uri, "user", None) or "unknown"

    @cached_property
    def called_number(self) -> str:
        """The number dialled: the user part of the caller's Request-URI ("" if none)."""
        try:
            uri = parse_uri(self.a_invite.uri, request_uri=True)
        except (SipParseError, ValueError):
            return ""
        return getattr(uri, "user", None) or ""

    @property
    def b_call_id(self) -> str | None:
        return self.b_invite.call_id if self.b_invite is not None else None


@dataclass(slots=True)
class B2BCounters:
    calls_started: int = 0
    calls_answered: int = 0
    calls_failed: int = 0
    calls_ended: int = 0
    refused_trunk: int = 0
    refused_codec: int = 0
    info_digits: int = 0
    options_answered: int = 0
    glare: int = 0
    loops: int = 0
    providers_dialled: int = 0
    providers_answered: int = 0
    providers_failed: int = 0
    events_dropped: int = 0  # call events beyond _EVENTS_MAX not taken (an adapter bug)


class B2BUA:
    def __init__(
        self,
        config: B2BConfig,
        media: MediaControl,
        *,
        timers: TimerConfig = DEFAULT_TIMERS,
        max_calls: int = 10_000,
    ) -> None:
        self.config = config
        self.media = media
        self.layer = TransactionLayer(timers=timers)
        self.max_calls = max_calls
        self.counters = B2BCounters()
        self.draining = False
        self._calls: dict[str, Call] = {}  # by caller-leg Call-ID and by PBX-leg Call-ID
        self._ids = itertools.count(1)
        # call ids name calls in logs, the API and the payments' audit trail, which outlives
        # the process: a per-process prefix keeps them unique across restarts
        self._id_prefix = secrets.token_hex(3)
        self._media_requests: list[MediaRequest] = []
        self._waiting_media: dict[str, Call] = {}
        # client INVITEs of calls that ended while they were pending, or whose 2xx we ACKed:
        # a (late or retransmitted) 2xx still gets its ACK (§13.2.2.4). Bounded.
        self._orphans: dict[TransactionKey, tuple[Dialog, Address, SendMessage | None]] = {}
        self._by_id: dict[str, Call] = {}  # by Call.id
        # provider legs by their own Call-ID: the calls' legs, and cancelled ones that wait
        # for the final response to their INVITE
        self._providers: dict[str, ProviderLeg] = {}
        self._events: list[CallEvent] = []

    # -- inspection --------------------------------------------------------------------------
    @property
    def calls(self) -> list[Call]:
        seen: dict[int, Call] = {}
        for call in self._calls.values():
            seen[id(call)] = call
        return list(seen.values())

    def call_by_id(self, call_id: str) -> Call | None:
        """The call (ringing or up) whose :attr:`Call.id` is ``call_id``."""
        return self._by_id.get(call_id)

    def deadline(self) -> float | None:
        due = self.layer.deadline()
        for leg in self._providers.values():  # a few at most: only calls taking a payment
            if leg.answer_due is not None and (due is None or leg.answer_due < due):
                due = leg.answer_due
        return due

    def take_call_events(self) -> list[CallEvent]:
        """What happened to calls and provider legs since the last call, in order."""
        out, self._events = self._events, []
        return out

    def _emit(self, event: CallEvent) -> None:
        if len(self._events) >= _EVENTS_MAX:  # nobody takes them: bounded all the same
            self.counters.events_dropped += 1
            return
        self._events.append(event)

    # -- input -------------------------------------------------------------------------------
    def receive(
        self, message: SipRequest | SipResponse, source: Address, now: float
    ) -> list[SendMessage]:
        if isinstance(message, SipRequest):
            _mark_received(message, source)
        return self._handle(self.layer.receive(message, now, source=source), now, source)

    def timer(self, now: float) -> list[SendMessage]:
        out = self._handle(self.layer.timer(now), now, None)
        for leg in list(self._providers.values()):
            if leg.answer_due is not None and leg.answer_due <= now:
                out += self._sends(self._provider_not_answering(leg, now))
        return out

    def transport_error(self, key: TransactionKey, now: float) -> list[SendMessage]:
        """The adapter could not send a message of transaction ``key`` (``SendMessage.key``):
        the transaction ends as if it had timed out (a provider leg fails with ``error``)."""
        return self._handle(self.layer.transport_error(key, now), now, None)

    def hangup(self, call: Call, now: float, reason: str) -> list[SendMessage]:
        """End ``call`` from the proxy's side (media timeout, drain, shutdown): BYE both legs,
        or cancel/refuse whatever is still being set up."""
        out: list[Event] = []
        log.info("call ending", call=call.id, reason=reason)
        if call.state == "up":
            out += self._bye(call, "caller", now)
            out += self._bye(call, "pbx", now)
            out += self._abandon_pending(call, now)
        elif call.state in ("trying", "early"):
            out += self._final_to_caller(call, 480 if reason != "shutdown" else 503, now)
            if call.b_key is not None and not call.cancelled:
                # the PBX's final (487, or a 200 that lost the race: ACK and BYE) ends it
                call.cancelled = True
                call.end_by = "proxy"
                out += self.layer.cancel(call.b_key, now)
                return self._sends(out)
        out += self._end(call, "proxy", now)
        return self._sends(out)

    def drain(self) -> None:
        """Refuse new calls from now on (SIGTERM); existing calls go on."""
        self.draining = True

    # -- dispatch ----------------------------------------------------------------------------
    def _handle(
        self, events: Iterable[Event], now: float, source: Address | None
    ) -> list[SendMessage]:
        out: list[Event] = []
        # stray responses and ACKs, terminated transactions: nothing to do (RFC 3261 §18.1.2)
        for ev in events:
            if isinstance(ev, SendMessage):
                out.append(ev)
            elif isinstance(ev, RequestReceived):
                out += self._on_request(ev.request, ev.key, source, now)
            elif isinstance(ev, ResponseReceived):
                out += self._on_response(ev.response, ev.key, now)
            elif isinstance(ev, CancelReceived):
                out += self._on_cancel(ev.key, now)
            elif isinstance(ev, AckReceived):
                self._on_ack(ev.request)
            elif isinstance(ev, TransactionTimeout):
                out += self._on_timeout(ev.key, ev.timer, now)
            elif isinstance(ev, TransportError):  # as if it had timed out (§17.1.4)
                out += self._on_timeout(ev.key, "transport", now)
        return self._sends(out)

    @staticmethod
    def _sends(events: Iterable[Event]) -> list[SendMessage]:
        return [e for e in events if isinstance(e, SendMessage)]

    def _refuse_in_dialog(
        self, dialog: Dialog, request: SipRequest, key: TransactionKey, now: float
    ) -> list[Event] | None:
        """The refusal sent for an in-dialog request that ``dialog`` does not take (481 not
        this dialog's, 500 CSeq out of order); ``None`` when it takes it."""
        try:
            refused = dialog.receive_request(request)
        except DialogError:
            refused = build_response(request, 481)
        return None if refused is None else self.layer.send_response(key, refused, now)

    def _respond(
        self,
        key: TransactionKey,
        request: SipRequest,
        status: int,
        now: float,
        *,
        to_tag: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> list[Event]:
        hdrs = list(headers)
        if 200 <= status < 300 and request.method in ("INVITE", "UPDATE"):
            hdrs.append(("Contact", f"<{self._contact_toward(request)}>"))
        response = build_response(request, status, to_tag=to_tag, headers=hdrs, body=body)
        return self.layer.send_response(key, response, now)

    def _contact_toward(self, request: SipRequest) -> str:
        """Our Contact for the peer that sent ``request`` (``transport=tcp`` if it came so)."""
        return self.config.contact_for(_transport_of(request))

    # -- requests ----------------------------------------------------------------------------
    def _on_request(
        self, request: SipRequest, key: TransactionKey, source: Address | None, now: float
    ) -> list[Event]:
        try:
            to_tag = request.to.tag
            call = self._calls.get(request.call_id)
            leg = self._providers.get(request.call_id)
            max_forwards = request.max_forwards
        except (SipParseError, ValueError):
            return self._respond(key, request, 400, now)
        if leg is not None:
            return self._provider_request(leg, request, key, now)
        if max_forwards == 0 and request.method in ("INVITE", "UPDATE", "INFO", "MESSAGE",
                                                    "NOTIFY", "REFER"):  # fmt: skip
            self.counters.loops += 1
            return self._respond(key, request, 483, now)  # §16.3 step 2: forwarding would loop
        if to_tag:
            if call is None:
                return self._respond(key, request, 481, now)
            return self._in_dialog(call, request, key, now)
        if request.method == "INVITE":
            if call is not None:  # a retransmission is absorbed by the layer; this is a loop
                self.counters.loops += 1  # (our own INVITE to the PBX, routed back to us)
                return self._respond(key, request, 482, now)
            return self._new_call(request, key, source, now)
        if request.method == "OPTIONS":
            self.counters.options_answered += 1
            return self._respond(key, request, 200, now, headers=[("Allow", ALLOW)])
        return self._respond(key, request, 405, now, headers=[("Allow", ALLOW)])

    def _trunk_allowed(self, source: Address | None) -> bool:
        if not self.config.trunks_allow:
            return True
        if source is None:
            return False
        try:
            addr = ipaddress.ip_address(source[0])
        except ValueError:
            return False
        return any(addr in net for net in self.config.trunks_allow)

    def _new_call(
        self, request: SipRequest, key: TransactionKey, source: Address | None, now: float
    ) -> list[Event]:
        if not self._trunk_allowed(source):
            self.counters.refused_trunk += 1
            log.warning("call refused: source not in trunks.allow", source=source)
            return self._respond(key, request, 403, now)
        if self.draining or len(self.calls) >= self.max_calls:
            return self._respond(key, request, 503, now, headers=[("Retry-After", "30")])
        if "100rel" in _option_tags(request, "Require"):
            return self._respond(key, request, 420, now, headers=[("Unsupported", "100rel")])
        if not request.body:
            return self._respond(
                key, request, 488, now, headers=[("Warning", '399 - "no SDP offer"')]
            )
        try:
            offer = parse_sdp(request.body)
            audio = [m for _, m in offer.audio() if not m.rejected]
        except SdpError:
            return self._respond(key, request, 400, now)
        if len(audio) != 1:
            return self._respond(
                key, request, 488, now, headers=[("Warning", '399 - "one audio stream"')]
            )
        masked = has_g711(audio[0])
        call_id = f"c{self._id_prefix}-{next(self._ids)}"
        if not masked:
            if self.config.codec_fallback == "reject":
                self.counters.refused_codec += 1
                log.warning("call refused: no G.711 codec offered", call=call_id)
                return self._respond(key, request, 488, now)
            log.warning("no G.711 codec: RFC 4733-only masking", call=call_id)
        self.counters.calls_started += 1
        assert source is not None  # a trunk-allowed INVITE has a source
        call = Call(
            id=call_id,
            a_invite=request,
            a_key=key,
            a_source=source,
            a_tag=new_tag(),
            a_offer=offer,
            masked=masked,
            a_transport=_transport_of(request),
            a_sdp=offer,
            started_at=now,
        )
        self._calls[request.call_id] = call
        self._by_id[call_id] = call
        self._waiting_media[call_id] = call
        self._media_requests.append(MediaRequest(call_id, _leg_media(offer, None), masked))
        log.info("call started", call=call.id, source=source)
        return []

    def take_media_requests(self) -> list[MediaRequest]:
        """The calls whose media the adapter must open now (see :class:`MediaRequest`)."""
        out, self._media_requests = self._media_requests, []
        return out

    def media_ready(self, call_id: str, ports: tuple[int, int], now: float) -> list[SendMessage]:
        """The call's media is open on ``ports`` (caller-facing, PBX-facing RTP): the INVITE
        goes on to the PBX. If the call ended meanwhile (CANCEL), its media is released."""
        call = self._waiting_media.pop(call_id, None)
        if call is None or call.state == "ended":
            self.media.release(call_id)
            return []
        call.ports = ports
        b_offer = anchor_media(call.a_offer, self.config.media_address, [ports[1]])
        call.b_sdp_sent = b_offer.to_bytes()
        invite = self._pbx_invite(call.a_invite, call.b_sdp_sent)
        call.b_invite = invite
        self._calls[invite.call_id] = call
        call.b_key, out = self.layer.send_request(invite, self.config.pbx, now)
        return self._sends(out)

    def media_failed(self, call_id: str, now: float) -> list[SendMessage]:
        """No media could be opened (ports exhausted): the caller gets 503."""
        call = self._waiting_media.pop(call_id, None)
        if call is None or call.state == "ended":
            return []
        log.warning("call refused: no media ports", call=call.id)
        out = self._final_to_caller(call, 503, now)
        self.counters.calls_failed += 1
        out += self._end(call, "proxy", now)
        return self._sends(out)

    def _pbx_invite(self, a_invite: SipRequest, body: bytes) -> SipRequest:
        pbx_host, pbx_port = self.config.pbx
        uri = parse_uri(a_invite.uri, request_uri=True)
        user = getattr(uri, "user", None)
        request_uri = f"sip:{user}@{pbx_host}:{pbx_port}" if user else f"sip:{pbx_host}:{pbx_port}"
        from_ = a_invite.from_
        to = a_invite.to
        from_user = getattr(from_.uri, "user", None) or "anonymous"
        to_user = getattr(to.uri, "user", None)
        headers = [
            (name, value)
            for name in _CARRIED
            if name != "Content-Type"
            for value in a_invite.headers.get_all(name)
        ]
        # reliable provisionals are not relayed (module docstring): the PBX must not use them
        supported = [t for t in _option_tags(a_invite, "Supported") if t != "100rel"]
        if supported:
            headers.append(("Supported", ", ".join(supported)))
        headers.append(("Allow", ALLOW))
        invite = new_invite(
            request_uri,
            from_uri=f"sip:{from_user}@{self.config.sip_host}",
            to_uri=f"sip:{to_user}@{pbx_host}" if to_user else f"sip:{pbx_host}",
            contact=self.config.contact,
            via=self.config.via,
            from_display_name=from_.display_name,
            headers=headers,
            body=body,
        )
        invite.headers.set("Max-Forwards", str(_next_max_forwards(a_invite)))
        return invite

    def _in_dialog(
        self, call: Call, request: SipRequest, key: TransactionKey, now: float
    ) -> list[Event]:
        side: Side = "caller" if request.call_id == call.a_invite.call_id else "pbx"
        dialog = call.a_dialog if side == "caller" else call.b_dialog
        if dialog is None or call.state == "ended":
            return self._respond(key, request, 481, now)
        refusal = self._refuse_in_dialog(dialog, request, key, now)
        if refusal is not None:
            return refusal
        method = request.method
        if method == "BYE":
            out = self._respond(key, request, 200, now)
            other: Side = "pbx" if side == "caller" else "caller"
            out += self._abandon_pending(call, now)
            out += self._bye(call, other, now)
            log.info("call ended", call=call.id, by=side)
            out += self._end(call, "caller" if side == "caller" else "agent", now)
            return out
        if method in ("INVITE", "UPDATE"):
            refused_status = self._offer_conflict(call, side, request)
            if refused_status is not None:
                self.counters.glare += 1
                log.info("offer refused", call=call.id, side=side, status=refused_status)
                retry = [("Retry-After", "1")] if refused_status == 500 else []
                return self._respond(key, request, refused_status, now, headers=retry)
            if not request.body:
                return self._answer_locally(call, side, request, key, now)
        if method == "OPTIONS":
            return self._respond(key, request, 200, now, headers=[("Allow", ALLOW)])
        if method == "INFO" and side == "caller" and self._is_dtmf_info(request):
            digit, duration = _parse_dtmf_info(request)
            out = self._respond(key, request, 200, now)
            if digit is not None:
                self.counters.info_digits += 1
                self.media.sip_info_digit(call.id, digit, duration, now)
                log.info("digit detected", call=call.id, source="info")
            return out
        if method in ("INVITE", "UPDATE", "INFO", "MESSAGE", "NOTIFY", "REFER"):
            return self._forward(call, side, request, key, now)
        return self._respond(key, request, 405, now, headers=[("Allow", ALLOW)])

    @staticmethod
    def _offer_conflict(call: Call, side: Side, request: SipRequest) -> int | None:
        """491 when an offer is already in flight in either direction (glare, §14.2 and
        RFC 3311 §5.2); 500 (with Retry-After) for a second INVITE from the same side while
        its first is still pending (§14.2)."""
        if call.local_offer is not None:
            return 491
        for from_side, _, pending in call.forwarded.values():
            if pending.method == "INVITE" or (pending.method == "UPDATE" and pending.body):
                if from_side == side and pending.method == request.method == "INVITE":
                    return 500
                return 491
        return None

    def _answer_locally(
        self, call: Call, side: Side, request: SipRequest, key: TransactionKey, now: float
    ) -> list[Event]:
        """A re-INVITE or UPDATE without SDP (a session refresh, or a delayed-offer
        re-INVITE): answered here, not forwarded. A re-INVITE gets our current SDP for that
        leg as the offer in the 200 (RFC 3264 §8: the same o= version, nothing changed); its
        ACK carries the peer's answer, applied to the media in :meth:`_on_ack`."""
        if request.method == "UPDATE":
            return self._respond(key, request, 200, now)
        sdp = call.a_sdp_sent if side == "caller" else call.b_sdp_sent
        if not sdp:
            return self._respond(key, request, 488, now)
        call.local_offer = side
        dialog = call.a_dialog if side == "caller" else call.b_dialog
        to_tag = dialog.local_tag if dialog is not None else None
        return self._respond(
            key, request, 200, now, to_tag=to_tag,
            headers=[("Content-Type", "application/sdp")], body=sdp,
        )  # fmt: skip

    def _on_ack(self, ack: SipRequest) -> None:
        """The ACK for a 2xx we sent: for a re-INVITE answered here, it brings the answer."""
        try:
            call = self._calls.get(ack.call_id)
            leg = self._providers.get(ack.call_id)
        except (SipParseError, ValueError):
            return
        if leg is not None:
            self._provider_ack(leg, ack)
            return
        if call is None or call.local_offer is None or call.state != "up":
            return
        side: Side = "caller" if ack.call_id == call.a_invite.call_id else "pbx"
        if side != call.local_offer:
            return
        call.local_offer = None
        if not ack.body:
            return
        try:
            answer = parse_sdp(ack.body)
        except SdpError:
            log.warning("bad SDP answer in ACK", call=call.id, side=side)
            return
        if side == "caller":
            call.a_sdp = answer
        else:
            call.b_sdp = answer
        self._reconfigure(call)

    def _reconfigure(self, call: Call) -> None:
        if call.a_sdp is not None and call.b_sdp is not None:
            self._configure_media(call, call.a_sdp, call.b_sdp)

    def _abandon_pending(self, call: Call, now: float) -> list[Event]:
        """The dialogs are ending (BYE): requests we forwarded and were not answered get 487
        (§15.1.2); a 2xx that still comes for a forwarded INVITE is ACKed (see _orphans)."""
        out: list[Event] = []
        for ckey, (side, server_key, request) in list(call.forwarded.items()):
            txn = self.layer.get(server_key)
            if txn is not None and not getattr(txn, "has_final", True):
                with contextlib.suppress(Exception):
                    out += self._respond(server_key, request, 487, now)
            if request.method == "INVITE":
                dialog = call.b_dialog if side == "caller" else call.a_dialog
                if dialog is not None:
                    self._orphan(ckey, dialog, self._destination(call, side, other=True), None)
        call.forwarded.clear()
        call.offers.clear()
        return out

    def _orphan(
        self, key: TransactionKey, dialog: Dialog, dest: Address, ack: SendMessage | None
    ) -> None:
        self._orphans[key] = (dialog, dest, ack)
        while len(self._orphans) > _ORPHANS_MAX:
            del self._orphans[next(iter(self._orphans))]

    def _destination(self, call: Call, side: Side, *, other: bool = False) -> Address:
        """Where requests to ``side`` (or to the other side, with ``other``) go."""
        to_caller = (side == "caller") != other
        return call.a_source if to_caller else self.config.pbx

    def _via(self, call: Call, to: Side) -> str:
        return self.config.via_for(call.a_transport if to == "caller" else "UDP")

    def _send_request(
        self, call: Call, to: Side, request: SipRequest, now: float
    ) -> tuple[TransactionKey, list[Event]]:
        reliable = to == "caller" and call.a_transport != "UDP"
        return self.layer.send_request(request, self._destination(call, to), now, reliable=reliable)

    @staticmethod
    def _is_dtmf_info(request: SipRequest) -> bool:
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        return ctype in _DTMF_INFO_TYPES

    def _forward(
        self, call: Call, side: Side, request: SipRequest, key: TransactionKey, now: float
    ) -> list[Event]:
        """Send an in-dialog request on to the other leg, SDP anchored on the proxy."""
        other: Side = "pbx" if side == "caller" else "caller"
        dialog = call.b_dialog if other == "pbx" else call.a_dialog
        if dialog is None:
            return self._respond(key, request, 491, now)
        body = request.body
        offer: SessionDescription | None = None
        if body and request.method in ("INVITE", "UPDATE"):
            try:
                offer = parse_sdp(body)
                port = call.ports[1] if other == "pbx" else call.ports[0]
                body = anchor_media(offer, self.config.media_address, [port]).to_bytes()
            except (SdpError, ValueError):
                return self._respond(key, request, 488, now)
        headers = [(n, v) for n in _CARRIED for v in request.headers.get_all(n)]
        out_req = dialog.build_request(
            request.method, via=self._via(call, other), headers=headers, body=body
        )
        out_req.headers.set("Max-Forwards", str(_next_max_forwards(request)))
        ckey, out = self._send_request(call, other, out_req, now)
        call.forwarded[ckey] = (side, key, request)
        if offer is not None:
            call.offers[ckey] = offer
        return out

    def _bye(self, call: Call, side: Side, now: float) -> list[Event]:
        dialog = call.a_dialog if side == "caller" else call.b_dialog
        if dialog is None:
            return []
        try:
            bye = dialog.build_request("BYE", via=self._via(call, side))
        except DialogError:
            return []
        _, out = self._send_request(call, side, bye, now)
        return out

    def _on_cancel(self, key: TransactionKey, now: float) -> list[Event]:
        call = next((c for c in self.calls if c.a_key == key), None)
        if call is None:
            return self._cancel_forwarded(key, now)
        if call.state not in ("trying", "early"):
            return []
        call.cancelled = True
        call.end_by = "caller"
        out = self._final_to_caller(call, 487, now)
        log.info("call cancelled by the caller", call=call.id)
        if call.b_key is not None:
            return out + self.layer.cancel(call.b_key, now)  # the PBX's final ends the call
        # nothing sent to the PBX yet (its media is being opened): the call ends here
        return out + self._end(call, "caller", now)

    def _cancel_forwarded(self, key: TransactionKey, now: float) -> list[Event]:
        """A CANCEL for a re-INVITE we forwarded: 487 to its sender, CANCEL to the other
        side (sent once that side has answered provisionally, §9.1)."""
        for call in self.calls:
            for ckey, (_, server_key, request) in call.forwarded.items():
                if server_key == key and request.method == "INVITE":
                    log.info("re-INVITE cancelled", call=call.id)
                    out = self._respond(key, request, 487, now)
                    return out + self.layer.cancel(ckey, now)
        return []

    def _final_to_caller(self, call: Call, status: int, now: float) -> list[Event]:
        txn = self.layer.get(call.a_key)
        if txn is None or getattr(txn, "has_final", True):
            return []
        return self._respond(call.a_key, call.a_invite, status, now, to_tag=call.a_tag)

    # -- responses ---------------------------------------------------------------------------
    def _on_response(self, response: SipResponse, key: TransactionKey, now: float) -> list[Event]:
        try:
            call = self._calls.get(response.call_id)
            leg = self._providers.get(response.call_id)
            is_invite_2xx = response.cseq.method == "INVITE" and 200 <= response.status < 300
        except (SipParseError, ValueError):
            return []
        if leg is not None:
            return self._provider_response(leg, response, key, now)
        if is_invite_2xx:
            # a retransmitted 2xx (our ACK was lost), or a late one for an ended call
            if call is not None and key in call.acks:
                dialog = call.b_dialog if key == call.b_key else None
                if dialog is not None and response.to.tag not in (None, dialog.remote_tag):
                    assert call.b_invite is not None
                    return self._refuse_fork(call.id, call.b_invite, self.config.pbx, response, now)
                return [call.acks[key]]
            if call is None and key in self._orphans:
                return self._ack_orphan(key, response)
        if call is None:
            return []
        if key == call.b_key:
            return self._on_pbx_invite_response(call, response, now)
        forwarded = call.forwarded.get(key)
        if forwarded is None:
            return []  # our own BYE/CANCEL and the like: nothing to relay
        return self._relay_response(call, key, forwarded, response, now)

    def _on_pbx_invite_response(self, call: Call, response: SipResponse, now: float) -> list[Event]:
        status = response.status
        assert call.b_invite is not None
        if status == 100:
            return []
        if call.cancelled or call.state == "ended":
            out: list[Event] = []
            if 200 <= status < 300:  # CANCEL lost the race with 200 OK: ACK, then BYE
                try:
                    dialog = Dialog.uac(call.b_invite, response)
                except DialogError:
                    dialog = None
                if dialog is not None:
                    call.b_dialog = dialog
                    out = self._ack_pbx(call, dialog, now)
                    assert call.b_key is not None
                    self._orphan(call.b_key, dialog, self.config.pbx, call.acks[call.b_key])
                    out += self._bye(call, "pbx", now)
            if status >= 200:
                out += self._end(call, "caller", now)  # call.end_by, if set, says who cancelled

            return out
        body = b""
        if response.body and response.status < 300:
            try:
                answer = parse_sdp(response.body)
                self._configure_media(call, call.a_offer, answer)
                body = anchor_media(answer, self.config.media_address, [call.ports[0]]).to_bytes()
                call.b_sdp = answer
            except (SdpError, ValueError):
                log.warning("bad SDP from the PBX", call=call.id)
                body = b""
        headers = [
            (n, v)
            for n in (*_CARRIED_RESPONSE, "Content-Type")
            for v in response.headers.get_all(n)
        ]
        if not body:
            headers = [(n, v) for n, v in headers if n != "Content-Type"]
        if 101 <= status < 200:
            if response.to.tag and call.b_dialog is None:
                with contextlib.suppress(DialogError):
                    call.b_dialog = Dialog.uac(call.b_invite, response)
            call.state = "early"
            a_resp = build_response(
                call.a_invite,
                status,
                response.reason,
                to_tag=call.a_tag,
                headers=headers,
                body=body,
            )
            if body:
                a_resp.headers.add("Contact", f"<{self._contact_toward(call.a_invite)}>")
            return self.layer.send_response(call.a_key, a_resp, now)
        if 200 <= status < 300:
            try:
                dialog = Dialog.uac(call.b_invite, response)
            except DialogError:  # no To tag or no Contact: the PBX leg cannot be a dialog
                log.warning("unusable 2xx from the PBX", call=call.id)
                out = self._final_to_caller(call, 502, now)
                self.counters.calls_failed += 1
                out += self._end(call, "proxy", now)
                return out
            if call.b_dialog is not None and call.b_dialog.remote_tag == dialog.remote_tag:
                dialog.remote_seq = call.b_dialog.remote_seq
            call.b_dialog = dialog
            out = self._ack_pbx(call, dialog, now)
            a_resp = build_response(
                call.a_invite,
                status,
                response.reason,
                to_tag=call.a_tag,
                headers=headers,
                body=body,
            )
            a_resp.headers.add("Contact", f"<{self._contact_toward(call.a_invite)}>")
            out += self.layer.send_response(call.a_key, a_resp, now)
            call.a_sdp_sent = body
            call.a_dialog = Dialog.uas(call.a_invite, a_resp)
            call.state = "up"
            call.answered_at = now
            self.counters.calls_answered += 1
            self._emit(CallAnswered(call.id))
            log.info("call answered", call=call.id)
            return out
        # a final failure: pass it on (401/407 challenges included) and forget the call
        self.counters.calls_failed += 1
        out = self.layer.send_response(
            call.a_key,
            build_response(
                call.a_invite, status, response.reason, to_tag=call.a_tag, headers=headers
            ),
            now,
        )
        log.info("call failed", call=call.id, status=status)
        out += self._end(call, "agent", now)
        return out

    def _ack_pbx(self, call: Call, dialog: Dialog, now: float) -> list[Event]:
        ack = SendMessage(dialog.build_ack(via=self.config.via), self.config.pbx)
        assert call.b_key is not None
        call.acks[call.b_key] = ack
        return [ack]

    def _refuse_fork(
        self, call_id: str, invite: SipRequest, dest: Address, response: SipResponse, now: float
    ) -> list[Event]:
        """A 2xx from a second fork of our ``invite`` (another To tag) to the PBX or the
        provider: the leg already has its dialog, so this one is ACKed and ended at once
        (§13.2.2.4)."""
        try:
            fork = Dialog.uac(invite, response)
        except DialogError:
            return []
        log.info("second 2xx fork hung up", call=call_id)
        out: list[Event] = [SendMessage(fork.build_ack(via=self.config.via), dest)]
        _, sent = self.layer.send_request(fork.build_request("BYE", via=self.config.via), dest, now)
        return out + sent

    def _ack_orphan(self, key: TransactionKey, response: SipResponse) -> list[Event]:
        """A 2xx for a client INVITE of a call that has ended: ACK it (§13.2.2.4; it would
        be resent for 32 s otherwise); for a 2xx never ACKed before, the call was hung up
        meanwhile, so BYE follows (the dialog was established after we hung up)."""
        dialog, dest, ack = self._orphans[key]
        if ack is None:
            try:
                ack = SendMessage(
                    dialog.build_ack(via=self.config.via, invite_seq=response.cseq.number), dest
                )
            except DialogError:
                return []
            self._orphans[key] = (dialog, dest, ack)
        return [ack]

    def _relay_response(
        self,
        call: Call,
        key: TransactionKey,
        forwarded: tuple[Side, TransactionKey, SipRequest],
        response: SipResponse,
        now: float,
    ) -> list[Event]:
        side, server_key, request = forwarded
        if response.status == 100:
            return []
        out: list[Event] = []
        body = b""
        offer = call.offers.get(key)
        other: Side = "pbx" if side == "caller" else "caller"
        if response.body and offer is not None and 200 <= response.status < 300:
            try:
                answer = parse_sdp(response.body)
                port = call.ports[0] if side == "caller" else call.ports[1]
                body = anchor_media(answer, self.config.media_address, [port]).to_bytes()
                other_port = call.ports[1] if side == "caller" else call.ports[0]
                sent = anchor_media(offer, self.config.media_address, [other_port]).to_bytes()
                if side == "caller":
                    call.a_sdp, call.b_sdp = offer, answer
                    call.a_sdp_sent, call.b_sdp_sent = body, sent
                else:
                    call.a_sdp, call.b_sdp = answer, offer
                    call.a_sdp_sent, call.b_sdp_sent = sent, body
                self._reconfigure(call)
            except (SdpError, ValueError):
                log.warning("bad SDP answer", call=call.id, side=other)
                body = b""
        if response.status >= 200:
            call.forwarded.pop(key, None)
            call.offers.pop(key, None)
            if request.method == "INVITE" and 200 <= response.status < 300:
                dialog = call.b_dialog if side == "caller" else call.a_dialog
                if dialog is not None:
                    ack_req = dialog.build_ack(
                        via=self._via(call, other), invite_seq=response.cseq.number
                    )
                    ack = SendMessage(ack_req, self._destination(call, other))
                    call.acks = {key: ack}  # only the latest re-INVITE's 2xx can come again
                    out.append(ack)
        headers = [(n, v) for n in _CARRIED_RESPONSE for v in response.headers.get_all(n)]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        dialog = call.a_dialog if side == "caller" else call.b_dialog
        to_tag = dialog.local_tag if dialog is not None else None
        resp = build_response(
            request, response.status, response.reason, to_tag=to_tag, headers=headers, body=body
        )
        if 200 <= response.status < 300 and request.method in ("INVITE", "UPDATE"):
            resp.headers.add("Contact", f"<{self._contact_toward(request)}>")
        try:
            out += self.layer.send_response(server_key, resp, now)
        except TransactionStateError:  # its transaction is gone (timed out): nothing to answer
            log.info("response for a finished transaction dropped", call=call.id)
        return out

    def _on_timeout(self, key: TransactionKey, timer: str, now: float) -> list[Event]:
        if self._provider_transaction_lost(key):
            return []
        call = next(
            (c for c in self.calls if key in (c.a_key, c.b_key) or key in c.forwarded), None
        )
        if call is None:
            return []
        forwarded = call.forwarded.pop(key, None)
        if forwarded is not None:  # the other side never answered what we forwarded
            call.offers.pop(key, None)
            side, server_key, request = forwarded
            log.info("forwarded request timed out", call=call.id, method=request.method)
            txn = self.layer.get(server_key)
            if txn is None or getattr(txn, "has_final", True):
                return []
            dialog = call.a_dialog if side == "caller" else call.b_dialog
            to_tag = dialog.local_tag if dialog is not None else None
            return self._respond(server_key, request, 408, now, to_tag=to_tag)
        if key == call.b_key and call.state in ("trying", "early"):
            log.info("the PBX did not answer", call=call.id, timer=timer)
            out = self._final_to_caller(call, 408, now)
            self.counters.calls_failed += 1
            out += self._end(call, "proxy", now)
            return out
        if key == call.a_key and timer == "L" and call.state == "up":
            log.info("no ACK from the caller", call=call.id)
            out = self._abandon_pending(call, now)
            out += self._bye(call, "caller", now) + self._bye(call, "pbx", now)
            out += self._end(call, "proxy", now)
            return out
        if timer == "L" and call.local_offer is not None:
            call.local_offer = None  # no ACK (so no answer) for the offer we made in a 2xx
        return []

    # -- the provider leg --------------------------------------------------------------------
    def join_provider(
        self,
        call_id: str,
        uri: str,
        media_port: int,
        codec: str,
        now: float,
        answer_timeout_s: float,
    ) -> list[SendMessage]:
        """Dial the provider leg of call ``call_id`` (:attr:`Call.id`): an INVITE to ``uri``
        (a new dialog: its own Call-ID, tags, branch) offering ``codec`` (the caller leg's
        PCMU or PCMA) and telephone-event at ``media_address:media_port``.

        What becomes of it comes as :class:`ProviderLegAnswered` or
        :class:`ProviderLegFailed`; ringing longer than ``answer_timeout_s`` is cancelled
        (``no_answer``). Raises ``KeyError`` if the call is not up, ``ValueError`` if it
        has a provider leg already, or for a URI or codec the leg cannot use.
        """
        call = self._by_id.get(call_id)
        if call is None or call.state != "up":
            raise KeyError(call_id)
        if call.provider is not None:
            raise ValueError(f"call {call_id} has a provider leg already")
        request_uri, destination = provider_target(uri)
        offer = provider_offer(self.config.media_address, media_port, codec)
        invite = new_invite(
            request_uri,
            from_uri=f"sip:dtmfmask@{self.config.sip_host}",
            to_uri=request_uri,
            contact=self.config.contact,
            via=self.config.via,
            headers=[("Allow", ALLOW)],
            body=offer.to_bytes(),
        )
        key, out = self.layer.send_request(invite, destination, now)
        leg = ProviderLeg(
            call_id=call.id,
            invite=invite,
            key=key,
            destination=destination,
            offer=offer,
            answer_due=now + max(answer_timeout_s, 0.0),
        )
        call.provider = leg
        self._providers[leg.sip_call_id] = leg
        self.counters.providers_dialled += 1
        log.info("provider leg dialled", call=call.id, destination=destination)
        return self._sends(out)

    def release_provider(self, call_id: str, now: float) -> list[SendMessage]:
        """Hang up the call's provider leg: BYE if answered, CANCEL while ringing, nothing
        if there is none (idempotent). No event follows: the caller asked for it."""
        call = self._by_id.get(call_id)
        if call is None or call.provider is None:
            return []
        log.info("provider leg released", call=call.id)
        return self._sends(self._release_leg(call.provider, now))

    def _release_leg(self, leg: ProviderLeg, now: float) -> list[Event]:
        self._detach(leg)
        if leg.state == "up":
            return self._provider_bye(leg, now)
        leg.state = "cancelled"
        # §9.1: sent at once after a provisional, else by the layer when one comes; the
        # final (487, or a 200 that won the race: ACKed and hung up) ends the leg
        return self.layer.cancel(leg.key, now)

    def _detach(self, leg: ProviderLeg) -> bool:
        """The leg is no longer its call's (released, failed, hung up): tell the media plane.
        False if it was not attached."""
        leg.answer_due = None
        call = self._by_id.get(leg.call_id)
        if call is None or call.provider is not leg:
            return False
        call.provider = None
        self.media.provider_media(call.id, None)
        return True

    def _provider_failed(
        self, leg: ProviderLeg, reason: ProviderFailure, status: int | None
    ) -> None:
        if self._detach(leg):
            self.counters.providers_failed += 1
            log.info("provider leg failed", call=leg.call_id, reason=reason, status=status)
            self._emit(ProviderLegFailed(leg.call_id, reason, status))

    def _provider_gone(self, leg: ProviderLeg) -> None:
        """Forget the leg; a 2xx that comes again for its INVITE is still ACKed."""
        self._providers.pop(leg.sip_call_id, None)
        if leg.dialog is not None and leg.ack is not None:
            self._orphan(leg.key, leg.dialog, leg.destination, leg.ack)

    def _provider_bye(self, leg: ProviderLeg, now: float) -> list[Event]:
        self._provider_gone(leg)
        if leg.dialog is None:
            return []
        try:
            bye = leg.dialog.build_request("BYE", via=self.config.via)
        except DialogError:
            return []
        _, out = self.layer.send_request(bye, leg.destination, now)
        return out

    def _provider_not_answering(self, leg: ProviderLeg, now: float) -> list[Event]:
        """The answer timeout: cancel the INVITE and report ``no_answer`` at once."""
        if leg.state not in ("calling", "ringing"):
            leg.answer_due = None
            return []
        leg.state = "cancelled"
        self._provider_failed(leg, "no_answer", None)
        return self.layer.cancel(leg.key, now)

    def _provider_transaction_lost(self, key: TransactionKey) -> bool:
        """A timeout or transport error on a provider leg's transaction. True if it was
        the leg's INVITE: no final response ever came (``error``, unless cancelled)."""
        for leg in self._providers.values():
            if leg.local_offer == key:  # no ACK for the offer we made in a 2xx (Timer L)
                leg.local_offer = None
            if leg.key == key and leg.state != "up":
                self._provider_gone(leg)
                self._provider_failed(leg, "error", None)
                return True
        return False

    def _provider_response(
        self, leg: ProviderLeg, response: SipResponse, key: TransactionKey, now: float
    ) -> list[Event]:
        if key != leg.key:
            return []  # to our CANCEL or BYE: nothing to do
        status = response.status
        if status < 200:
            if status > 100 and leg.state == "calling":
                leg.state = "ringing"
                log.info("provider leg ringing", call=leg.call_id, status=status)
            return []
        if status < 300:
            return self._provider_2xx(leg, response, now)
        self._provider_gone(leg)  # the layer has ACKed it
        if leg.state != "cancelled":
            self._provider_failed(leg, failure_reason(status), status)
        return []

    def _provider_2xx(self, leg: ProviderLeg, response: SipResponse, now: float) -> list[Event]:
        if leg.dialog is not None and leg.ack is not None:
            if response.to.tag == leg.dialog.remote_tag:
                return [leg.ack]  # a retransmission: our ACK was lost
            return self._refuse_fork(leg.call_id, leg.invite, leg.destination, response, now)
        try:
            dialog = Dialog.uac(leg.invite, response)
        except DialogError:  # no To tag or no Contact: no dialog to ACK or hang up
            log.warning("unusable 2xx from the provider", call=leg.call_id)
            self._provider_gone(leg)
            self._provider_failed(leg, "error", response.status)
            return []
        leg.dialog = dialog
        leg.ack = SendMessage(dialog.build_ack(via=self.config.via), leg.destination)
        out: list[Event] = [leg.ack]
        if leg.state == "cancelled":  # the 2xx crossed our CANCEL (§9.1): hang it up
            log.info("provider answered after cancel: hung up", call=leg.call_id)
            return out + self._provider_bye(leg, now)
        media = self._provider_answer(leg, response.body)
        if not isinstance(media, LegMedia):
            log.warning("provider answer unusable", call=leg.call_id, reason=media)
            self._provider_failed(leg, media, response.status)
            return out + self._provider_bye(leg, now)
        leg.state = "up"
        leg.answer_due = None
        self.counters.providers_answered += 1
        self.media.provider_media(leg.call_id, media)
        self._emit(ProviderLegAnswered(leg.call_id, media))
        log.info("provider leg answered", call=leg.call_id, codec=media.codec,
                 telephone_event=media.telephone_event_pt is not None)  # fmt: skip
        return out

    def _provider_answer(self, leg: ProviderLeg, body: bytes) -> LegMedia | ProviderFailure:
        """The provider's media from its SDP answer to our offer (in its 2xx, or in the ACK
        for a re-INVITE we answered with an offer), or why it cannot be used."""
        try:
            answer = parse_sdp(body)
            neg = negotiate(leg.offer, answer)
        except (SdpError, ValueError):  # no SDP, or not an answer to our offer
            return "error"
        if neg.rejected or neg.codec_answer is None:
            return "rejected"
        leg.remote_sdp = answer
        negotiated = (neg.codec_answer, neg.telephone_event_answer)
        return _leg_media(answer, negotiated, neg.media_index)

    def _provider_request(
        self, leg: ProviderLeg, request: SipRequest, key: TransactionKey, now: float
    ) -> list[Event]:
        """A request from the provider in its leg's dialog: BYE ends the leg; a new offer
        (re-INVITE, UPDATE) is answered here and moves the leg's media; OPTIONS and INFO
        get 200 and go nowhere (the provider leg is the proxy's own, not the agent's)."""
        dialog = leg.dialog
        if dialog is None or not request.to.tag:
            return self._respond(key, request, 481, now)
        refusal = self._refuse_in_dialog(dialog, request, key, now)
        if refusal is not None:
            return refusal
        method = request.method
        tag = dialog.local_tag
        if method == "BYE":
            out = self._respond(key, request, 200, now, to_tag=tag)
            self._provider_gone(leg)
            if self._detach(leg):
                log.info("provider hung up", call=leg.call_id)
                self._emit(ProviderLegEnded(leg.call_id))
            return out
        if method in ("INVITE", "UPDATE"):
            if leg.local_offer is not None:
                return self._respond(key, request, 491, now, to_tag=tag)  # §14.2
            return self._provider_reoffer(leg, request, key, now)
        if method == "OPTIONS":
            return self._respond(key, request, 200, now, to_tag=tag, headers=[("Allow", ALLOW)])
        if method == "INFO":
            return self._respond(key, request, 200, now, to_tag=tag)
        return self._respond(key, request, 405, now, to_tag=tag, headers=[("Allow", ALLOW)])

    def _provider_reoffer(
        self, leg: ProviderLeg, request: SipRequest, key: TransactionKey, now: float
    ) -> list[Event]:
        assert leg.dialog is not None
        tag = leg.dialog.local_tag
        sdp_header = [("Content-Type", "application/sdp")]
        if not request.body:
            if request.method == "UPDATE":
                return self._respond(key, request, 200, now, to_tag=tag)  # a refresh
            # a re-INVITE without SDP: our current SDP is the offer, the ACK brings the answer
            leg.local_offer = key
            body = leg.offer.to_bytes()
            return self._respond(key, request, 200, now, to_tag=tag, headers=sdp_header,
                                 body=body)  # fmt: skip
        try:
            offer = parse_sdp(request.body)
            answer = answer_reoffer(leg.offer, offer)
            neg = negotiate(offer, answer)
        except (SdpError, ValueError):
            log.info("provider re-offer refused", call=leg.call_id)
            return self._respond(key, request, 488, now, to_tag=tag)
        leg.offer, leg.remote_sdp = answer, offer
        media = _leg_media(offer, (neg.codec_offer, neg.telephone_event_offer), neg.media_index)
        self.media.provider_media(leg.call_id, media)
        return self._respond(key, request, 200, now, to_tag=tag, headers=sdp_header,
                             body=answer.to_bytes())  # fmt: skip

    def _provider_ack(self, leg: ProviderLeg, ack: SipRequest) -> None:
        """The ACK for our 2xx to a provider re-INVITE: it answers the offer we made."""
        if leg.local_offer is None:
            return
        leg.local_offer = None
        media = self._provider_answer(leg, ack.body)
        if isinstance(media, LegMedia):
            self.media.provider_media(leg.call_id, media)
        else:  # the leg goes on with the media it had
            log.warning("provider re-INVITE: no usable answer in the ACK", call=leg.call_id)

    # -- media -------------------------------------------------------------------------------
    def _configure_media(
        self, call: Call, caller_sdp: SessionDescription, pbx_sdp: SessionDescription
    ) -> None:
        """Both legs' media from the caller's and the PBX's descriptions (offer or answer)."""
        try:
            neg = negotiate(caller_sdp, pbx_sdp)
        except SdpError:
            return
        for side, sdp, codec, te in (
            ("caller", caller_sdp, neg.codec_offer, neg.telephone_event_offer),
            ("pbx", pbx_sdp, neg.codec_answer, neg.telephone_event_answer),
        ):
            leg = _leg_media(sdp, (codec, te), neg.media_index)
            self.media.configure(call.id, side, leg, masked=call.masked)  # type: ignore[arg-type]

    def _end(self, call: Call, by: EndedBy, now: float) -> list[Event]:
        """Forget ``call`` (once): its provider leg is hung up (the BYE or CANCEL is
        returned), its media released, and :class:`CallEnded` reported."""
        if call.state == "ended":
            return []
        call.state = "ended"
        out: list[Event] = []
        if call.provider is not None:
            out += self._release_leg(call.provider, now)
        self.counters.calls_ended += 1
        self._calls.pop(call.a_invite.call_id, None)
        if call.b_call_id is not None:
            self._calls.pop(call.b_call_id, None)
        self._by_id.pop(call.id, None)
        self._emit(CallEnded(call.id, call.end_by or by))
        if self._waiting_media.pop(call.id, None) is not None:
            return out  # media_ready will release what the adapter opened
        for key, ack in call.acks.items():
            dialog = call.b_dialog if ack.destination == self.config.pbx else call.a_dialog
            if dialog is not None:
                self._orphan(key, dialog, ack.destination or self.config.pbx, ack)
        self.media.release(call.id)
        return out


def _leg_media(
    sdp: SessionDescription,
    negotiated: tuple[Codec | None, int | None] | None,
    index: int | None = None,
) -> LegMedia:
    """One leg's media from its SDP: the negotiated codec and telephone-event if given, else
    (an offer not yet answered) the first G.711 codec and telephone-event it offers."""
    if index is None:
        index = next((i for i, m in sdp.audio() if not m.rejected), 0)
    media = sdp.media[index]
    conn = sdp.media_connection(media)
    remote = (
        (conn.address, media.port) if conn is not None and not conn.is_null and media.port else None
    )
    if negotiated is None:
        codec = next((c for c in audio_codecs(media) if c.name.upper() in ("PCMU", "PCMA")), None)
        te_codec = telephone_event(media, 8000)
        te = te_codec.payload_type if te_codec is not None else None
    else:
        codec, te = negotiated
    return LegMedia(
        remote=remote,
        codec=codec.name.upper() if codec else None,
        codec_pt=codec.payload_type if codec else None,
        telephone_event_pt=te,
        direction=sdp.media_direction(media),
    )


def _parse_dtmf_info(request: SipRequest) -> tuple[str | None, int]:
    """The key and duration of an INFO DTMF body (``application/dtmf-relay``: Signal= and
    Duration= lines; ``application/dtmf``: the key alone)."""
    text = request.body.decode("ascii", "replace")
    digit: str | None = None
    duration = 250
    ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype == "application/dtmf":
        candidate = text.strip().upper()
        digit = candidate if candidate in set("0123456789*#ABCD") and len(candidate) == 1 else None
        return digit, duration
    for line in text.splitlines():
        name, _, value = line.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name == "signal" and len(value) == 1 and value.upper() in "0123456789*#ABCD":
            digit = value.upper()
        elif name == "signal" and value.isdigit() and 10 <= int(value) <= 15:
            digit = "*#ABCD"[int(value) - 10]
        elif name == "duration" and value.isdigit():
            duration = min(int(value), 10_000)
    return digit, duration


def _transport_of(request: SipRequest) -> str:
    """The transport of the request's top Via ("UDP", "TCP", ...); UDP if unreadable."""
    try:
        return parse_via(request.headers.get("Via") or "").transport.upper()
    except (SipParseError, ValueError):
        return "UDP"


def _option_tags(request: SipRequest, name: str) -> list[str]:
    """The option tags of Supported/Require, whether one per header or comma-separated."""
    return [
        tag.strip().lower()
        for value in request.headers.get_all(name)
        for tag in value.split(",")
        if tag.strip()
    ]


def _next_max_forwards(request: SipRequest) -> int:
    """The Max-Forwards a request we send on behalf of ``request`` carries: one less (§16.6
    step 3; a B2BUA keeps the count so a loop through it still ends in 483)."""
    try:
        received = request.max_forwards
    except (SipParseError, ValueError):
        received = None
    return _MAX_FORWARDS if received is None else max(min(received - 1, _MAX_FORWARDS), 0)


def _mark_received(request: SipRequest, source: Address) -> None:
    """RFC 3261 §18.2.1 and RFC 3581: note in the top Via where the request really came
    from (``received``; ``rport`` filled in when asked for), so responses to a caller behind
    NAT are understood; they are sent to the source address anyway (symmetric)."""
    top = request.headers.get("Via")
    if top is None:
        return
    try:
        via = parse_via(top)
    except (SipParseError, ValueError):
        return
    host, port = source
    wants_rport = via.has_param("rport") and via.rport is None
    if not wants_rport and via.host.strip("[]") == host:
        return
    value = _RPORT.sub(f";rport={port}", top, count=1) if wants_rport else top
    if via.received is None:
        value += f";received={host}"
    request.headers.pop_first("Via")
    request.headers.prepend("Via", value)
