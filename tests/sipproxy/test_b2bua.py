"""The B2BUA call model, message by message (sans-I/O, simulated time, fake media plane)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest

from sipproxy.b2bua import B2BUA, B2BConfig, LegMedia
from sipproxy.sdp import parse_sdp
from sipproxy.sipmessage import SipRequest, SipResponse, build_response, parse_message
from sipproxy.transaction import SendMessage

CALLER = ("127.0.0.1", 5061)
PBX = ("127.0.0.1", 5070)
OFFER = (
    "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
)
ANSWER = (
    "v=0\r\no=pbx 7 7 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    "m=audio 50000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


G729_OFFER = OFFER.replace("0 8 101", "18 101").replace(
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n", "a=rtpmap:18 G729/8000\r\n"
)


@dataclass
class FakeMedia:
    allocated: list[str] = field(default_factory=list)
    configured: list[tuple[str, str, LegMedia, bool]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    digits: list[tuple[str, str, int]] = field(default_factory=list)

    def configure(self, call_id: str, side: str, leg: LegMedia, *, masked: bool) -> None:
        self.configured.append((call_id, side, leg, masked))

    def release(self, call_id: str) -> None:
        self.released.append(call_id)

    def sip_info_digit(self, call_id: str, digit: str, duration_ms: int, now: float) -> None:
        self.digits.append((call_id, digit, duration_ms))


def invite(body: str = OFFER, *, call_id: str = "a1@caller", extra: str = "") -> SipRequest:
    text = (
        "INVITE sip:agent@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-inv1;rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@127.0.0.1>;tag=ta\r\n'
        "To: <sip:agent@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@127.0.0.1:5061>\r\n"
        f"{extra}"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, SipRequest)
    return msg


def make(trunks: tuple[str, ...] = (), fallback: str = "reject") -> tuple[B2BUA, FakeMedia]:
    media = FakeMedia()
    cfg = B2BConfig(
        sip_host="127.0.0.1",
        sip_port=5060,
        pbx=PBX,
        media_address="127.0.0.9",
        trunks_allow=tuple(ipaddress.ip_network(t) for t in trunks),
        codec_fallback=fallback,  # type: ignore[arg-type]
    )
    return B2BUA(cfg, media), media


def open_media(b2b: B2BUA, media: FakeMedia, now: float) -> list[SendMessage]:
    """What the asyncio adapter does: open each requested call's media, then go on."""
    out: list[SendMessage] = []
    for req in b2b.take_media_requests():
        media.allocated.append(req.call_id)
        out += b2b.media_ready(req.call_id, (30000, 30002), now)
    return out


def receive(
    b2b: B2BUA, media: FakeMedia, msg: SipRequest | SipResponse, src: tuple[str, int], now: float
) -> list[SendMessage]:
    out = b2b.receive(msg, src, now)
    return out + open_media(b2b, media, now)


def only(out: list[SendMessage], dest: tuple[str, int]) -> list[SipRequest | SipResponse]:
    return [s.message for s in out if s.destination == dest]


def setup_call(b2b: B2BUA, media: FakeMedia) -> tuple[SipRequest, SipRequest, list[SendMessage]]:
    out = receive(b2b, media, invite(), CALLER, 0.0)
    to_caller = only(out, CALLER)
    assert [m.status for m in to_caller if isinstance(m, SipResponse)] == [100]
    (pbx_inv,) = only(out, PBX)
    assert isinstance(pbx_inv, SipRequest) and pbx_inv.method == "INVITE"
    ringing = build_response(pbx_inv, 180, to_tag="tb")
    out = receive(b2b, media, ringing, PBX, 0.1)
    ok = build_response(
        pbx_inv, 200, to_tag="tb", headers=[("Contact", "<sip:agent@127.0.0.1:5070>"),
                                            ("Content-Type", "application/sdp")],
        body=ANSWER.encode(),
    )  # fmt: skip
    out += receive(b2b, media, ok, PBX, 0.2)
    return invite(), pbx_inv, out


def test_call_is_bridged_with_media_anchored() -> None:
    b2b, media = make()
    a_inv, pbx_inv, out = setup_call(b2b, media)
    # the PBX leg is a new dialog: its own Call-ID and tags, SDP on the proxy's media port
    assert pbx_inv.call_id != a_inv.call_id
    assert pbx_inv.from_.tag != "ta"
    sdp = parse_sdp(pbx_inv.body)
    assert sdp.media_connection(sdp.media[0]).address == "127.0.0.9"  # type: ignore[union-attr]
    assert sdp.media[0].port == 30002
    assert pbx_inv.from_.display_name == "Alice"
    # the caller got 180 and 200 with the proxy's SDP; the PBX got its ACK
    statuses = [m.status for m in only(out, CALLER) if isinstance(m, SipResponse)]
    assert statuses == [180, 200]
    ok = next(m for m in only(out, CALLER) if isinstance(m, SipResponse) and m.status == 200)
    assert parse_sdp(ok.body).media[0].port == 30000
    assert ok.to.tag and ok.headers.get("Contact")
    acks = [m for m in only(out, PBX) if isinstance(m, SipRequest) and m.method == "ACK"]
    assert len(acks) == 1 and acks[0].cseq.number == pbx_inv.cseq.number
    # media configured for both legs: the caller's and the PBX's RTP addresses, PCMU, PT 101
    legs = {side: leg for _, side, leg, _ in media.configured}
    assert legs["caller"].remote == ("127.0.0.1", 40000)
    assert legs["pbx"].remote == ("127.0.0.2", 50000)
    assert legs["caller"].codec == "PCMU" and legs["caller"].telephone_event_pt == 101


def test_bye_from_caller_ends_both_legs_and_frees_media() -> None:
    b2b, media = make()
    _, pbx_inv, out = setup_call(b2b, media)
    ok = next(m for m in only(out, CALLER) if isinstance(m, SipResponse) and m.status == 200)
    bye = parse_message(
        (
            "BYE sip:127.0.0.1:5060 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-bye1;rport\r\n"
            'From: "Alice" <sip:alice@127.0.0.1>;tag=ta\r\n'
            f"To: <sip:agent@127.0.0.1>;tag={ok.to.tag}\r\n"
            "Call-ID: a1@caller\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    out = receive(b2b, media, bye, CALLER, 5.0)
    assert [m.status for m in only(out, CALLER) if isinstance(m, SipResponse)] == [200]
    byes = [m for m in only(out, PBX) if isinstance(m, SipRequest)]
    assert [m.method for m in byes] == ["BYE"] and byes[0].call_id == pbx_inv.call_id
    assert media.released == media.allocated
    assert b2b.calls == []


def test_failure_is_passed_on_and_challenges_keep_their_header() -> None:
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = only(out, PBX)
    assert isinstance(pbx_inv, SipRequest)
    challenge = build_response(
        pbx_inv, 407, to_tag="tb",
        headers=[("Proxy-Authenticate", 'Digest realm="pbx", nonce="abc"')],
    )  # fmt: skip
    out = receive(b2b, media, challenge, PBX, 0.1)
    (resp,) = [m for m in only(out, CALLER) if isinstance(m, SipResponse)]
    assert resp.status == 407 and "nonce" in (resp.headers.get("Proxy-Authenticate") or "")
    assert media.released == media.allocated and b2b.calls == []


def test_cancel_reaches_the_pbx_and_the_caller_gets_487() -> None:
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = only(out, PBX)
    assert isinstance(pbx_inv, SipRequest)
    receive(b2b, media, build_response(pbx_inv, 180, to_tag="tb"), PBX, 0.1)
    cancel = parse_message(
        b"CANCEL sip:agent@127.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-inv1;rport\r\n"
        b'From: "Alice" <sip:alice@127.0.0.1>;tag=ta\r\nTo: <sip:agent@127.0.0.1>\r\n'
        b"Call-ID: a1@caller\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    out = receive(b2b, media, cancel, CALLER, 0.5)
    assert sorted(m.status for m in only(out, CALLER) if isinstance(m, SipResponse)) == [200, 487]
    assert [m.method for m in only(out, PBX) if isinstance(m, SipRequest)] == ["CANCEL"]
    # the PBX answers 200 OK anyway (the race): the proxy ACKs and hangs up that leg
    ok = build_response(pbx_inv, 200, to_tag="tb", headers=[("Contact", "<sip:a@127.0.0.1:5070>")])
    out = receive(b2b, media, ok, PBX, 0.6)
    assert [m.method for m in only(out, PBX) if isinstance(m, SipRequest)] == ["ACK", "BYE"]
    assert media.released == media.allocated


def test_sip_info_dtmf_is_answered_and_not_forwarded() -> None:
    b2b, media = make()
    _, _, out = setup_call(b2b, media)
    ok = next(m for m in only(out, CALLER) if isinstance(m, SipResponse) and m.status == 200)
    body = "Signal=5\r\nDuration=160\r\n"
    info = parse_message(
        (
            "INFO sip:127.0.0.1:5060 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-info1;rport\r\n"
            'From: "Alice" <sip:alice@127.0.0.1>;tag=ta\r\n'
            f"To: <sip:agent@127.0.0.1>;tag={ok.to.tag}\r\n"
            "Call-ID: a1@caller\r\nCSeq: 2 INFO\r\nMax-Forwards: 70\r\n"
            f"Content-Type: application/dtmf-relay\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    out = receive(b2b, media, info, CALLER, 3.0)
    assert [m.status for m in only(out, CALLER) if isinstance(m, SipResponse)] == [200]
    assert only(out, PBX) == []
    assert media.digits == [(media.allocated[0], "5", 160)]


@pytest.mark.parametrize(
    ("trunks", "body", "fallback", "status"),
    [
        (("10.0.0.0/8",), OFFER, "reject", 403),  # not an allowed trunk
        ((), G729_OFFER, "reject", 488),  # nothing the in-band masker can decode
        ((), "", "reject", 488),  # late offer
    ],
)  # fmt: skip
def test_refusals(trunks: tuple[str, ...], body: str, fallback: str, status: int) -> None:
    b2b, media = make(trunks, fallback)
    out = receive(b2b, media, invite(body), CALLER, 0.0)
    finals = [m.status for m in only(out, CALLER) if isinstance(m, SipResponse) and m.status >= 200]
    assert finals == [status]
    assert only(out, PBX) == [] and media.allocated == []


def test_pbx_silence_times_out_with_408_and_frees_media() -> None:
    b2b, media = make()
    receive(b2b, media, invite(), CALLER, 0.0)
    out: list[SendMessage] = []
    now = 0.0
    while (due := b2b.deadline()) is not None and due < 100:
        now = due
        out += b2b.timer(now)
    assert 408 in [m.status for m in only(out, CALLER) if isinstance(m, SipResponse)]
    assert media.released == media.allocated


def test_options_keepalive_is_answered() -> None:
    b2b, media = make()
    opt = parse_message(
        b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-o1;rport\r\n"
        b"From: <sip:mon@127.0.0.1>;tag=x\r\nTo: <sip:127.0.0.1>\r\n"
        b"Call-ID: o1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    out = receive(b2b, media, opt, CALLER, 0.0)
    assert [m.status for m in only(out, CALLER) if isinstance(m, SipResponse)] == [200]
