"""The sandbox payment provider's SIP user agent: a real UA on loopback that takes the digits.

When an agent conferences the payment provider in, the proxy dials the provider's
``sip_uri`` (INTERFACES.md B) and sends the caller's key presses on that leg as clean
RFC 4733 events (A). For the embedded ``sandbox`` provider this module is the far end: an
asyncio UDP SIP UA that answers the INVITE with an SDP answer (PCMU or PCMA, plus
telephone-event when offered), streams a quiet prompt back so the caller hears the provider
and symmetric-RTP latching works, and decodes the events into a per-dialog digit buffer.

SIP (RFC 3261, UDP only), what a UAS needs and no more:

- INVITE: 100 Trying, 180 Ringing, then the final response chosen by the request-URI user
  (:data:`BEHAVIOURS`). A 2xx is retransmitted from T1, doubling up to T2, until the ACK; after
  64*T1 without one the dialog is ended with a BYE (§13.3.1.4). Non-2xx finals are
  retransmitted the same way until their ACK (§17.2.1, Timer G/H). A retransmitted INVITE
  gets the last response again. An INVITE without SDP gets our offer in the 200 and the
  answer is taken from the ACK.
- CANCEL: 200, then 487 to the INVITE if it had no final response yet (§9.2). No match: 481.
- BYE: 200, the dialog ends and its digits are wiped. OPTIONS and INFO: 200. re-INVITE: 200
  with the same SDP (the same bytes when nothing changed, a new version when the direction or
  the codec did, RFC 3264 §8). Other methods in a dialog: 405; any request naming a dialog we
  do not have: 481. Retransmitted non-INVITE requests get the same response again.
- Malformed datagrams are counted and dropped; an error while handling a message is counted
  and logged (its type only), never raised out of the protocol.

Media: one RTP/RTCP socket pair per dialog (ephemeral, or from ``rtp_ports``). Incoming RTP is
classified by payload type: the negotiated telephone-event goes through
:class:`dtmfmask.rfc4733.EventReceiver` (one digit per key press, whatever the end packets and
retransmissions do), the audio codec is counted, the rest counted apart. Outgoing: a 20 ms
frame per tick, one SSRC, contiguous sequence numbers, timestamps that follow the clock.

Card data: digits live only in each dialog's ``bytearray``, bounded, overwritten and cleared
on BYE, CANCEL, hang-up and :meth:`SandboxUA.close`. Logs carry counts, never values;
:meth:`SandboxDialog.take_digits` is the only way out (a test hook: it returns and wipes).

Run it alone: ``python -m control_api.sandbox_ua --listen 127.0.0.1:5090`` and dial
``sip:sandbox@127.0.0.1:5090`` (or ``busy@``, ``noanswer@``, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import secrets
import signal
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, Literal

import numpy as np
import structlog

from dtmfmask.g711 import alaw_encode, ulaw_encode
from dtmfmask.rfc4733 import EventReceiver, RtpDigitStarted
from dtmfmask.tones import SAMPLE_RATE, dbm0_to_amplitude
from sipproxy.logsetup import configure_logging
from sipproxy.rtp import RtpError, build_rtp, is_rtcp, peek_rtp
from sipproxy.sdp import (
    Codec,
    Direction,
    SdpError,
    SessionDescription,
    audio_codecs,
    parse_sdp,
    telephone_event,
)
from sipproxy.sipmessage import (
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    build_response,
    parse_message,
    parse_name_addr,
    parse_uri,
)

__all__ = [
    "BEHAVIOURS",
    "Behaviour",
    "DialogState",
    "SandboxCounters",
    "SandboxDialog",
    "SandboxUA",
    "main",
]

log = structlog.get_logger("control_api.sandbox_ua")

Addr = tuple[str, int]
Behaviour = Literal["sandbox", "noanswer", "busy", "decline", "error", "hangup"]
DialogState = Literal["ringing", "answered", "confirmed", "terminated"]
"""ringing: 180 sent; answered: 200 sent, no ACK yet; confirmed: ACK received."""
EndedBy = Literal["remote", "local", "cancel", "ack_timeout", "bad_answer", "close"]

BEHAVIOURS: Final[dict[str, Behaviour]] = {
    "sandbox": "sandbox",  # answer
    "noanswer": "noanswer",  # 180, then nothing until CANCEL
    "busy": "busy",  # 486
    "decline": "decline",  # 603
    "error": "error",  # 500
    "hangup": "hangup",  # answer, then BYE hangup_after_s after the ACK
}
"""Request-URI user part -> what the UA does with the INVITE."""

_REJECT: Final[dict[str, int]] = {"busy": 486, "decline": 603, "error": 500}
ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
_SERVER: Final = "dtmfmask-sandbox"
_G711: Final = ("PCMU", "PCMA")
_OFFER_PTS: Final = ((0, "PCMU"), (8, "PCMA"))
_OFFER_EVENT_PT: Final = 101
_FRAME_S: Final = 0.020
_FRAME_SAMPLES: Final = 160
_MAX_DIGITS: Final = 64  # more than any card, expiry and CVV together; beyond: counted, dropped
_TX_MEMORY: Final = 512  # transactions remembered for retransmission matching
_MAX_CATCH_UP: Final = 5  # frames the sender may be late before it re-anchors its clock


# ---------------------------------------------------------------------------------------------
# Counters


@dataclass(slots=True)
class SandboxCounters:
    """Plain ints for the whole UA (per-dialog media counts are on :class:`SandboxDialog`)."""

    sip_received: int = 0
    sip_sent: int = 0
    keepalives: int = 0
    malformed: int = 0  # datagrams that are not SIP: dropped
    internal_errors: int = 0  # a message we failed to handle (a bug): dropped
    send_errors: int = 0
    invites: int = 0  # new INVITEs (not retransmissions, not re-INVITEs)
    answered: int = 0
    rejected: int = 0  # 4xx-6xx finals we chose (busy, decline, error, 404, 488, ...)
    cancelled: int = 0
    reinvites: int = 0
    request_retransmissions: int = 0  # retransmitted requests answered from the cache
    response_retransmissions: int = 0  # 2xx / non-2xx finals resent by our timers
    byes_received: int = 0
    byes_sent: int = 0
    ack_timeouts: int = 0
    no_dialog: int = 0  # 481s
    not_allowed: int = 0  # 405s
    stray: int = 0  # ACKs and responses that matched nothing
    ports_exhausted: int = 0


# ---------------------------------------------------------------------------------------------
# Prompt audio


@cache
def _prompt_frames(codec: str, kind: Literal["tone", "silence"]) -> tuple[bytes, ...]:
    """One second of prompt as 50 encoded 20 ms frames, looped by the sender.

    The tone is a single 425 Hz (a whole number of cycles per second, so the loop is phase
    continuous) at -30 dBm0, 250 ms on and 750 ms off: audible, quiet, and nothing a DTMF
    detector could take for a key (one frequency, not a pair).
    """
    n = SAMPLE_RATE
    if kind == "tone":
        t = np.arange(n) / SAMPLE_RATE
        pcm = dbm0_to_amplitude(-30.0) * np.sin(2 * math.pi * 425.0 * t)
        pcm[n // 4 :] = 0.0
        ramp = np.minimum(1.0, np.arange(n) / 80.0) * np.minimum(1.0, (n // 4 - np.arange(n)) / 80)
        pcm *= np.clip(ramp, 0.0, 1.0)  # 10 ms ramps: no click at either end
    else:
        pcm = np.zeros(n)
    codes = ulaw_encode(pcm) if codec == "PCMU" else alaw_encode(pcm)
    raw = codes.tobytes()
    return tuple(raw[i : i + _FRAME_SAMPLES] for i in range(0, n, _FRAME_SAMPLES))


# ---------------------------------------------------------------------------------------------
# SDP


@dataclass(frozen=True, slots=True)
class _MediaChoice:
    """What we take from an offer (or an answer to our offer)."""

    index: int  # the m-line accepted; every other m-line is rejected
    proto: str
    codec: Codec
    event_pt: int | None
    remote: Addr | None  # None: a null address (RFC 2543 hold) or no c=
    direction: Direction  # ours, as the answer says it


_MIRROR: Final[dict[Direction, Direction]] = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def _choose_media(sdp: SessionDescription) -> _MediaChoice | None:
    """The first audio RTP m-line with PCMU or PCMA at 8 kHz, the codec in the sender's order."""
    for i, m in sdp.audio():
        if m.rejected or not m.proto.upper().startswith("RTP/AVP"):
            continue
        codec = next(
            (c for c in audio_codecs(m) if c.name.upper() in _G711 and c.clock_rate == 8000),
            None,
        )
        if codec is None:
            continue
        event = telephone_event(m, 8000)
        conn = sdp.media_connection(m)
        remote = None if conn is None or conn.is_null else (conn.address, m.port)
        theirs = sdp.media_direction(m)
        # Offer or answer to our offer, the direction written is theirs: ours is its mirror.
        return _MediaChoice(
            i, m.proto, codec, event.payload_type if event else None, remote, _MIRROR[theirs]
        )
    return None


def _addrtype(host: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(host).version == 6 else "IP4"
    except ValueError:
        return "IP4"


def _sdp_text(
    host: str,
    port: int,
    session_id: int,
    version: int,
    media_lines: Sequence[str],
) -> bytes:
    at = _addrtype(host)
    lines = [
        "v=0",
        f"o=sandbox {session_id} {version} IN {at} {host}",
        "s=dtmfmask sandbox provider",
        f"c=IN {at} {host}",
        "t=0 0",
        *media_lines,
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def _answer_media(offer: SessionDescription, choice: _MediaChoice, port: int) -> list[str]:
    out: list[str] = []
    for i, m in enumerate(offer.media):
        if i != choice.index:
            out.append(f"m={m.kind} 0 {m.proto} {m.formats[0] if m.formats else '0'}")
            continue
        pt = choice.codec.payload_type
        fmts = [str(pt)] + ([str(choice.event_pt)] if choice.event_pt is not None else [])
        out.append(f"m=audio {port} {choice.proto} {' '.join(fmts)}")
        out.append(f"a=rtpmap:{pt} {choice.codec.name.upper()}/8000")
        if choice.event_pt is not None:
            out.append(f"a=rtpmap:{choice.event_pt} telephone-event/8000")
            out.append(f"a=fmtp:{choice.event_pt} 0-15")
        out.append("a=ptime:20")
        out.append(f"a={choice.direction}")
    return out


def _offer_media(port: int) -> list[str]:
    fmts = " ".join(str(pt) for pt, _ in _OFFER_PTS)
    out = [f"m=audio {port} RTP/AVP {fmts} {_OFFER_EVENT_PT}"]
    out += [f"a=rtpmap:{pt} {name}/8000" for pt, name in _OFFER_PTS]
    out += [
        f"a=rtpmap:{_OFFER_EVENT_PT} telephone-event/8000",
        f"a=fmtp:{_OFFER_EVENT_PT} 0-15",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return out


# ---------------------------------------------------------------------------------------------
# Timers


class _Retransmit:
    """Resend ``data`` from T1, doubling up to T2, until cancelled; after 64*T1, give up.

    Timer G/H for non-2xx finals, the 2xx retransmission of §13.3.1.4, Timer E/F for our BYE.
    """

    __slots__ = ("_data", "_deadline", "_dest", "_handle", "_interval", "_on_timeout", "_ua")

    def __init__(
        self,
        ua: SandboxUA,
        data: bytes,
        dest: Addr,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._ua = ua
        self._data = data
        self._dest = dest
        self._on_timeout = on_timeout
        self._interval = ua.t1
        self._deadline = loop.time() + 64 * ua.t1
        self._handle: asyncio.TimerHandle | None = loop.call_later(ua.t1, self._fire)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        left = self._deadline - loop.time()
        if left <= 0:
            self._handle = None
            if self._on_timeout is not None:
                self._on_timeout()
            return
        self._ua._send(self._data, self._dest)
        self._ua.counters.response_retransmissions += 1
        self._interval = min(self._interval * 2, self._ua.t2)
        self._handle = loop.call_later(min(self._interval, left), self._fire)

    @property
    def active(self) -> bool:
        return self._handle is not None

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


# ---------------------------------------------------------------------------------------------
# Dialogs


_TxKey = tuple[str, str, str, int]  # top Via branch, sent-by, Call-ID, CSeq number


@dataclass(slots=True, eq=False)
class _InviteTx:
    """A server INVITE transaction: enough to answer retransmissions, CANCEL and the ACK."""

    key: _TxKey
    request: SipRequest
    source: Addr
    dialog: SandboxDialog | None = None
    last_response: bytes | None = None
    final_status: int | None = None
    retransmit: _Retransmit | None = None


@dataclass(slots=True, eq=False)
class _ClientTx:
    """A request we sent (BYE): retransmitted until a final response, then resolved."""

    retransmit: _Retransmit | None
    done: asyncio.Future[int | None]


def _contact_uri(request: SipRequest) -> str | None:
    """The remote target (§12.1.1); None when the Contact is absent or "*" (then the BYE
    goes back where the INVITE came from)."""
    contact = request.headers.get("Contact")
    if not contact or contact.strip() == "*":
        return None
    return str(parse_name_addr(contact).uri)


class SandboxDialog:
    """One call at the sandbox provider: its SIP dialog, its media and its digits.

    Read-only from outside except :meth:`take_digits`. ``audio_packets`` counts RTP in the
    negotiated codec, ``event_packets`` telephone-event packets, ``digits_received`` key
    presses decoded (a count, kept after the digits themselves are wiped).
    """

    def __init__(
        self,
        call_id: str,
        behaviour: Behaviour,
        user: str,
        invite: SipRequest,
        source: Addr,
        local_tag: str,
    ) -> None:
        self.call_id = call_id
        self.behaviour = behaviour
        self.user = user
        self.state: DialogState = "ringing"
        self.ended_by: EndedBy | None = None
        self.local_tag = local_tag
        from_ = invite.from_
        self.remote_tag = from_.tag or ""
        self.remote_header = invite.headers.get("From") or ""
        self.local_header = str(invite.to.with_tag(local_tag))
        self.remote_target = _contact_uri(invite)
        self.route_set: list[str] = invite.headers.get_all("Record-Route")
        self.remote_cseq = invite.cseq.number
        self.local_cseq = secrets.randbelow(1 << 16) + 1
        self.source = source
        # media
        self.local_media: Addr | None = None
        self.remote_media: Addr | None = None
        self.codec: str | None = None
        self.audio_pt: int | None = None
        self.event_pt: int | None = None
        self.direction: Direction = "sendrecv"
        self.audio_packets = 0
        self.event_packets = 0
        self.other_packets = 0
        self.rtcp_packets = 0
        self.rtp_malformed = 0
        self.rtp_sent = 0
        self.digits_received = 0
        self.digits_dropped = 0
        self._digits = bytearray()
        self._receiver: EventReceiver | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._latched = False
        self._sdp_remote: Addr | None = None
        self._ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts_base = secrets.randbits(32)
        self._frame = -1
        self._send_start: float | None = None
        self._prompt: tuple[bytes, ...] = ()
        # SDP and the 2xx we retransmit
        self._session_id = secrets.randbelow(1 << 31)
        self._sdp_version = 1
        self.local_sdp = b""
        self._offer_pending = False  # our offer went in a 200: the answer comes in the ACK
        self._ok_cseq: int | None = None
        self._ok_retransmit: _Retransmit | None = None
        self._hangup: asyncio.TimerHandle | None = None
        self._invite_tx: _InviteTx | None = None
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        # Never the digits: only their count.
        return (
            f"SandboxDialog(call_id={self.call_id!r}, behaviour={self.behaviour!r}, "
            f"state={self.state!r}, codec={self.codec!r}, audio_packets={self.audio_packets}, "
            f"digits_received={self.digits_received})"
        )

    # -- the test hook

    def take_digits(self) -> str:
        """Test hook: the digits buffered so far, which are wiped from the dialog."""
        out = self._digits.decode("ascii")
        self._wipe()
        return out

    def _wipe(self) -> None:
        self._digits[:] = bytes(len(self._digits))  # overwrite before letting go
        self._digits.clear()

    async def wait_for(self, *states: DialogState, timeout: float = 5.0) -> None:
        """Wait until the dialog is in one of ``states`` (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while self.state not in states:
                self._changed.clear()
                await self._changed.wait()

    def _set_state(self, state: DialogState) -> None:
        self.state = state
        self._changed.set()

    # -- media

    @property
    def sending(self) -> bool:
        return (
            self.state in ("answered", "confirmed")
            and self._rtp is not None
            and self.remote_media is not None
            and self.audio_pt is not None
            and self.direction in ("sendrecv", "sendonly")
        )

    def _apply(self, choice: _MediaChoice) -> None:
        self.codec = choice.codec.name.upper()
        self.audio_pt = choice.codec.payload_type
        if choice.event_pt != self.event_pt or self._receiver is None:
            self.event_pt = choice.event_pt
            self._receiver = EventReceiver(() if choice.event_pt is None else (choice.event_pt,))
        if choice.remote != self._sdp_remote or not self._latched:
            # A new address in the SDP (or hold's null address) wins over what we latched.
            self._sdp_remote = self.remote_media = choice.remote
            self._latched = False
        self.direction = choice.direction

    def _on_rtp(self, data: bytes, addr: Addr, now: float) -> None:
        if is_rtcp(data):
            self.rtcp_packets += 1
            return
        try:
            pt, _seq, ts, ssrc, marker, start, stop = peek_rtp(data)
        except RtpError:
            self.rtp_malformed += 1
            return
        if not self._latched and self.remote_media is not None:
            # Symmetric RTP: answer where the stream really comes from (once, the first
            # valid packet), as a provider behind a NAT or a relay would need.
            self._latched = True
            self.remote_media = (addr[0], addr[1])
        if pt == self.event_pt and self._receiver is not None:
            self.event_packets += 1
            events = self._receiver.receive(
                payload_type=pt,
                ssrc=ssrc,
                timestamp=ts,
                marker=marker,
                payload=data[start:stop],
                now=now * 1000.0,
            )
            for ev in events:
                if isinstance(ev, RtpDigitStarted):
                    self._add_digit(ev.digit)
        elif pt == self.audio_pt:
            self.audio_packets += 1
        else:
            self.other_packets += 1

    def _add_digit(self, digit: str) -> None:
        if self.state == "terminated" or len(self._digits) >= _MAX_DIGITS:
            self.digits_dropped += 1
            return
        self._digits += digit.encode("ascii")
        self.digits_received += 1

    def _send_frame(self, now: float) -> None:
        rtp, remote, pt = self._rtp, self.remote_media, self.audio_pt
        if rtp is None or remote is None or pt is None:
            return
        if self._send_start is None:
            self._send_start = now
        frame = round((now - self._send_start) / _FRAME_S)
        if frame <= self._frame:
            frame = self._frame + 1
        first = self._frame < 0
        self._frame = frame
        ts = (self._ts_base + frame * _FRAME_SAMPLES) & 0xFFFFFFFF
        payload = self._prompt[frame % len(self._prompt)]
        packet = build_rtp(pt, self._seq, ts, self._ssrc, payload, marker=first)
        self._seq = (self._seq + 1) & 0xFFFF
        try:
            rtp.sendto(packet, remote)
        except OSError:
            return
        self.rtp_sent += 1

    def _close_media(self) -> None:
        for t in (self._rtp, self._rtcp):
            if t is not None:
                t.close()
        self._rtp = self._rtcp = None


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, dialog: SandboxDialog, rtcp: bool) -> None:
        self.dialog = dialog
        self.rtcp = rtcp

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.rtcp:
            self.dialog.rtcp_packets += 1
            return
        loop = asyncio.get_running_loop()
        self.dialog._on_rtp(data, (str(addr[0]), int(addr[1])), loop.time())

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a peer that went away: the timers end the call


class _SipProtocol(asyncio.DatagramProtocol):
    def __init__(self, ua: SandboxUA) -> None:
        self.ua = ua

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.ua._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self.ua.counters.send_errors += 1


class _NoPorts(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# The UA


class SandboxUA:
    """The sandbox provider's SIP UA on ``host:port`` (UDP; port 0 picks a free one).

    ``rtp_host``: the address in our SDP and where RTP sockets bind (default ``host``).
    ``rtp_ports``: (low, high) range for RTP/RTCP pairs, else ephemeral pairs.
    ``hangup_after_s``: how long the ``hangup`` behaviour waits after the ACK before its BYE.
    ``t1``/``t2``: RFC 3261 timers (tests shorten them). ``prompt``: what we stream back.
    ``max_dialogs``: calls at once (503 beyond); ``keep_ended``: ended dialogs kept for
    inspection (their digits are already wiped).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5090,
        *,
        rtp_host: str | None = None,
        rtp_ports: tuple[int, int] | None = None,
        hangup_after_s: float = 2.0,
        t1: float = 0.5,
        t2: float = 4.0,
        prompt: Literal["tone", "silence"] = "tone",
        max_dialogs: int = 64,
        keep_ended: int = 32,
    ) -> None:
        if rtp_ports is not None and not 0 < rtp_ports[0] < rtp_ports[1] <= 65535:
            raise ValueError("rtp_ports must be (low, high) with 0 < low < high <= 65535")
        unspecified = host in ("0.0.0.0", "::", "")
        if unspecified and not rtp_host:
            # 0.0.0.0 in a Contact or an SDP c= line means nothing (in SDP: hold).
            raise ValueError("listening on all addresses: give rtp_host, the address peers reach")
        self.host = host
        self.port = port
        self.rtp_host = rtp_host or host
        self.advertised_host = self.rtp_host if unspecified else host
        """The address in our Contact and Via (the listening one unless that is 0.0.0.0/::)."""
        self.rtp_ports = rtp_ports
        self.hangup_after_s = hangup_after_s
        self.t1 = t1
        self.t2 = t2
        self.prompt: Literal["tone", "silence"] = prompt
        self.max_dialogs = max_dialogs
        self.counters = SandboxCounters()
        self._transport: asyncio.DatagramTransport | None = None
        self._active: dict[tuple[str, str, str], SandboxDialog] = {}
        self._ended: deque[SandboxDialog] = deque(maxlen=keep_ended)
        self._invites: OrderedDict[_TxKey, _InviteTx] = OrderedDict()
        self._responses: OrderedDict[tuple[_TxKey, str], tuple[bytes, Addr]] = OrderedDict()
        self._client: dict[str, _ClientTx] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._media_task: asyncio.Task[None] | None = None
        self._media_wake = asyncio.Event()
        self._port_cursor = 0

    # -- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _SipProtocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        self._media_task = asyncio.create_task(self._media_loop(), name="sandbox-ua-media")
        log.info("sandbox ua listening", host=self.host, port=self.port)

    async def close(self) -> None:
        """BYE (or 480) every call once, without waiting; wipe digits; close every socket."""
        for dialog in list(self._active.values()):
            if dialog.state in ("answered", "confirmed"):
                self._send_bye(dialog, retransmit=False)
            elif dialog._invite_tx is not None:
                self._final(dialog._invite_tx, 480)
            self._end(dialog, "close")
        for tx in self._invites.values():
            if tx.retransmit is not None:
                tx.retransmit.cancel()
        self._invites.clear()
        for client in self._client.values():
            if client.retransmit is not None:
                client.retransmit.cancel()
            if not client.done.done():
                client.done.set_result(None)
        self._client.clear()
        tasks = [*self._tasks, *([self._media_task] if self._media_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._media_task = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        log.info("sandbox ua closed", port=self.port)

    async def __aenter__(self) -> SandboxUA:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- inspection

    @property
    def address(self) -> Addr:
        """(host, port) the UA listens on (the real port once started)."""
        return (self.host, self.port)

    def uri(self, user: str = "sandbox") -> str:
        """A request URI for ``user`` (a behaviour) at this UA."""
        return f"sip:{user}@{self._hostport()}"

    def _hostport(self) -> str:
        host = self.advertised_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def dialogs(self) -> list[SandboxDialog]:
        """Recently ended dialogs (oldest first), then the live ones."""
        return [*self._ended, *self._active.values()]

    def dialog(self, call_id: str) -> SandboxDialog | None:
        """The live dialog of ``call_id``, else the most recent ended one, else None."""
        for d in reversed(self.dialogs):
            if d.call_id == call_id:
                return d
        return None

    async def hang_up(self, call_id: str) -> int | None:
        """End the live call ``call_id``: BYE when answered (returns the BYE's final status,
        None if it timed out), 480 to the INVITE while it rings (returns None).
        KeyError if there is no such live call."""
        dialog = next((d for d in self._active.values() if d.call_id == call_id), None)
        if dialog is None:
            raise KeyError(call_id)
        if dialog.state == "ringing":
            if dialog._invite_tx is not None:
                self._final(dialog._invite_tx, 480)
            self._end(dialog, "local")
            return None
        done = self._send_bye(dialog)
        self._end(dialog, "local")
        return await done

    # -- sending

    def _send(self, data: bytes, addr: Addr) -> None:
        if self._transport is None:
            return
        try:
            self._transport.sendto(data, addr)
        except OSError:
            self.counters.send_errors += 1
            return
        self.counters.sip_sent += 1

    def _respond(
        self,
        request: SipRequest,
        addr: Addr,
        status: int,
        *,
        reason: str | None = None,
        to_tag: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> bytes:
        hdrs = [*headers, ("Server", _SERVER)]
        response = build_response(request, status, reason, to_tag=to_tag, headers=hdrs, body=body)
        data = response.serialize()
        self._send(data, addr)
        return data

    def _respond_once(
        self,
        key: _TxKey,
        request: SipRequest,
        addr: Addr,
        status: int,
        *,
        to_tag: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A final response to a non-INVITE request, remembered for its retransmissions."""
        data = self._respond(request, addr, status, to_tag=to_tag, headers=headers)
        self._responses[(key, request.method)] = (data, addr)
        while len(self._responses) > _TX_MEMORY:
            self._responses.popitem(last=False)

    def _contact(self, user: str) -> str:
        return f"<sip:{user}@{self._hostport()}>"

    # -- receiving

    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        self.counters.sip_received += 1
        if not data.strip(b"\r\n"):
            self.counters.keepalives += 1  # RFC 5626 CRLF keep-alive
            return
        try:
            message = parse_message(data)
        except SipParseError:
            self.counters.malformed += 1
            return
        try:
            if isinstance(message, SipResponse):
                self._on_response(message)
            else:
                self._on_request(message, addr)
        except Exception as exc:  # a bug must cost one message, not the UA
            self.counters.internal_errors += 1
            log.error("sandbox ua could not handle a message", error=type(exc).__name__)

    @staticmethod
    def _tx_key(request: SipRequest) -> _TxKey:
        top = request.vias[0]
        sent_by = f"{top.host}:{top.port or 5060}"
        return (top.branch or "", sent_by, request.call_id, request.cseq.number)

    def _on_request(self, req: SipRequest, addr: Addr) -> None:
        key = self._tx_key(req)
        method = req.method
        if method == "ACK":
            self._on_ack(req, key)
            return
        if method == "INVITE" and key in self._invites:
            tx = self._invites[key]
            self.counters.request_retransmissions += 1
            if tx.last_response is not None:
                self._send(tx.last_response, addr)
            return
        cached = self._responses.get((key, method))
        if cached is not None:
            self.counters.request_retransmissions += 1
            self._send(cached[0], addr)
            return
        if method == "CANCEL":
            self._on_cancel(req, key, addr)
            return
        require = req.headers.get_all("Require")
        if require:
            self._respond_once(key, req, addr, 420, headers=[("Unsupported", ", ".join(require))])
            return
        to_tag = req.to.tag
        if to_tag is None:
            self._out_of_dialog(req, key, addr)
            return
        dialog = self._active.get((req.call_id, to_tag, req.from_.tag or ""))
        if dialog is None:
            self.counters.no_dialog += 1
            self._respond_once(key, req, addr, 481)
            return
        if req.cseq.number < dialog.remote_cseq:
            self._respond_once(key, req, addr, 500, headers=[("Retry-After", "1")])
            return
        dialog.remote_cseq = req.cseq.number
        if method == "BYE":
            self.counters.byes_received += 1
            self._respond_once(key, req, addr, 200)
            if dialog.state == "ringing" and dialog._invite_tx is not None:
                self._final(dialog._invite_tx, 487)
            self._end(dialog, "remote")
        elif method in ("OPTIONS", "INFO"):
            self._respond_once(key, req, addr, 200, headers=[("Allow", ALLOW)])
        elif method == "INVITE":
            self._reinvite(dialog, req, key, addr)
        else:
            self.counters.not_allowed += 1
            self._respond_once(key, req, addr, 405, headers=[("Allow", ALLOW)])

    def _out_of_dialog(self, req: SipRequest, key: _TxKey, addr: Addr) -> None:
        method = req.method
        if method == "INVITE":
            self._new_invite(req, key, addr)
        elif method == "OPTIONS":
            hdrs = [("Allow", ALLOW), ("Accept", "application/sdp")]
            self._respond_once(key, req, addr, 200, headers=hdrs)
        elif method in ("BYE", "INFO", "UPDATE", "PRACK"):
            self.counters.no_dialog += 1
            self._respond_once(key, req, addr, 481)
        else:
            self.counters.not_allowed += 1
            self._respond_once(key, req, addr, 405, headers=[("Allow", ALLOW)])

    def _on_response(self, resp: SipResponse) -> None:
        vias = resp.vias
        branch = vias[0].branch if vias else None
        client = self._client.get(branch or "")
        if client is None:
            self.counters.stray += 1
            return
        if resp.status < 200:
            return
        del self._client[branch or ""]
        if client.retransmit is not None:
            client.retransmit.cancel()
        if not client.done.done():
            client.done.set_result(resp.status)

    # -- INVITE

    def _remember_invite(self, tx: _InviteTx) -> None:
        self._invites[tx.key] = tx
        while len(self._invites) > _TX_MEMORY:
            _, old = self._invites.popitem(last=False)
            if old.retransmit is not None:
                old.retransmit.cancel()

    def _take_offer(
        self, tx: _InviteTx, body: bytes, refusal: Sequence[tuple[str, str]] = ()
    ) -> tuple[SessionDescription, _MediaChoice] | None:
        """The SDP offer in an INVITE's ``body`` and the media we take from it; else the
        final response sent (400 bad SDP; 488 with the ``refusal`` headers: no codec of
        ours) and ``None``."""
        try:
            offer = parse_sdp(body)
        except SdpError:
            self._final(tx, 400, reason="Bad SDP")
            return None
        choice = _choose_media(offer)
        if choice is None:
            self._final(tx, 488, headers=refusal)
            return None
        return offer, choice

    def _final(
        self,
        tx: _InviteTx,
        status: int,
        *,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A non-2xx final response to an INVITE, retransmitted until its ACK."""
        if tx.final_status is not None:
            return
        tag = tx.dialog.local_tag if tx.dialog is not None else secrets.token_hex(8)
        data = self._respond(
            tx.request, tx.source, status, reason=reason, to_tag=tag, headers=headers
        )
        tx.last_response = data
        tx.final_status = status
        tx.retransmit = _Retransmit(self, data, tx.source)
        if status not in (480, 487):
            self.counters.rejected += 1

    def _new_invite(self, req: SipRequest, key: _TxKey, addr: Addr) -> None:
        self.counters.invites += 1
        tx = _InviteTx(key, req, addr)
        self._remember_invite(tx)
        tx.last_response = self._respond(req, addr, 100)
        uri = parse_uri(req.uri)
        user = uri.user if isinstance(uri, SipUri) and uri.user is not None else ""
        behaviour = BEHAVIOURS.get(user)
        if behaviour is None:
            self._final(tx, 404)
            return
        if behaviour in _REJECT:
            self._final(tx, _REJECT[behaviour])
            log.info("sandbox call rejected", call_id=req.call_id, status=_REJECT[behaviour])
            return
        if len(self._active) >= self.max_dialogs:
            self._final(tx, 503, headers=[("Retry-After", "5")])
            return
        choice: _MediaChoice | None = None
        offer: SessionDescription | None = None
        if req.body:
            ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/sdp":
                self._final(tx, 415, headers=[("Accept", "application/sdp")])
                return
            taken = self._take_offer(tx, req.body, [("Warning", '304 sandbox "PCMU or PCMA only"')])
            if taken is None:
                return
            offer, choice = taken
        dialog = SandboxDialog(req.call_id, behaviour, user, req, addr, secrets.token_hex(8))
        dialog._invite_tx = tx
        tx.dialog = dialog
        self._active[(dialog.call_id, dialog.local_tag, dialog.remote_tag)] = dialog
        hdrs = [("Contact", self._contact(user)), *self._record_route(req)]
        tx.last_response = self._respond(req, addr, 180, to_tag=dialog.local_tag, headers=hdrs)
        if behaviour == "noanswer":
            log.info("sandbox call ringing, never answering", call_id=dialog.call_id)
            return
        self._spawn(self._answer(dialog, tx, offer, choice))

    @staticmethod
    def _record_route(req: SipRequest) -> list[tuple[str, str]]:
        return [("Record-Route", v) for v in req.headers.get_all("Record-Route")]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(
        self,
        dialog: SandboxDialog,
        tx: _InviteTx,
        offer: SessionDescription | None,
        choice: _MediaChoice | None,
    ) -> None:
        try:
            await self._bind_media(dialog)
        except _NoPorts:
            self.counters.ports_exhausted += 1
            self._final(tx, 503, headers=[("Retry-After", "5")])
            self._end(dialog, "local")
            return
        if dialog.state != "ringing" or tx.final_status is not None:
            dialog._close_media()  # cancelled (or hung up) while the sockets were binding
            return
        assert dialog.local_media is not None
        port = dialog.local_media[1]
        if offer is not None and choice is not None:
            dialog._apply(choice)
            media = _answer_media(offer, choice, port)
        else:
            dialog._offer_pending = True
            media = _offer_media(port)
        dialog._prompt = _prompt_frames(dialog.codec or "PCMU", self.prompt)
        dialog.local_sdp = _sdp_text(
            self.rtp_host, port, dialog._session_id, dialog._sdp_version, media
        )
        self._send_ok(dialog, tx)
        self.counters.answered += 1
        log.info(
            "sandbox call answered",
            call_id=dialog.call_id,
            behaviour=dialog.behaviour,
            codec=dialog.codec,
            telephone_event=dialog.event_pt is not None,
        )

    def _send_ok(self, dialog: SandboxDialog, tx: _InviteTx) -> None:
        hdrs = [
            ("Contact", self._contact(dialog.user)),
            *self._record_route(tx.request),
            ("Allow", ALLOW),
            ("Content-Type", "application/sdp"),
        ]
        data = self._respond(
            tx.request, tx.source, 200, to_tag=dialog.local_tag, headers=hdrs, body=dialog.local_sdp
        )
        tx.last_response = data
        tx.final_status = 200
        dialog._ok_cseq = tx.request.cseq.number
        if dialog._ok_retransmit is not None:
            dialog._ok_retransmit.cancel()
        dialog._ok_retransmit = _Retransmit(
            self, data, tx.source, on_timeout=lambda: self._ack_timeout(dialog)
        )
        if dialog.state == "ringing":
            dialog._set_state("answered")
        self._media_wake.set()

    async def _bind_media(self, dialog: SandboxDialog) -> None:
        """An RTP/RTCP pair: even RTP port, RTCP on the next (RFC 3550 §11)."""
        loop = asyncio.get_running_loop()

        async def bind(port: int, rtcp: bool) -> asyncio.DatagramTransport | None:
            try:
                t, _ = await loop.create_datagram_endpoint(
                    lambda: _RtpProtocol(dialog, rtcp), local_addr=(self.rtp_host, port)
                )
            except OSError:
                return None
            return t

        if self.rtp_ports is None:
            candidates: Sequence[int] = [0] * 32
        else:
            lo, hi = self.rtp_ports
            evens = list(range(lo + (lo & 1), hi, 2))
            start = self._port_cursor % max(1, len(evens))
            candidates = evens[start:] + evens[:start]
        for i, want in enumerate(candidates):
            rtp = await bind(want, False)
            if rtp is None:
                continue
            port = int(rtp.get_extra_info("sockname")[1])
            rtcp = None if port & 1 or port >= 65535 else await bind(port + 1, True)
            if rtcp is None:
                rtp.close()
                continue
            if self.rtp_ports is not None:
                self._port_cursor += i + 1
            dialog._rtp, dialog._rtcp = rtp, rtcp
            dialog.local_media = (self.rtp_host, port)
            return
        raise _NoPorts

    def _ack_timeout(self, dialog: SandboxDialog) -> None:
        """64*T1 without an ACK for our 2xx: the session is ended with a BYE (§13.3.1.4)."""
        dialog._ok_retransmit = None
        if dialog.state == "terminated":
            return
        self.counters.ack_timeouts += 1
        self._send_bye(dialog)
        self._end(dialog, "ack_timeout")

    def _on_ack(self, req: SipRequest, key: _TxKey) -> None:
        tx = self._invites.get(key)
        if tx is not None and tx.final_status is not None and tx.final_status >= 300:
            if tx.retransmit is not None:  # the ACK of a non-2xx final (same branch)
                tx.retransmit.cancel()
            return
        to_tag = req.to.tag
        dialog = self._active.get((req.call_id, to_tag or "", req.from_.tag or ""))
        if dialog is None or req.cseq.number != dialog._ok_cseq:
            self.counters.stray += 1
            return
        if dialog._ok_retransmit is not None:
            dialog._ok_retransmit.cancel()
            dialog._ok_retransmit = None
        dialog._ok_cseq = None
        if dialog._offer_pending:
            dialog._offer_pending = False
            choice = self._answer_in_ack(req)
            if choice is None:
                self._send_bye(dialog)
                self._end(dialog, "bad_answer")
                return
            dialog._apply(choice)
            dialog._prompt = _prompt_frames(dialog.codec or "PCMU", self.prompt)
        self._media_wake.set()
        if dialog.state == "answered":
            dialog._set_state("confirmed")
            if dialog.behaviour == "hangup":
                loop = asyncio.get_running_loop()
                dialog._hangup = loop.call_later(
                    self.hangup_after_s, lambda: self._spawn(self._scripted_hangup(dialog))
                )

    @staticmethod
    def _answer_in_ack(req: SipRequest) -> _MediaChoice | None:
        if not req.body:
            return None
        try:
            return _choose_media(parse_sdp(req.body))
        except SdpError:
            return None

    async def _scripted_hangup(self, dialog: SandboxDialog) -> None:
        if dialog.state == "confirmed":
            await self.hang_up(dialog.call_id)

    def _reinvite(self, dialog: SandboxDialog, req: SipRequest, key: _TxKey, addr: Addr) -> None:
        tx = _InviteTx(key, req, addr, dialog)
        self._remember_invite(tx)
        if dialog.state == "ringing" or dialog._ok_cseq is not None:
            # An INVITE of theirs still unanswered or un-ACKed (§14.2).
            self._final(tx, 500, headers=[("Retry-After", "1")])
            return
        self.counters.reinvites += 1
        port = dialog.local_media[1] if dialog.local_media else 0
        if not req.body:
            dialog._offer_pending = True
            media = _offer_media(port)
        else:
            taken = self._take_offer(tx, req.body)
            if taken is None:
                return
            offer, choice = taken
            if dialog.codec is not None:
                # Keep the codec we have when the new offer still has it.
                m = offer.media[choice.index]
                same = next((c for c in audio_codecs(m) if c.name.upper() == dialog.codec), None)
                if same is not None and same.clock_rate == 8000:
                    choice = _MediaChoice(
                        choice.index,
                        choice.proto,
                        same,
                        choice.event_pt,
                        choice.remote,
                        choice.direction,
                    )
            dialog._apply(choice)
            dialog._prompt = _prompt_frames(dialog.codec or "PCMU", self.prompt)
            media = _answer_media(offer, choice, port)
        body = _sdp_text(self.rtp_host, port, dialog._session_id, dialog._sdp_version, media)
        if body != dialog.local_sdp:
            dialog._sdp_version += 1  # RFC 3264 §8: a changed description, a new version
            body = _sdp_text(self.rtp_host, port, dialog._session_id, dialog._sdp_version, media)
        dialog.local_sdp = body
        self._send_ok(dialog, tx)

    # -- CANCEL, BYE and the end of a dialog

    def _on_cancel(self, req: SipRequest, key: _TxKey, addr: Addr) -> None:
        tx = self._invites.get(key)
        if tx is None or tx.request.method != "INVITE":
            self.counters.no_dialog += 1
            self._respond_once(key, req, addr, 481)
            return
        tag = tx.dialog.local_tag if tx.dialog is not None else None
        self._respond_once(key, req, addr, 200, to_tag=tag)
        if tx.final_status is None:
            self.counters.cancelled += 1
            self._final(tx, 487)
            if tx.dialog is not None:
                self._end(tx.dialog, "cancel")

    def _send_bye(
        self, dialog: SandboxDialog, *, retransmit: bool = True
    ) -> asyncio.Future[int | None]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int | None] = loop.create_future()
        branch = "z9hG4bK" + secrets.token_hex(10)
        dialog.local_cseq += 1
        lines = [
            f"BYE {dialog.remote_target or self._fallback_target(dialog)} SIP/2.0",
            f"Via: SIP/2.0/UDP {self._hostport()};branch={branch};rport",
            "Max-Forwards: 70",
            *(f"Route: {r}" for r in dialog.route_set),
            f"From: {dialog.local_header}",
            f"To: {dialog.remote_header}",
            f"Call-ID: {dialog.call_id}",
            f"CSeq: {dialog.local_cseq} BYE",
            f"User-Agent: {_SERVER}",
            "Content-Length: 0",
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        dest = self._next_hop(dialog)
        self._send(data, dest)
        self.counters.byes_sent += 1
        if not retransmit:
            done.set_result(None)
            return done

        def timed_out() -> None:
            self._client.pop(branch, None)
            if not done.done():
                done.set_result(None)

        self._client[branch] = _ClientTx(_Retransmit(self, data, dest, timed_out), done)
        return done

    def _fallback_target(self, dialog: SandboxDialog) -> str:
        host, port = dialog.source
        return f"sip:{host}:{port}" if ":" not in host else f"sip:[{host}]:{port}"

    def _next_hop(self, dialog: SandboxDialog) -> Addr:
        """The first Route (loose routing), else the remote target; the INVITE's source
        when neither gives an IP address."""
        target = dialog.route_set[0] if dialog.route_set else dialog.remote_target
        if target is None:
            return dialog.source
        try:
            uri = parse_name_addr(target).uri if target.lstrip().startswith(("<", '"')) else None
            if uri is None:
                uri = parse_uri(target)
        except SipParseError:
            return dialog.source
        if not isinstance(uri, SipUri):
            return dialog.source
        host = uri.host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return dialog.source
        return (host, uri.port or 5060)

    def _end(self, dialog: SandboxDialog, by: EndedBy) -> None:
        if dialog.state == "terminated":
            return
        dialog.ended_by = by
        for timer in (dialog._ok_retransmit, dialog._hangup):
            if timer is not None:
                timer.cancel()
        dialog._ok_retransmit = dialog._hangup = None
        dialog._close_media()
        keys = dialog.digits_received
        dialog._wipe()
        dialog._set_state("terminated")
        self._active.pop((dialog.call_id, dialog.local_tag, dialog.remote_tag), None)
        self._ended.append(dialog)
        log.info(
            "sandbox call ended",
            call_id=dialog.call_id,
            by=by,
            audio_packets=dialog.audio_packets,
            rtp_sent=dialog.rtp_sent,
            key_presses=keys,
        )

    # -- the media clock

    async def _media_loop(self) -> None:
        """One 20 ms tick for every dialog: a frame each, on an absolute schedule."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            sending = [d for d in self._active.values() if d.sending]
            if not sending:  # idle: no wake-ups until a 200 or an ACK may start a stream
                self._media_wake.clear()
                await self._media_wake.wait()
                next_tick = loop.time()
                continue
            now = loop.time()
            if now - next_tick > _MAX_CATCH_UP * _FRAME_S:
                next_tick = now  # the loop stalled: re-anchor, the dialogs' ts follow the clock
            for dialog in sending:
                dialog._send_frame(now)
            next_tick += _FRAME_S
            await asyncio.sleep(max(0.0, next_tick - loop.time()))


# ---------------------------------------------------------------------------------------------
# CLI


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def _port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit():
        raise argparse.ArgumentTypeError(f"expected low-high, got {text!r}")
    return int(lo), int(hi)


async def _serve(ua: SandboxUA) -> None:
    await ua.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await ua.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m control_api.sandbox_ua",
        description="The sandbox payment provider's SIP UA (answers, decodes RFC 4733 digits).",
    )
    ap.add_argument("--listen", type=_host_port, default=("127.0.0.1", 5090), help="host:port")
    ap.add_argument("--rtp-host", help="address for RTP and the SDP (default: the SIP host)")
    ap.add_argument("--rtp-ports", type=_port_range, help="low-high (default: ephemeral)")
    ap.add_argument("--hangup-after", type=float, default=2.0, help="s, for the hangup user")
    ap.add_argument("--prompt", choices=("tone", "silence"), default="tone")
    ap.add_argument("--log-format", choices=("kv", "json"), default="kv")
    args = ap.parse_args(argv)
    host, port = args.listen
    try:
        ua = SandboxUA(
            host,
            port,
            rtp_host=args.rtp_host,
            rtp_ports=args.rtp_ports,
            hangup_after_s=args.hangup_after,
            prompt=args.prompt,
        )
    except ValueError as exc:
        print(f"sandbox_ua: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=args.log_format)
    try:
        asyncio.run(_serve(ua))
    except OSError as exc:
        print(f"sandbox_ua: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
