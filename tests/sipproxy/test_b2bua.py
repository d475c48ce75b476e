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

    def provider_media(self, call_id: str, leg: LegMedia | None) -> None:
        pass


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


# -- in-dialog requests, re-INVITE and UPDATE, glare, BYE races ---------------------------------

HOLD = (
    OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
    .replace("a=sendrecv", "a=sendonly")
    .replace("o=alice 1 1", "o=alice 1 2")
)
HOLD_ANSWER = ANSWER.replace("a=sendrecv", "a=recvonly").replace("o=pbx 7 7", "o=pbx 7 8")
RESUME = OFFER.replace("o=alice 1 1", "o=alice 1 3").replace("40000", "40010")


def request(
    method: str,
    *,
    call_id: str,
    from_: str,
    to: str,
    cseq: int,
    branch: str,
    body: str = "",
    via: str = "127.0.0.1:5061",
    extra: str = "",
    uri: str = "sip:127.0.0.1:5060",
) -> SipRequest:
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    text = (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK-{branch};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: {from_}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\nContact: <sip:peer@{via}>\r\n{extra}{ctype}"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, SipRequest)
    return msg


@dataclass
class Up:
    """A call set up by :func:`setup_call`, with what each side needs to send in-dialog."""

    b2b: B2BUA
    media: FakeMedia
    pbx_inv: SipRequest
    a_tag: str  # our tag toward the caller
    cseq: dict[str, int] = field(default_factory=lambda: {"caller": 1, "pbx": 100})

    def from_caller(self, method: str, body: str = "", extra: str = "", **kw: str) -> SipRequest:
        self.cseq["caller"] += 1
        n = self.cseq["caller"]
        return request(
            method, call_id="a1@caller", from_='"Alice" <sip:alice@127.0.0.1>;tag=ta',
            to=f"<sip:agent@127.0.0.1>;tag={self.a_tag}", cseq=n, branch=f"a{method}{n}",
            body=body, extra=extra, **kw,
        )  # fmt: skip

    def from_pbx(self, method: str, body: str = "", extra: str = "") -> SipRequest:
        self.cseq["pbx"] += 1
        n = self.cseq["pbx"]
        return request(
            method, call_id=self.pbx_inv.call_id, from_="<sip:agent@127.0.0.1>;tag=tb",
            to=f"{self.pbx_inv.headers.get('From')}", cseq=n, branch=f"b{method}{n}",
            body=body, via="127.0.0.1:5070", extra=extra,
        )  # fmt: skip


def up(b2b: B2BUA | None = None, media: FakeMedia | None = None) -> Up:
    if b2b is None or media is None:
        b2b, media = make()
    _, pbx_inv, out = setup_call(b2b, media)
    ok = next(m for m in only(out, CALLER) if isinstance(m, SipResponse) and m.status == 200)
    assert ok.to.tag
    return Up(b2b, media, pbx_inv, ok.to.tag)


def responses(out: list[SendMessage], dest: tuple[str, int]) -> list[SipResponse]:
    return [m for m in only(out, dest) if isinstance(m, SipResponse)]


def requests(out: list[SendMessage], dest: tuple[str, int]) -> list[SipRequest]:
    return [m for m in only(out, dest) if isinstance(m, SipRequest)]


def sdp_of(msg: SipRequest | SipResponse) -> tuple[str, int, str]:
    sdp = parse_sdp(msg.body)
    conn = sdp.media_connection(sdp.media[0])
    assert conn is not None
    return conn.address, sdp.media[0].port, sdp.media_direction(sdp.media[0])


def ok_for(req: SipRequest, body: str = "", tag: str | None = None) -> SipResponse:
    hdrs = [("Contact", "<sip:peer@127.0.0.1:5070>")]
    if body:
        hdrs.append(("Content-Type", "application/sdp"))
    return build_response(req, 200, to_tag=tag, headers=hdrs, body=body.encode())


def test_caller_hold_and_resume_by_reinvite_is_anchored_and_reconfigures_media() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    # hold: a=sendonly with the RFC 2543 null address
    reinv = c.from_caller("INVITE", HOLD)
    out = receive(b2b, media, reinv, CALLER, 10.0)
    (fwd,) = requests(out, PBX)
    assert fwd.method == "INVITE" and fwd.call_id == c.pbx_inv.call_id
    assert fwd.cseq.number > c.pbx_inv.cseq.number and fwd.to.tag == "tb"
    assert sdp_of(fwd)[1:] == (30002, "sendonly")  # the proxy's port, the caller's direction
    assert [r.status for r in responses(out, CALLER)] == [100]
    media.configured.clear()
    out = receive(b2b, media, ok_for(fwd, HOLD_ANSWER), PBX, 10.1)
    (ok,) = responses(out, CALLER)
    assert ok.status == 200 and ok.cseq.number == reinv.cseq.number
    assert sdp_of(ok) == ("127.0.0.9", 30000, "recvonly")
    (ack,) = requests(out, PBX)  # the proxy ACKs the PBX's 2xx itself
    assert ack.method == "ACK" and ack.cseq.number == fwd.cseq.number
    legs = {side: leg for _, side, leg, _ in media.configured}
    assert legs["caller"].remote is None and legs["caller"].direction == "sendonly"
    assert legs["pbx"].remote == ("127.0.0.2", 50000) and legs["pbx"].direction == "recvonly"
    # the PBX resends its 2xx (our ACK was lost): the same ACK again, nothing to the caller
    out = receive(b2b, media, ok_for(fwd, HOLD_ANSWER), PBX, 10.6)
    assert [m.method for m in requests(out, PBX)] == ["ACK"] and only(out, CALLER) == []
    assert requests(out, PBX)[0].headers.get("Via") == ack.headers.get("Via")
    # the caller's ACK for our 2xx is absorbed here (the PBX leg was ACKed already)
    caller_ack = c.from_caller("ACK")
    caller_ack.headers.set("CSeq", f"{reinv.cseq.number} ACK")
    out = receive(b2b, media, caller_ack, CALLER, 10.2)
    assert out == []
    # resume on a new port: media follows
    out = receive(b2b, media, c.from_caller("INVITE", RESUME), CALLER, 20.0)
    (fwd2,) = requests(out, PBX)
    assert sdp_of(fwd2)[1:] == (30002, "sendrecv")
    media.configured.clear()
    out = receive(b2b, media, ok_for(fwd2, ANSWER), PBX, 20.1)
    assert [r.status for r in responses(out, CALLER)] == [200]
    legs = {side: leg for _, side, leg, _ in media.configured}
    assert legs["caller"].remote == ("127.0.0.1", 40010) and legs["caller"].direction == "sendrecv"


def test_reinvite_and_update_from_the_pbx_reach_the_caller_anchored() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    for method in ("INVITE", "UPDATE"):
        req = c.from_pbx(method, HOLD_ANSWER.replace("recvonly", "sendonly"))
        out = receive(b2b, media, req, PBX, 5.0)
        (fwd,) = requests(out, CALLER)
        assert fwd.method == method and fwd.call_id == "a1@caller"
        assert fwd.from_.tag == c.a_tag and fwd.to.tag == "ta"
        assert sdp_of(fwd) == ("127.0.0.9", 30000, "sendonly")
        media.configured.clear()
        out = receive(b2b, media, ok_for(fwd, OFFER.replace("sendrecv", "recvonly")), CALLER, 5.1)
        (ok,) = responses(out, PBX)
        assert ok.status == 200 and sdp_of(ok) == ("127.0.0.9", 30002, "recvonly")
        acks = requests(out, CALLER)
        assert [a.method for a in acks] == (["ACK"] if method == "INVITE" else [])
        legs = {side: leg for _, side, leg, _ in media.configured}
        assert legs["pbx"].direction == "sendonly" and legs["caller"].direction == "recvonly"


def test_glare_gets_491_and_a_second_invite_from_the_same_side_500() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    out = receive(b2b, media, c.from_caller("INVITE", HOLD), CALLER, 1.0)
    (fwd,) = requests(out, PBX)
    # the PBX's own re-INVITE crosses ours: it gets 491 (§14.2), nothing reaches the caller
    out = receive(b2b, media, c.from_pbx("INVITE", ANSWER), PBX, 1.01)
    assert [r.status for r in responses(out, PBX)] == [100, 491]
    assert only(out, CALLER) == []
    out = receive(b2b, media, c.from_pbx("UPDATE", ANSWER), PBX, 1.02)
    assert [r.status for r in responses(out, PBX)] == [491]
    # a second re-INVITE from the caller while its first is pending: 500 with Retry-After
    out = receive(b2b, media, c.from_caller("INVITE", RESUME), CALLER, 1.03)
    final = responses(out, CALLER)[-1]
    assert final.status == 500 and final.headers.get("Retry-After")
    # the PBX refuses ours with 491 as well: relayed to the caller, the PBX's non-2xx ACKed
    out = receive(b2b, media, build_response(fwd, 491, to_tag="tb"), PBX, 1.1)
    assert [r.status for r in responses(out, CALLER)] == [491]
    assert [m.method for m in requests(out, PBX)] == ["ACK"]
    # afterwards a new offer goes through
    out = receive(b2b, media, c.from_pbx("INVITE", ANSWER), PBX, 3.0)
    assert [m.method for m in requests(out, CALLER)] == ["INVITE"]


def test_reinvite_without_sdp_is_answered_with_our_offer_and_the_ack_carries_the_answer() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    reinv = c.from_caller("INVITE")
    out = receive(b2b, media, reinv, CALLER, 2.0)
    assert only(out, PBX) == []  # a session refresh does not bother the PBX
    ok = responses(out, CALLER)[-1]
    assert ok.status == 200 and ok.to.tag == c.a_tag
    assert sdp_of(ok) == ("127.0.0.9", 30000, "sendrecv")  # the SDP the caller already has
    media.configured.clear()
    ack = c.from_caller("ACK", RESUME)
    ack.headers.set("CSeq", f"{reinv.cseq.number} ACK")
    out = receive(b2b, media, ack, CALLER, 2.1)
    assert out == []
    legs = {side: leg for _, side, leg, _ in media.configured}
    assert legs["caller"].remote == ("127.0.0.1", 40010)
    # UPDATE without SDP (a refresh) is answered here too
    out = receive(b2b, media, c.from_pbx("UPDATE"), PBX, 3.0)
    assert [r.status for r in responses(out, PBX)] == [200] and only(out, CALLER) == []


def test_bye_crossing_bye_ends_the_call_once() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    out = receive(b2b, media, c.from_caller("BYE"), CALLER, 5.0)
    (bye_to_pbx,) = requests(out, PBX)
    # the PBX's BYE crossed ours: the dialog is gone (481, §15.1.2), no second BYE anywhere
    out = receive(b2b, media, c.from_pbx("BYE"), PBX, 5.01)
    assert [r.status for r in responses(out, PBX)] == [481] and only(out, CALLER) == []
    out = receive(b2b, media, build_response(bye_to_pbx, 200), PBX, 5.02)
    assert out == []
    assert b2b.calls == [] and media.released == media.allocated


def test_bye_during_a_pending_reinvite_answers_it_487_and_acks_a_late_2xx() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    reinv = c.from_caller("INVITE", HOLD)
    out = receive(b2b, media, reinv, CALLER, 1.0)
    (fwd,) = requests(out, PBX)
    out = receive(b2b, media, c.from_pbx("BYE"), PBX, 1.1)
    assert [r.status for r in responses(out, PBX)] == [200]
    to_caller = only(out, CALLER)
    assert [(m.status, m.cseq.method) for m in to_caller if isinstance(m, SipResponse)] == [
        (487, "INVITE")
    ]
    assert [m.method for m in to_caller if isinstance(m, SipRequest)] == ["BYE"]
    assert b2b.calls == [] and media.released == media.allocated
    # the PBX had answered the re-INVITE 200 anyway: it is ACKed, and again on retransmission
    for t in (1.2, 1.7):
        out = receive(b2b, media, ok_for(fwd, HOLD_ANSWER), PBX, t)
        assert [(m.method, m.cseq.number) for m in requests(out, PBX)] == [("ACK", fwd.cseq.number)]


def test_cancel_before_any_provisional_waits_for_one() -> None:
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = only(out, PBX)
    assert isinstance(pbx_inv, SipRequest)
    cancel = parse_message(
        b"CANCEL sip:agent@127.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-inv1;rport\r\n"
        b'From: "Alice" <sip:alice@127.0.0.1>;tag=ta\r\nTo: <sip:agent@127.0.0.1>\r\n'
        b"Call-ID: a1@caller\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    out = receive(b2b, media, cancel, CALLER, 0.05)
    assert sorted(r.status for r in responses(out, CALLER)) == [200, 487]
    assert requests(out, PBX) == []  # §9.1: no CANCEL before a provisional
    out = receive(b2b, media, build_response(pbx_inv, 100), PBX, 0.1)
    (pbx_cancel,) = requests(out, PBX)
    assert pbx_cancel.method == "CANCEL" and pbx_cancel.call_id == pbx_inv.call_id
    out = receive(b2b, media, build_response(pbx_inv, 487, to_tag="tb"), PBX, 0.2)
    assert [m.method for m in requests(out, PBX)] == ["ACK"]  # the layer ACKs the 487
    assert only(out, CALLER) == [] and b2b.calls == [] and media.released == media.allocated


def test_hangup_while_ringing_cancels_and_hangs_up_a_200_that_races() -> None:
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = only(out, PBX)
    assert isinstance(pbx_inv, SipRequest)
    receive(b2b, media, build_response(pbx_inv, 180, to_tag="tb"), PBX, 0.1)
    (call,) = b2b.calls
    out = b2b.hangup(call, 0.5, "shutdown")
    assert [r.status for r in responses(out, CALLER)] == [503]
    assert [m.method for m in requests(out, PBX)] == ["CANCEL"]
    ok = ok_for(pbx_inv, ANSWER, tag="tb")
    out = receive(b2b, media, ok, PBX, 0.6)
    assert [m.method for m in requests(out, PBX)] == ["ACK", "BYE"]
    assert b2b.calls == [] and media.released == media.allocated
    out = receive(b2b, media, ok, PBX, 1.0)  # retransmitted: ACKed again, no second BYE
    assert [m.method for m in requests(out, PBX)] == ["ACK"]


# -- headers --------------------------------------------------------------------------------------


def test_max_forwards_is_decremented_and_zero_gets_483() -> None:
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = requests(out, PBX)
    assert pbx_inv.max_forwards == 69
    b2b, media = make()
    inv = invite()
    inv.headers.set("Max-Forwards", "0")
    out = receive(b2b, media, inv, CALLER, 0.0)
    assert [r.status for r in responses(out, CALLER)] == [100, 483]
    assert requests(out, PBX) == [] and media.allocated == []


def test_our_own_invite_routed_back_is_a_loop_482() -> None:
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = requests(out, PBX)
    out = receive(b2b, media, pbx_inv, PBX, 0.1)  # the PBX sent it back to us
    assert [r.status for r in responses(out, PBX)] == [100, 482]
    assert b2b.counters.loops == 1 and len(b2b.calls) == 1


def test_record_route_from_the_pbx_is_used_for_the_bye() -> None:
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = requests(out, PBX)
    ok = ok_for(pbx_inv, ANSWER, tag="tb")
    ok.headers.add("Record-Route", "<sip:127.0.0.1:5070;lr>")
    ok.headers.add("Record-Route", "<sip:10.9.9.9;lr>")
    receive(b2b, media, ok, PBX, 0.1)
    (call,) = b2b.calls
    out = b2b.hangup(call, 1.0, "media timeout")
    (bye,) = requests(out, PBX)
    assert bye.headers.get_all("Route") == ["<sip:10.9.9.9;lr>", "<sip:127.0.0.1:5070;lr>"]
    assert bye.uri == "sip:peer@127.0.0.1:5070"


def test_100rel_is_stripped_toward_the_pbx_and_required_100rel_refused() -> None:
    b2b, media = make()
    out = receive(b2b, media, invite(extra="Supported: 100rel, timer\r\n"), CALLER, 0.0)
    (pbx_inv,) = requests(out, PBX)
    assert pbx_inv.headers.get_all("Supported") == ["timer"]
    b2b, media = make()
    out = receive(b2b, media, invite(extra="Require: timer, 100rel\r\n"), CALLER, 0.0)
    final = responses(out, CALLER)[-1]
    assert final.status == 420 and final.headers.get("Unsupported") == "100rel"


def test_what_the_pbx_sees_from_to_contact() -> None:
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = requests(out, PBX)
    assert pbx_inv.uri == "sip:agent@127.0.0.1:5070"
    assert str(pbx_inv.from_.uri) == "sip:alice@127.0.0.1" and pbx_inv.from_.tag != "ta"
    assert str(pbx_inv.to.uri) == "sip:agent@127.0.0.1" and pbx_inv.to.tag is None
    assert pbx_inv.headers.get("Contact") == "<sip:127.0.0.1:5060>"
    assert pbx_inv.headers.get_all("Via")[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;")
    assert "5061" not in pbx_inv.serialize().decode()  # nothing of the caller's transport


def test_responses_to_a_natted_caller_go_to_its_source_with_received_and_rport() -> None:
    b2b, media = make()
    inv = invite()
    inv.headers.set("Via", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-nat1;rport")
    nat = ("127.0.0.1", 40123)
    out = receive(b2b, media, inv, nat, 0.0)
    (trying,) = responses(out, nat)
    assert trying.status == 100
    assert trying.headers.get("Via") == (
        "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-nat1;rport=40123;received=127.0.0.1"
    )


@pytest.mark.parametrize("method", ["REGISTER", "SUBSCRIBE", "PUBLISH"])
def test_out_of_dialog_methods_we_do_not_serve_get_405_with_allow(method: str) -> None:
    b2b, media = make()
    req = request(method, call_id="r1", from_="<sip:x@127.0.0.1>;tag=r", to="<sip:x@127.0.0.1>",
                  cseq=1, branch="r1")  # fmt: skip
    out = receive(b2b, media, req, CALLER, 0.0)
    (resp,) = responses(out, CALLER)
    assert resp.status == 405 and "INVITE" in (resp.headers.get("Allow") or "")


def test_options_in_dialog_is_answered_here() -> None:
    c = up()
    out = receive(c.b2b, c.media, c.from_caller("OPTIONS"), CALLER, 3.0)
    (resp,) = responses(out, CALLER)
    assert resp.status == 200 and resp.headers.get("Allow") and only(out, PBX) == []


def test_cancel_of_a_forwarded_reinvite_gets_487_and_reaches_the_other_side() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    reinv = c.from_caller("INVITE", HOLD)
    out = receive(b2b, media, reinv, CALLER, 1.0)
    (fwd,) = requests(out, PBX)
    receive(b2b, media, build_response(fwd, 100), PBX, 1.05)
    cancel = c.from_caller("CANCEL")
    cancel.headers.set("Via", reinv.headers.get("Via") or "")
    cancel.headers.set("CSeq", f"{reinv.cseq.number} CANCEL")
    out = receive(b2b, media, cancel, CALLER, 1.1)
    assert sorted((r.status, r.cseq.method) for r in responses(out, CALLER)) == [
        (200, "CANCEL"), (487, "INVITE"),
    ]  # fmt: skip
    assert [(m.method, m.cseq.number) for m in requests(out, PBX)] == [("CANCEL", fwd.cseq.number)]
    out = receive(b2b, media, build_response(fwd, 487), PBX, 1.2)
    assert [m.method for m in requests(out, PBX)] == ["ACK"] and only(out, CALLER) == []
    assert len(b2b.calls) == 1  # the call goes on


def test_our_2xx_is_resent_until_the_caller_acks_and_a_resent_invite_gets_it_again() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    sent: list[SipResponse] = []
    now = 0.2
    while (due := b2b.deadline()) is not None and due < 2.0:
        now = due
        sent += responses(b2b.timer(now), CALLER)
    assert [r.status for r in sent] == [200, 200]  # T1, 2*T1 after the 200 at 0.2 s
    out = receive(b2b, media, invite(), CALLER, now)  # the caller resends its INVITE
    assert [r.status for r in responses(out, CALLER)] == [200] and only(out, PBX) == []
    ack = c.from_caller("ACK")
    ack.headers.set("CSeq", "1 ACK")
    assert receive(b2b, media, ack, CALLER, now) == []
    later = [m for t in (3.0, 5.0, 9.0) for m in responses(b2b.timer(t), CALLER)]
    assert later == [] and len(b2b.calls) == 1


def test_a_second_fork_answering_is_acked_and_hung_up() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    fork = ok_for(c.pbx_inv, ANSWER, tag="fork2")
    out = receive(b2b, media, fork, PBX, 0.3)
    sent = requests(out, PBX)
    assert [(m.method, m.to.tag) for m in sent] == [("ACK", "fork2"), ("BYE", "fork2")]
    assert only(out, CALLER) == [] and len(b2b.calls) == 1
    assert b2b.calls[0].b_dialog is not None and b2b.calls[0].b_dialog.remote_tag == "tb"


def test_a_reinvite_the_other_side_never_answers_gets_408_and_does_not_block_later_ones() -> None:
    c = up()
    b2b, media = c.b2b, c.media
    ack = c.from_caller("ACK")
    ack.headers.set("CSeq", "1 ACK")
    receive(b2b, media, ack, CALLER, 0.5)
    reinv = c.from_caller("INVITE", HOLD)
    receive(b2b, media, reinv, CALLER, 1.0)
    out: list[SendMessage] = []
    while (due := b2b.deadline()) is not None and due < 40.0:
        out += b2b.timer(due)
    finals = [r for r in responses(out, CALLER) if r.cseq.method == "INVITE" and r.status >= 200]
    assert {r.status for r in finals if r.cseq.number == reinv.cseq.number} == {408}
    out = receive(b2b, media, c.from_caller("INVITE", RESUME), CALLER, 41.0)
    assert [m.method for m in requests(out, PBX)] == ["INVITE"]  # no 491 for ever after
