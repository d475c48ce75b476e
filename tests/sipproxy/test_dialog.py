"""sipproxy.dialog: dialog state (RFC 3261 §12), in-dialog requests, PRACK (RFC 3262)."""

from __future__ import annotations

import pytest

from sipproxy.dialog import (
    Dialog,
    DialogError,
    DialogId,
    DialogState,
    dialog_id_uac,
    dialog_id_uas,
    new_invite,
)
from sipproxy.sipmessage import SipRequest, build_response, parse_message
from sipproxy.transaction import BRANCH_MAGIC_COOKIE, TransactionLayer

VIA = "SIP/2.0/UDP 192.0.2.1:5060"


def invite() -> SipRequest:
    return new_invite(
        "sip:agent@pbx.example.com",
        from_uri="sip:caller@example.com",
        to_uri="sip:agent@pbx.example.com",
        contact="sip:b2bua@192.0.2.1:5060",
        via=VIA,
        body=b"v=0\r\n",
    )


def answer(req: SipRequest, status: int = 200, *, record_route=(), contact="sip:pbx@192.0.2.50"):
    headers = [("Contact", f"<{contact}>")] + [("Record-Route", r) for r in record_route]
    return build_response(req, status, to_tag="pbxtag", headers=headers)


def incoming(raw_extra: str = "", cseq: int = 10, method: str = "INVITE", to_tag: str = ""):
    to = "<sip:agent@b2bua.example.com>" + (f";tag={to_tag}" if to_tag else "")
    raw = (
        f"{method} sip:agent@b2bua.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKin\r\n"
        "Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
        "From: <sip:caller@example.com>;tag=callertag\r\n"
        f"To: {to}\r\n"
        "Call-ID: in-call@example.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:caller@198.51.100.7>\r\n" + raw_extra + "\r\n"
    )
    msg = parse_message(raw.encode())
    assert isinstance(msg, SipRequest)
    return msg


def test_new_invite_fresh_identifiers():
    a, b = invite(), invite()
    assert a.call_id != b.call_id
    assert a.from_.tag and a.from_.tag != b.from_.tag
    assert a.vias[0].branch.startswith(BRANCH_MAGIC_COOKIE)
    assert a.vias[0].branch != b.vias[0].branch
    assert a.to.tag is None and str(a.cseq) == "1 INVITE"
    assert a.headers.get("Content-Type") == "application/sdp"
    assert a.max_forwards == 70
    parsed = parse_message(a.serialize())  # well-formed on the wire
    assert parsed == a


def test_uac_dialog_from_2xx_reverses_record_route():
    inv = invite()
    ok = answer(inv, record_route=["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"])
    d = Dialog.uac(inv, ok)
    assert d.state is DialogState.CONFIRMED
    assert d.id == DialogId(inv.call_id, inv.from_.tag, "pbxtag") == dialog_id_uac(ok)
    assert d.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert d.remote_target == "sip:pbx@192.0.2.50"
    assert d.local_seq == 1 and d.remote_seq is None and not d.secure
    bye = d.build_request("BYE", via=VIA)
    assert bye.uri == "sip:pbx@192.0.2.50"  # loose routing: remote target
    assert bye.headers.get_all("Route") == d.route_set
    assert str(bye.cseq) == "2 BYE"
    assert bye.from_.tag == inv.from_.tag and bye.to.tag == "pbxtag"
    assert bye.call_id == inv.call_id
    assert "Contact" not in bye.headers
    assert d.next_hop() == "sip:p2.example.com;lr"
    assert parse_message(bye.serialize()) == bye


def test_ack_for_2xx_uses_invite_cseq_and_new_branch():
    inv = invite()
    d = Dialog.uac(inv, answer(inv))
    d.build_request("INFO", via=VIA)  # CSeq 2
    ack = d.build_ack(via=VIA)
    assert str(ack.cseq) == "1 ACK"
    assert ack.vias[0].branch != inv.vias[0].branch
    assert d.local_seq == 2  # ACK does not consume a CSeq
    reinvite = d.build_request("INVITE", via=VIA, body=b"v=0\r\n")
    assert str(reinvite.cseq) == "3 INVITE"
    assert reinvite.headers.get("Contact") == "<sip:b2bua@192.0.2.1:5060>"
    assert str(d.build_ack(via=VIA).cseq) == "3 ACK"


def test_early_dialog_confirmed_by_2xx_route_set_recomputed():
    inv = invite()
    ringing = answer(inv, 180, record_route=["<sip:early.example.com;lr>"], contact="sip:e@x")
    d = Dialog.uac(inv, ringing)
    assert d.state is DialogState.EARLY and d.remote_target == "sip:e@x"
    ok = answer(inv, 200, record_route=["<sip:a.example.com;lr>", "<sip:b.example.com;lr>"])
    d.receive_response(inv, ok)
    assert d.state is DialogState.CONFIRMED
    assert d.route_set == ["<sip:b.example.com;lr>", "<sip:a.example.com;lr>"]
    assert d.remote_target == "sip:pbx@192.0.2.50"


def test_early_dialog_ends_with_failure_and_481_ends_dialog():
    inv = invite()
    d = Dialog.uac(inv, answer(inv, 183))
    d.receive_response(inv, answer(inv, 486))
    assert d.state is DialogState.TERMINATED
    with pytest.raises(DialogError):
        d.build_request("BYE", via=VIA)
    d2 = Dialog.uac(inv, answer(inv))
    info = d2.build_request("INFO", via=VIA)
    d2.receive_response(info, build_response(info, 481))
    assert d2.state is DialogState.TERMINATED


def test_dialog_creation_errors():
    inv = invite()
    with pytest.raises(DialogError):
        Dialog.uac(inv, build_response(inv, 100))
    with pytest.raises(DialogError):
        Dialog.uac(inv, answer(inv, 486))
    no_contact = build_response(inv, 200, to_tag="t")
    with pytest.raises(DialogError):
        Dialog.uac(inv, no_contact)


def test_uas_dialog_and_cseq_ordering():
    req = incoming()
    ok = build_response(req, 200, to_tag="mytag", headers=[("Contact", "<sip:b2bua@192.0.2.1>")])
    d = Dialog.uas(req, ok)
    assert d.id == DialogId("in-call@example.com", "mytag", "callertag")
    assert d.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert d.remote_target == "sip:caller@198.51.100.7" and d.remote_seq == 10
    assert d.local_seq is None
    # ACK with the INVITE's CSeq is fine; a higher CSeq is accepted; a lower one gets 500.
    assert d.receive_request(incoming(cseq=10, method="ACK", to_tag="mytag")) is None
    info = incoming(cseq=11, method="INFO", to_tag="mytag")
    assert dialog_id_uas(info) == d.id
    assert d.receive_request(info) is None and d.remote_seq == 11
    old = d.receive_request(incoming(cseq=9, method="INFO", to_tag="mytag"))
    assert old is not None and old.status == 500
    assert d.remote_seq == 11
    # Not this dialog: 481.
    other = d.receive_request(incoming(cseq=12, method="BYE", to_tag="someoneelse"))
    assert other is not None and other.status == 481
    # Target refresh, then BYE ends the dialog.
    refresh = incoming("", cseq=12, method="UPDATE", to_tag="mytag")
    refresh.headers.set("Contact", "<sip:caller@203.0.113.5>")
    assert d.receive_request(refresh) is None
    assert d.remote_target == "sip:caller@203.0.113.5"
    assert d.receive_request(incoming(cseq=13, method="BYE", to_tag="mytag")) is None
    assert d.state is DialogState.TERMINATED


def test_uas_side_requests_start_from_a_random_cseq_and_swap_uris():
    req = incoming()
    ok = build_response(req, 200, to_tag="mytag", headers=[("Contact", "<sip:b2bua@192.0.2.1>")])
    d = Dialog.uas(req, ok)
    bye = d.build_request("BYE", via=VIA)
    assert bye.from_.tag == "mytag" and bye.to.tag == "callertag"
    assert str(bye.from_.uri) == "sip:agent@b2bua.example.com"
    assert bye.uri == "sip:caller@198.51.100.7"
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert d.local_seq == bye.cseq.number >= 1
    assert d.build_request("INFO", via=VIA).cseq.number == bye.cseq.number + 1


def test_strict_route_puts_remote_target_last():
    inv = invite()
    d = Dialog.uac(inv, answer(inv, record_route=["<sip:strict.example.com>"]))
    bye = d.build_request("BYE", via=VIA)
    assert bye.uri == "sip:strict.example.com"
    assert bye.headers.get_all("Route") == ["<sip:pbx@192.0.2.50>"]


def test_sips_sets_secure():
    inv = invite()
    inv.uri = "sips:agent@pbx.example.com"
    assert Dialog.uac(inv, answer(inv)).secure


def test_prack_and_rseq_ordering():
    inv = invite()
    ringing = answer(inv, 180)
    ringing.headers.add("Require", "100rel")
    ringing.headers.add("RSeq", "7")
    d = Dialog.uac(inv, ringing)
    assert d.accept_reliable_provisional(ringing)
    prack = d.build_prack(ringing, via=VIA)
    assert prack.method == "PRACK" and str(prack.cseq) == "2 PRACK"
    assert prack.headers.get("RAck") == "7 1 INVITE"
    assert not d.accept_reliable_provisional(ringing)  # retransmission
    skipped = ringing.copy()
    skipped.headers.set("RSeq", "9")
    assert not d.accept_reliable_provisional(skipped)  # out of order
    nxt = ringing.copy()
    nxt.headers.set("RSeq", "8")
    assert d.accept_reliable_provisional(nxt)
    with pytest.raises(DialogError):
        d.build_prack(answer(inv, 183), via=VIA)


def test_b2bua_leg_through_the_transaction_layer():
    """A new INVITE to the PBX, 200 back, ACK by the dialog, BYE as a new transaction."""
    layer = TransactionLayer()
    pbx = ("192.0.2.50", 5060)
    inv = invite()
    key, _ = layer.send_request(inv, pbx, 0.0)
    ok = answer(inv)
    (event,) = layer.receive(ok, 0.1)
    d = Dialog.uac(inv, event.response)
    ack = d.build_ack(via=VIA)
    assert ack.vias[0].branch != key.branch
    bye = d.build_request("BYE", via=VIA)
    bye_key, events = layer.send_request(bye, pbx, 5.0)
    assert bye_key.method == "BYE" and events[0].message is bye
