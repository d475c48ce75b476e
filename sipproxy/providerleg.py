"""The provider leg: a third SIP dialog, from the proxy to the payment provider (sans-I/O).

While a payment is taken the call gets a third leg: an INVITE from the proxy to the
provider's SIP URI (a DTMF receiver or IVR), with media anchored on the proxy like the other
two legs, so the provider hears the masked caller and receives the real digits as clean
RFC 4733 events. The B2BUA (:mod:`sipproxy.b2bua`) drives the leg and reports what becomes
of it as call events; this module holds the leg's state and what is particular to it:

- :func:`provider_target`: the Request-URI and the UDP address the leg is sent to;
- :func:`provider_offer`: the SDP offer (one G.711 codec and telephone-event/8000, PT 101);
- :func:`answer_reoffer`: our answer when the provider re-offers (a re-INVITE or UPDATE);
- :func:`failure_reason`: what a final failure response means for the payment logic;
- :class:`ProviderLeg`: the leg's state, from the INVITE to its end.

Simplifications (deliberate): UDP only; every request of the leg goes to the URI's
host:port (the provider is reached as the PBX is, through one known address, whatever its
Contact says); no reliable provisionals, no early media.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from typing import Final, Literal

from sipproxy.dialog import Dialog
from sipproxy.sdp import (
    Direction,
    SdpError,
    SessionDescription,
    audio_codecs,
    parse_sdp,
    set_direction,
)
from sipproxy.sipmessage import SipRequest, SipUri, parse_uri
from sipproxy.transaction import Address, SendMessage, TransactionKey

__all__ = [
    "TELEPHONE_EVENT_PT",
    "ProviderFailure",
    "ProviderLeg",
    "ProviderLegState",
    "answer_reoffer",
    "failure_reason",
    "provider_offer",
    "provider_target",
]

ProviderFailure = Literal["no_answer", "busy", "rejected", "error"]
ProviderLegState = Literal["calling", "ringing", "up", "cancelled"]

TELEPHONE_EVENT_PT: Final = 101
_G711_PT: Final = {"PCMU": 0, "PCMA": 8}
_DEFAULT_PORT: Final = 5060


@dataclass(eq=False)
class ProviderLeg:
    """One provider leg. ``call_id`` is the call's id (:attr:`sipproxy.b2bua.Call.id`).

    States: ``calling`` (INVITE sent, nothing heard), ``ringing`` (a provisional came),
    ``up`` (2xx ACKed: ``dialog`` and ``ack`` are set), ``cancelled`` (no longer the call's
    leg: released or given up while ringing; kept until its INVITE ends so that a 2xx that
    crosses our CANCEL is ACKed and hung up).
    """

    call_id: str
    invite: SipRequest
    key: TransactionKey  # the INVITE's client transaction
    destination: Address
    offer: SessionDescription  # the SDP we last sent the provider
    answer_due: float | None  # give up ringing at this time (None: answered or cancelled)
    state: ProviderLegState = "calling"
    dialog: Dialog | None = None
    ack: SendMessage | None = None  # the ACK for its 2xx, resent if the 2xx comes again
    remote_sdp: SessionDescription | None = None
    # a re-INVITE without SDP we answered with our offer: its server key (the ACK answers)
    local_offer: TransactionKey | None = None

    @property
    def sip_call_id(self) -> str:
        return self.invite.call_id

    def __repr__(self) -> str:
        return f"<ProviderLeg {self.call_id} {self.state}>"


def provider_target(uri: str) -> tuple[str, Address]:
    """The Request-URI and UDP destination of a provider leg to ``uri`` (port 5060 unless
    given). Raises ``ValueError`` for anything that is not a plain ``sip:`` URI over UDP."""
    parsed = parse_uri(uri.strip(), request_uri=True)  # SipParseError is a ValueError
    if not isinstance(parsed, SipUri) or parsed.scheme != "sip":
        raise ValueError("the provider leg needs a sip: URI (it is sent over UDP)")
    transport = parsed.param("transport")
    if transport is not None and transport.lower() != "udp":
        raise ValueError(f"the provider leg is sent over UDP, not {transport}")
    return str(parsed), (parsed.host.strip("[]"), parsed.port or _DEFAULT_PORT)


def provider_offer(address: str, port: int, codec: str) -> SessionDescription:
    """Our SDP offer to the provider: audio at ``address:port``, the caller leg's G.711
    ``codec`` and telephone-event/8000 (PT 101, events 0-16), 20 ms packets, sendrecv.

    Raises ``ValueError`` for another codec or a port out of range.
    """
    name = codec.upper()
    pt = _G711_PT.get(name)
    if pt is None:
        raise ValueError(f"the provider leg offers PCMU or PCMA, not {codec!r}")
    if not 0 < port < 65536:
        raise ValueError(f"media port {port} out of range")
    try:
        family = "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        family = "IP4"  # a host name (RFC 4566 §5.7 allows one)
    te = TELEPHONE_EVENT_PT
    session_id = secrets.randbelow(2**31)  # o= needs no more than uniqueness (RFC 4566 §5.2)
    text = (
        f"v=0\r\no=dtmfmask {session_id} 1 IN {family} {address}\r\ns=dtmfmask\r\n"
        f"c=IN {family} {address}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pt} {te}\r\n"
        f"a=rtpmap:{pt} {name}/8000\r\na=rtpmap:{te} telephone-event/8000\r\n"
        f"a=fmtp:{te} 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    return parse_sdp(text)


_MIRROR: Final[dict[Direction, Direction]] = {"sendonly": "recvonly", "recvonly": "sendonly"}


def answer_reoffer(ours: SessionDescription, offer: SessionDescription) -> SessionDescription:
    """Our answer to the provider's new offer (RFC 3264 §8): our current SDP, same address,
    port and formats, with the direction mirrored (its ``sendonly`` hold gets ``recvonly``).
    The o= version moves only if the direction changed.

    Raises :class:`SdpError` if the offer cannot be answered so: not one active audio
    m-line, or without our codec.
    """
    if len(offer.media) != 1 or offer.media[0].kind != "audio" or offer.media[0].rejected:
        raise SdpError(0, "RFC 3264 §8", "the provider leg keeps one active audio stream")
    ours_codecs = audio_codecs(ours.media[0])
    theirs = audio_codecs(offer.media[0])
    if not any(c.same_format(o) for c in theirs for o in ours_codecs):
        raise SdpError(0, "RFC 3264 §8", "the new offer drops the leg's codec")
    direction = offer.media_direction(offer.media[0])
    return set_direction(ours, _MIRROR.get(direction, direction), 0)


def failure_reason(status: int) -> ProviderFailure:
    """What a 3xx-6xx final response to the provider INVITE means for the payment logic:
    486 Busy Here and 600 Busy Everywhere are ``busy``; 408 and 480 ``no_answer``; any
    other ``rejected`` (a redirect is not followed: the provider's URI is configured)."""
    if status in (486, 600):
        return "busy"
    if status in (408, 480):
        return "no_answer"
    return "rejected"
