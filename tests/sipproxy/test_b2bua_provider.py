"""The provider leg and the call events of the B2BUA, message by message (sans-I/O,
simulated time, fake media plane), plus one run against a real UDP peer."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import pytest

from sipproxy.b2bua import (
    B2BUA,
    B2BConfig,
    Call,
    CallAnswered,
    CallEnded,
    CallEvent,
    LegMedia,
    ProviderLegAnswered,
    ProviderLegEnded,
    ProviderLegFailed,
)
from sipproxy.providerleg import answer_reoffer, failure_reason, provider_offer, provider_target
from sipproxy.sdp import parse_sdp, telephone_event
from sipproxy.sipmessage import SipRequest, SipResponse, build_response, parse_message
from sipproxy.transaction import SendMessage
from tests.sipproxy.sippeers import FakePbx
from tests.sipproxy.test_b2bua import (
    ANSWER,
    CALLER,
    PBX,
    FakeMedia,
    Up,
    invite,
    ok_for,
    receive,
    request,
    requests,
    responses,
    up,
)

PROVIDER = ("127.0.0.1", 5090)
URI = "sip:sandbox@127.0.0.1:5090"
PROVIDER_PORT = 31000  # the proxy's RTP port for the provider leg
PROVIDER_SDP = (
    "v=0\r\no=prov 5 5 IN IP4 127.0.0.5\r\ns=-\r\nc=IN IP4 127.0.0.5\r\nt=0 0\r\n"
    "m=audio 45000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
)


@dataclass
class ProviderMedia(FakeMedia):
    provider: list[tuple[str, LegMedia | None]] = field(default_factory=list)

    def provider_media(self, call_id: str, leg: LegMedia | None) -> None:
        self.provider.append((call_id, leg))


def make() -> tuple[B2BUA, ProviderMedia]:
    media = ProviderMedia()
    cfg = B2BConfig(sip_host="127.0.0.1", sip_port=5060, pbx=PBX, media_address="127.0.0.9")
    return B2BUA(cfg, media), media


@dataclass
class Joined:
    """A call that is up, with its provider leg dialled."""

    c: Up
    media: ProviderMedia
    call_id: str
    invite: SipRequest
    cseq: int = 1

    @property
    def b2b(self) -> B2BUA:
        return self.c.b2b

    def events(self) -> list[CallEvent]:
        return self.b2b.take_call_events()

    def send(self, msg: SipRequest | SipResponse, now: float) -> list[SendMessage]:
        return self.b2b.receive(msg, PROVIDER, now)

    def answer(self, now: float = 1.2, body: str = PROVIDER_SDP) -> list[SendMessage]:
        self.send(build_response(self.invite, 180, to_tag="tp"), now - 0.1)
        return self.send(provider_ok(self.invite, body), now)

    def from_provider(self, method: str, body: str = "", cseq: int | None = None) -> SipRequest:
        self.cseq += 1
        return request(
            method, call_id=self.invite.call_id, from_="<sip:sandbox@127.0.0.1:5090>;tag=tp",
            to=self.invite.headers.get("From") or "", cseq=cseq or self.cseq,
            branch=f"p{method}{self.cseq}", body=body, via="127.0.0.1:5090",
        )  # fmt: skip


def provider_ok(inv: SipRequest, body: str = PROVIDER_SDP, tag: str = "tp") -> SipResponse:
    hdrs = [("Contact", "<sip:sandbox@127.0.0.1:5090>")]
    if body:
        hdrs.append(("Content-Type", "application/sdp"))
    return build_response(inv, 200, to_tag=tag, headers=hdrs, body=body.encode())


def joined(codec: str = "PCMU", timeout: float = 20.0, uri: str = URI) -> Joined:
    b2b, media = make()
    c = up(b2b, media)
    (call,) = b2b.calls
    assert b2b.take_call_events() == [CallAnswered(call.id)]
    ack = c.from_caller("ACK")  # the caller's ACK, so that its leg lives on (Timer L)
    ack.headers.set("CSeq", "1 ACK")
    receive(b2b, media, ack, CALLER, 0.3)
    out = b2b.join_provider(call.id, uri, PROVIDER_PORT, codec, 1.0, timeout)
    (inv,) = [s.message for s in out]
    assert isinstance(inv, SipRequest)
    return Joined(c, media, call.id, inv)


def to_provider(out: list[SendMessage]) -> list[SipRequest]:
    return requests(out, PROVIDER)


def only_provider(out: list[SendMessage]) -> bool:
    return all(s.destination == PROVIDER for s in out)


# -- the INVITE ------------------------------------------------------------------------------------


def test_the_provider_invite_is_a_new_dialog_with_our_offer() -> None:
    j = joined()
    inv = j.invite
    assert inv.method == "INVITE" and inv.uri == URI
    call = j.b2b.call_by_id(j.call_id)
    assert call is not None and call.b_invite is not None
    assert inv.call_id not in (call.a_invite.call_id, call.b_invite.call_id)
    assert inv.from_.tag and inv.from_.tag not in ("ta", call.a_tag, call.b_invite.from_.tag)
    assert str(inv.to.uri) == URI and inv.to.tag is None
    assert inv.max_forwards == 70 and inv.cseq.method == "INVITE"
    assert inv.headers.get("Contact") == "<sip:127.0.0.1:5060>"
    via = inv.vias[0]
    assert via.branch and via.branch.startswith("z9hG4bK") and via.transport == "UDP"
    assert inv.headers.get("Content-Type") == "application/sdp"
    sdp = parse_sdp(inv.body)
    (m,) = sdp.media
    conn = sdp.media_connection(m)
    assert conn is not None and conn.address == "127.0.0.9" and m.port == PROVIDER_PORT
    assert m.formats == ("0", "101") and sdp.media_direction(m) == "sendrecv"
    te = telephone_event(m, 8000)
    assert te is not None and te.payload_type == 101
    # sent over UDP to the URI's host and port
    sent = j.b2b.layer.get(call.provider.key) if call.provider else None
    assert sent is not None and sent.peer == PROVIDER
    assert j.events() == []


def test_pcma_is_offered_as_pcma_and_the_port_defaults_to_5060() -> None:
    b2b, media = make()
    up(b2b, media)
    (call,) = b2b.calls
    out = b2b.join_provider(call.id, "sip:ivr@127.0.0.1", PROVIDER_PORT, "PCMA", 1.0, 20.0)
    (send,) = out
    assert send.destination == ("127.0.0.1", 5060)
    m = parse_sdp(send.message.body).media[0]
    assert m.formats == ("8", "101") and "8 PCMA/8000" in m.attributes("rtpmap")


def test_join_refuses_a_call_that_is_not_up_a_second_leg_and_bad_uris_or_codecs() -> None:
    b2b, media = make()
    with pytest.raises(KeyError):
        b2b.join_provider("nope", URI, PROVIDER_PORT, "PCMU", 0.0, 20.0)
    receive(b2b, media, invite(), CALLER, 0.0)  # ringing, not up
    (call,) = b2b.calls
    with pytest.raises(KeyError):
        b2b.join_provider(call.id, URI, PROVIDER_PORT, "PCMU", 0.0, 20.0)
    j = joined()
    with pytest.raises(ValueError):
        j.b2b.join_provider(j.call_id, URI, PROVIDER_PORT, "PCMU", 1.5, 20.0)
    b2b, media = make()
    up(b2b, media)
    (call,) = b2b.calls
    for uri in ("tel:+4420", "sips:p@127.0.0.1", "sip:p@127.0.0.1;transport=tcp", "sip:"):
        with pytest.raises(ValueError):
            b2b.join_provider(call.id, uri, PROVIDER_PORT, "PCMU", 1.0, 20.0)
    with pytest.raises(ValueError):
        b2b.join_provider(call.id, URI, PROVIDER_PORT, "G729", 1.0, 20.0)
    assert call.provider is None  # nothing half-made
    b2b.join_provider(call.id, URI, PROVIDER_PORT, "PCMU", 1.0, 20.0)  # still possible


# -- answered --------------------------------------------------------------------------------------


def test_2xx_is_acked_and_reported_with_the_negotiated_media() -> None:
    j = joined()
    out = j.send(build_response(j.invite, 100), 1.05)
    out += j.send(build_response(j.invite, 180, to_tag="tp"), 1.1)
    assert out == [] and j.events() == []
    out = j.send(provider_ok(j.invite), 1.2)
    (ack,) = to_provider(out)
    assert ack.method == "ACK" and ack.uri == "sip:sandbox@127.0.0.1:5090"
    assert ack.cseq.number == j.invite.cseq.number and ack.call_id == j.invite.call_id
    assert ack.to.tag == "tp" and ack.from_.tag == j.invite.from_.tag
    assert ack.vias[0].branch != j.invite.vias[0].branch  # §13.2.2.4: a new transaction
    media = LegMedia(("127.0.0.5", 45000), "PCMU", 0, 101, "sendrecv")
    assert j.events() == [ProviderLegAnswered(j.call_id, media)]
    assert j.media.provider == [(j.call_id, media)]
    assert to_provider(j.b2b.timer(25.0)) == [] and j.events() == []  # no answer timeout
    # the 2xx again (our ACK was lost): the same ACK, nothing else
    out = j.send(provider_ok(j.invite), 1.7)
    assert [m.serialize() for m in to_provider(out)] == [ack.serialize()]
    assert j.events() == [] and len(j.media.provider) == 1


def test_a_second_fork_answering_is_acked_and_hung_up() -> None:
    j = joined()
    j.answer()
    j.events()
    out = j.send(provider_ok(j.invite, tag="fork2"), 1.3)
    assert [(m.method, m.to.tag) for m in to_provider(out)] == [("ACK", "fork2"), ("BYE", "fork2")]
    assert j.events() == []
    call = j.b2b.call_by_id(j.call_id)
    assert call is not None and call.provider is not None and call.provider.state == "up"


@pytest.mark.parametrize(
    ("body", "reason"),
    [("", "error"), (PROVIDER_SDP.replace("0 101", "18 101").replace(
        "rtpmap:0 PCMU", "rtpmap:18 G729"), "rejected")],
)  # fmt: skip
def test_an_unusable_answer_is_acked_hung_up_and_reported(body: str, reason: str) -> None:
    j = joined()
    out = j.answer(body=body)
    assert [m.method for m in to_provider(out)] == ["ACK", "BYE"]
    assert j.events() == [ProviderLegFailed(j.call_id, reason, 200)]  # type: ignore[arg-type]
    assert j.media.provider == [(j.call_id, None)]
    assert j.b2b.release_provider(j.call_id, 2.0) == []


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [(486, "busy"), (600, "busy"), (408, "no_answer"), (480, "no_answer"), (302, "rejected"),
     (404, "rejected"), (500, "rejected"), (603, "rejected")],
)  # fmt: skip
def test_final_failures_are_reported_and_free_the_call_for_another_try(
    status: int, reason: str
) -> None:
    j = joined()
    j.send(build_response(j.invite, 180, to_tag="tp"), 1.1)
    out = j.send(build_response(j.invite, status, to_tag="tp"), 1.2)
    (ack,) = to_provider(out)  # the transaction layer ACKs a non-2xx final (§17.1.1.3)
    assert ack.method == "ACK" and ack.vias[0].branch == j.invite.vias[0].branch
    assert j.events() == [ProviderLegFailed(j.call_id, reason, status)]  # type: ignore[arg-type]
    assert j.media.provider == [(j.call_id, None)]
    assert j.b2b.release_provider(j.call_id, 1.3) == []
    out = j.b2b.join_provider(j.call_id, URI, PROVIDER_PORT, "PCMU", 1.4, 20.0)
    assert [m.method for m in to_provider(out)] == ["INVITE"]


def test_ringing_too_long_is_cancelled_and_reported_no_answer_at_once() -> None:
    j = joined(timeout=20.0)
    j.send(build_response(j.invite, 180, to_tag="tp"), 1.1)
    assert to_provider(j.b2b.timer(20.9)) == [] and j.events() == []
    out = j.b2b.timer(21.0)
    (cancel,) = to_provider(out)
    assert cancel.method == "CANCEL" and cancel.vias[0].branch == j.invite.vias[0].branch
    assert cancel.cseq.number == j.invite.cseq.number and cancel.uri == j.invite.uri
    assert j.events() == [ProviderLegFailed(j.call_id, "no_answer", None)]
    assert j.media.provider == [(j.call_id, None)]
    out = j.send(build_response(cancel, 200), 21.1)
    out += j.send(build_response(j.invite, 487, to_tag="tp"), 21.2)
    assert [m.method for m in to_provider(out)] == ["ACK"] and j.events() == []


def test_the_answer_timeout_before_any_provisional_waits_to_cancel() -> None:
    j = joined(timeout=0.3)
    out: list[SendMessage] = []
    for _ in range(3):  # INVITE retransmissions (Timer A) and the answer timeout
        due = j.b2b.deadline()
        assert due is not None
        out += j.b2b.timer(due)
    assert j.events() == [ProviderLegFailed(j.call_id, "no_answer", None)]
    assert "CANCEL" not in [m.method for m in to_provider(out)]  # §9.1: not before a 1xx
    out = j.send(build_response(j.invite, 100), 1.6)
    assert [m.method for m in to_provider(out)] == ["CANCEL"]


def test_no_response_at_all_is_an_error_after_timer_b() -> None:
    j = joined(timeout=100.0)
    now = 1.0
    while (due := j.b2b.deadline()) is not None and due < 50:
        now = due
        j.b2b.timer(now)
    assert j.events() == [ProviderLegFailed(j.call_id, "error", None)]
    assert now == pytest.approx(1.0 + 32.0)
    assert j.media.provider == [(j.call_id, None)]


def test_a_transport_error_on_the_invite_is_an_error_at_once() -> None:
    j = joined()
    call = j.b2b.call_by_id(j.call_id)
    assert call is not None and call.provider is not None
    assert j.b2b.transport_error(call.provider.key, 1.01) == []
    assert j.events() == [ProviderLegFailed(j.call_id, "error", None)]
    assert call.provider is None and j.media.provider == [(j.call_id, None)]
    # the same on the PBX leg of a ringing call: the caller gets 408, the call ends
    b2b, media = make()
    receive(b2b, media, invite(), CALLER, 0.0)
    (ringing,) = b2b.calls
    assert ringing.b_key is not None
    out = b2b.transport_error(ringing.b_key, 0.1)
    assert [r.status for r in responses(out, CALLER)] == [408]
    assert b2b.take_call_events() == [CallEnded(ringing.id, "proxy")]


# -- release ---------------------------------------------------------------------------------------


def test_release_of_an_answered_leg_sends_bye_once_and_no_event() -> None:
    j = joined()
    j.answer()
    j.events()
    out = j.b2b.release_provider(j.call_id, 5.0)
    (bye,) = to_provider(out)
    assert bye.method == "BYE" and bye.call_id == j.invite.call_id
    assert bye.uri == "sip:sandbox@127.0.0.1:5090" and bye.to.tag == "tp"
    assert bye.from_.tag == j.invite.from_.tag and bye.cseq.number > j.invite.cseq.number
    assert j.media.provider[-1] == (j.call_id, None)
    assert j.b2b.release_provider(j.call_id, 5.1) == []  # idempotent
    assert j.send(build_response(bye, 200), 5.2) == [] and j.events() == []
    # the provider's late 2xx retransmission is still ACKed (§13.2.2.4)
    assert [m.method for m in to_provider(j.send(provider_ok(j.invite), 5.3))] == ["ACK"]
    # a BYE crossing ours finds no dialog
    out = j.send(j.from_provider("BYE"), 5.4)
    assert [r.status for r in responses(out, PROVIDER)] == [481]
    assert j.events() == []


def test_release_while_ringing_cancels_and_a_200_that_races_is_acked_and_hung_up() -> None:
    j = joined()
    j.send(build_response(j.invite, 180, to_tag="tp"), 1.1)
    out = j.b2b.release_provider(j.call_id, 2.0)
    (cancel,) = to_provider(out)
    assert cancel.method == "CANCEL" and cancel.vias[0].branch == j.invite.vias[0].branch
    assert j.b2b.release_provider(j.call_id, 2.05) == []
    j.send(build_response(cancel, 200), 2.1)
    assert to_provider(j.b2b.timer(21.5)) == []  # the answer timeout went with the leg
    out = j.send(provider_ok(j.invite), 21.6)  # it answered before it saw our CANCEL
    ack, bye = to_provider(out)
    assert (ack.method, bye.method) == ("ACK", "BYE") and bye.to.tag == "tp"
    assert [m.method for m in to_provider(j.send(provider_ok(j.invite), 22.0))] == ["ACK"]
    assert j.events() == []


def test_release_before_any_response_cancels_once_a_provisional_comes() -> None:
    j = joined()
    assert j.b2b.release_provider(j.call_id, 1.01) == []
    out = j.send(build_response(j.invite, 180, to_tag="tp"), 1.1)
    assert [m.method for m in to_provider(out)] == ["CANCEL"]
    j.send(build_response(j.invite, 487, to_tag="tp"), 1.2)
    assert j.events() == [] and j.media.provider == [(j.call_id, None)]


def test_release_of_a_call_without_a_leg_or_of_no_call_does_nothing() -> None:
    b2b, media = make()
    up(b2b, media)
    (call,) = b2b.calls
    assert b2b.release_provider(call.id, 1.0) == []
    assert b2b.release_provider("c999", 1.0) == []
    assert media.provider == []


# -- requests from the provider --------------------------------------------------------------------


def test_bye_from_the_provider_ends_the_leg_and_is_reported() -> None:
    j = joined()
    j.answer()
    j.events()
    out = j.send(j.from_provider("BYE"), 3.0)
    (ok,) = responses(out, PROVIDER)
    assert ok.status == 200 and ok.to.tag == j.invite.from_.tag
    assert requests(out, CALLER) == [] and requests(out, PBX) == []
    assert j.events() == [ProviderLegEnded(j.call_id)]
    assert j.media.provider[-1] == (j.call_id, None)
    assert j.b2b.release_provider(j.call_id, 3.1) == []
    call = j.b2b.call_by_id(j.call_id)
    assert call is not None and call.state == "up" and call.provider is None


@pytest.mark.parametrize(("method", "status"), [("OPTIONS", 200), ("INFO", 200), ("MESSAGE", 405)])
def test_other_requests_from_the_provider_are_answered_here(method: str, status: int) -> None:
    j = joined()
    j.answer()
    j.events()
    out = j.send(j.from_provider(method), 3.0)
    assert [r.status for r in responses(out, PROVIDER)] == [status]
    assert only_provider(out) and j.events() == []


def test_a_reinvite_from_the_provider_gets_our_sdp_and_moves_its_media() -> None:
    j = joined()
    j.answer()
    j.events()
    hold = PROVIDER_SDP.replace("a=sendrecv", "a=sendonly").replace("o=prov 5 5", "o=prov 5 6")
    reinv = j.from_provider("INVITE", hold.replace("45000", "45010"))
    out = j.send(reinv, 4.0)
    ok = responses(out, PROVIDER)[-1]
    assert ok.status == 200 and ok.headers.get("Contact") == "<sip:127.0.0.1:5060>"
    ours = parse_sdp(ok.body)
    offered = parse_sdp(j.invite.body)
    assert ours.media[0].port == PROVIDER_PORT and ours.media[0].formats == ("0", "101")
    assert ours.media_direction(ours.media[0]) == "recvonly"
    assert ours.origin.session_version == offered.origin.session_version + 1
    assert j.media.provider[-1] == (
        j.call_id, LegMedia(("127.0.0.5", 45010), "PCMU", 0, 101, "sendonly"),
    )  # fmt: skip
    ack = j.from_provider("ACK", cseq=reinv.cseq.number)
    assert j.send(ack, 4.1) == []
    assert only_provider(out) and j.events() == []
    # back to sendrecv: a new version again
    out = j.send(j.from_provider("INVITE", PROVIDER_SDP.replace("o=prov 5 5", "o=prov 5 7")), 5)
    again = parse_sdp(responses(out, PROVIDER)[-1].body)
    assert again.media_direction(again.media[0]) == "sendrecv"
    assert again.origin.session_version == ours.origin.session_version + 1


def test_a_reinvite_without_sdp_gets_our_offer_and_its_ack_brings_the_answer() -> None:
    j = joined()
    j.answer()
    reinv = j.from_provider("INVITE")
    out = j.send(reinv, 4.0)
    ok = responses(out, PROVIDER)[-1]
    assert ok.status == 200 and ok.body == j.invite.body
    # a second offer while ours is pending: 491 (§14.2)
    out = j.send(j.from_provider("UPDATE", PROVIDER_SDP), 4.05)
    assert [r.status for r in responses(out, PROVIDER)] == [491]
    ack = j.from_provider("ACK", PROVIDER_SDP.replace("45000", "45020"), cseq=reinv.cseq.number)
    assert j.send(ack, 4.1) == []
    assert j.media.provider[-1] == (
        j.call_id, LegMedia(("127.0.0.5", 45020), "PCMU", 0, 101, "sendrecv"),
    )  # fmt: skip


def test_a_reoffer_without_our_codec_gets_488() -> None:
    j = joined()
    j.answer()
    g729 = PROVIDER_SDP.replace("0 101", "18 101").replace("rtpmap:0 PCMU", "rtpmap:18 G729")
    out = j.send(j.from_provider("INVITE", g729), 4.0)
    assert [r.status for r in responses(out, PROVIDER)][-1] == 488
    assert len(j.media.provider) == 1  # the leg's media did not move


# -- the call ends while a provider leg exists -----------------------------------------------------


def test_caller_bye_hangs_up_the_provider_leg_and_reports_caller() -> None:
    j = joined()
    j.answer()
    j.events()
    out = receive(j.b2b, j.media, j.c.from_caller("BYE"), CALLER, 6.0)
    assert [r.status for r in responses(out, CALLER)] == [200]
    assert [m.method for m in requests(out, PBX)] == ["BYE"]
    (bye,) = to_provider(out)
    assert bye.method == "BYE" and bye.call_id == j.invite.call_id
    assert j.events() == [CallEnded(j.call_id, "caller")]
    assert j.media.provider[-1] == (j.call_id, None) and j.media.released == [j.call_id]
    assert j.b2b.call_by_id(j.call_id) is None and j.b2b.calls == []
    assert j.b2b.release_provider(j.call_id, 6.1) == []


def test_pbx_bye_hangs_up_the_provider_leg_and_reports_agent() -> None:
    j = joined()
    j.answer()
    j.events()
    out = receive(j.b2b, j.media, j.c.from_pbx("BYE"), PBX, 6.0)
    assert [m.method for m in to_provider(out)] == ["BYE"]
    assert [m.method for m in requests(out, CALLER)] == ["BYE"]
    assert j.events() == [CallEnded(j.call_id, "agent")]


def test_a_proxy_hangup_cancels_a_ringing_provider_leg_and_reports_proxy() -> None:
    j = joined()
    j.send(build_response(j.invite, 180, to_tag="tp"), 1.1)
    call = j.b2b.call_by_id(j.call_id)
    assert call is not None
    out = j.b2b.hangup(call, 2.0, "media timeout")
    assert [m.method for m in to_provider(out)] == ["CANCEL"]
    assert j.events() == [CallEnded(j.call_id, "proxy")]
    out = j.send(build_response(j.invite, 487, to_tag="tp"), 2.1)
    assert [m.method for m in to_provider(out)] == ["ACK"] and j.events() == []


# -- call events and call info ---------------------------------------------------------------------


def test_call_info_fields() -> None:
    b2b, media = make()
    receive(b2b, media, invite(), CALLER, 0.0)
    (call,) = b2b.calls
    assert (call.caller_display, call.called_number) == ("Alice", "agent")
    assert call.started_at == 0.0 and call.answered_at is None
    assert b2b.call_by_id(call.id) is call
    c = up()
    (call,) = c.b2b.calls
    assert call.answered_at == 0.2
    plain = invite()
    plain.headers.set("From", "<sip:+441234@127.0.0.1>;tag=ta")
    assert _call_of(plain).caller_display == "+441234"
    anon = invite()
    anon.headers.set("From", "<tel:anonymous>;tag=ta")
    assert _call_of(anon).caller_display == "unknown"


def _call_of(inv: SipRequest) -> Call:
    b2b, media = make()
    receive(b2b, media, inv, CALLER, 0.0)
    (call,) = b2b.calls
    return call


def test_every_call_ends_with_one_call_ended_saying_who() -> None:
    # refused by the PBX (busy): the agent's side
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = requests(out, PBX)
    (call,) = b2b.calls
    receive(b2b, media, build_response(pbx_inv, 486, to_tag="tb"), PBX, 0.1)
    assert b2b.take_call_events() == [CallEnded(call.id, "agent")]
    # cancelled by the caller while ringing: ends with the PBX's 487
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = requests(out, PBX)
    (call,) = b2b.calls
    receive(b2b, media, build_response(pbx_inv, 180, to_tag="tb"), PBX, 0.1)
    receive(b2b, media, _cancel(), CALLER, 0.2)
    assert b2b.take_call_events() == []
    receive(b2b, media, build_response(pbx_inv, 487, to_tag="tb"), PBX, 0.3)
    assert b2b.take_call_events() == [CallEnded(call.id, "caller")]
    # the proxy hangs up a ringing call: the PBX's final comes later, "proxy" it stays
    b2b, media = make()
    out = receive(b2b, media, invite(), CALLER, 0.0)
    (pbx_inv,) = requests(out, PBX)
    (call,) = b2b.calls
    receive(b2b, media, build_response(pbx_inv, 180, to_tag="tb"), PBX, 0.1)
    b2b.hangup(call, 0.2, "shutdown")
    receive(b2b, media, ok_for(pbx_inv, ANSWER, tag="tb"), PBX, 0.3)  # the race: ACK, BYE
    assert b2b.take_call_events() == [CallEnded(call.id, "proxy")]
    assert b2b.take_call_events() == []


def _cancel() -> SipRequest:
    msg = parse_message(
        b"CANCEL sip:agent@127.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-inv1;rport\r\n"
        b'From: "Alice" <sip:alice@127.0.0.1>;tag=ta\r\nTo: <sip:agent@127.0.0.1>\r\n'
        b"Call-ID: a1@caller\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(msg, SipRequest)
    return msg


def test_a_caller_cancel_while_media_opens_ends_the_call_without_dialling_the_pbx() -> None:
    b2b, media = make()
    out = b2b.receive(invite(), CALLER, 0.0)  # media requested, not opened yet
    (call,) = b2b.calls
    out = b2b.receive(_cancel(), CALLER, 0.1)
    assert sorted(r.status for r in responses(out, CALLER)) == [200, 487]
    assert b2b.take_call_events() == [CallEnded(call.id, "caller")]
    assert b2b.calls == [] and b2b.call_by_id(call.id) is None
    (req,) = b2b.take_media_requests()
    assert b2b.media_ready(req.call_id, (30000, 30002), 0.2) == []  # no INVITE to the PBX
    assert media.released == [call.id]
    assert b2b.counters.calls_ended == b2b.counters.calls_started == 1


def test_provider_counters_and_events_are_bounded_if_nobody_takes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    j = joined()
    j.answer()
    j.b2b.release_provider(j.call_id, 2.0)
    out = j.b2b.join_provider(j.call_id, URI, PROVIDER_PORT, "PCMU", 3.0, 20.0)
    (inv,) = to_provider(out)
    j.send(build_response(inv, 486, to_tag="tp"), 3.1)
    b = j.b2b.counters
    assert (b.providers_dialled, b.providers_answered, b.providers_failed) == (2, 1, 1)
    monkeypatch.setattr("sipproxy.b2bua._EVENTS_MAX", 2)
    j.b2b.take_call_events()
    for _ in range(3):
        out = j.b2b.join_provider(j.call_id, URI, PROVIDER_PORT, "PCMU", 4.0, 20.0)
        j.send(build_response(to_provider(out)[0], 486, to_tag="tp"), 4.1)
    assert len(j.events()) == 2 and b.events_dropped == 1


def test_the_provider_record_route_is_followed_in_ack_and_bye() -> None:
    j = joined()
    ok = provider_ok(j.invite)
    ok.headers.add("Record-Route", "<sip:10.0.0.7;lr>")
    out = j.send(ok, 1.2)
    (ack,) = to_provider(out)
    assert ack.headers.get_all("Route") == ["<sip:10.0.0.7;lr>"]
    (bye,) = to_provider(j.b2b.release_provider(j.call_id, 2.0))
    assert bye.headers.get_all("Route") == ["<sip:10.0.0.7;lr>"]
    assert bye.uri == "sip:sandbox@127.0.0.1:5090"


# -- helpers of providerleg ------------------------------------------------------------------------


def test_providerleg_helpers() -> None:
    assert provider_target("sip:pay@[::1]:5070") == ("sip:pay@[::1]:5070", ("::1", 5070))
    assert provider_target(" sip:pay@example.net;transport=udp ")[1] == ("example.net", 5060)
    assert [failure_reason(s) for s in (486, 600, 408, 480, 404, 603)] == [
        "busy", "busy", "no_answer", "no_answer", "rejected", "rejected",
    ]  # fmt: skip
    v6 = provider_offer("::1", 31000, "pcmu")
    assert "c=IN IP6 ::1" in str(v6)
    with pytest.raises(ValueError):
        provider_offer("127.0.0.1", 0, "PCMU")
    ours = provider_offer("127.0.0.1", 31000, "PCMU")
    same = answer_reoffer(ours, parse_sdp(PROVIDER_SDP))
    assert same == ours  # nothing changed: the same version (RFC 3264 §8)


# -- against a real UDP peer -----------------------------------------------------------------------


def test_the_provider_leg_against_a_real_udp_peer() -> None:
    """The B2BUA's messages go over a real socket to a peer that answers (180, 200 with SDP,
    200 to BYE): the wire form parses both ways and the leg comes up and goes down."""
    asyncio.run(_real_peer())


async def _real_peer() -> None:
    loop = asyncio.get_running_loop()
    peer = await FakePbx.open()
    inbox: asyncio.Queue[SipRequest | SipResponse] = asyncio.Queue()

    class Proxy(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            inbox.put_nowait(parse_message(data))

    transport, _ = await loop.create_datagram_endpoint(Proxy, local_addr=("127.0.0.1", 0))
    try:
        b2b, media = make()
        up(b2b, media)
        (call,) = b2b.calls
        b2b.take_call_events()
        uri = f"sip:sandbox@127.0.0.1:{peer.port}"
        start = loop.time()

        def send(out: list[SendMessage]) -> None:
            for s in out:
                transport.sendto(s.message.serialize(), s.destination)

        send(b2b.join_provider(call.id, uri, PROVIDER_PORT, "PCMU", start, 5.0))
        events: list[CallEvent] = []
        async with asyncio.timeout(3.0):
            while not events:
                msg = await inbox.get()
                send(b2b.receive(msg, ("127.0.0.1", peer.port), loop.time()))
                events += b2b.take_call_events()
        (answered,) = events
        assert isinstance(answered, ProviderLegAnswered) and answered.media.codec == "PCMU"
        assert answered.media.telephone_event_pt == 101
        await peer.expect("INVITE")
        await peer.expect("ACK")
        send(b2b.release_provider(call.id, loop.time()))
        bye = await peer.expect("BYE")
        assert isinstance(bye, SipRequest) and bye.call_id != call.a_invite.call_id
        async with asyncio.timeout(3.0):
            ok = await inbox.get()
        assert isinstance(ok, SipResponse) and ok.status == 200
        assert b2b.receive(ok, ("127.0.0.1", peer.port), loop.time()) == []
        assert b2b.take_call_events() == []
    finally:
        transport.close()
        with contextlib.suppress(Exception):
            peer.close()
