"""sipproxy.transaction: the four RFC 3261 §17 state machines and the layer, in simulated time."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipproxy.sipmessage import SipRequest, SipResponse, build_response, parse_message
from sipproxy.transaction import (
    BRANCH_MAGIC_COOKIE,
    AckReceived,
    CancelReceived,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Event,
    ProceedingTimeout,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    StrayAck,
    StrayResponse,
    TimerConfig,
    TransactionKey,
    TransactionLayer,
    TransactionStateError,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
    build_ack_for_non2xx,
    build_cancel,
    new_branch,
)

PEER = ("192.0.2.9", 5060)


def request(
    method: str = "INVITE",
    branch: str = "z9hG4bKabc",
    cseq: int = 1,
    transport: str = "UDP",
    to_tag: str | None = None,
    sent_by: str = "192.0.2.1:5060",
    call_id: str = "call-1@example.com",
) -> SipRequest:
    to = "<sip:agent@pbx.example.com>" + (f";tag={to_tag}" if to_tag else "")
    raw = (
        f"{method} sip:agent@pbx.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {sent_by};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "Route: <sip:proxy.example.com;lr>\r\n"
        'From: "Alice" <sip:alice@example.com>;tag=ftag\r\n'
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@192.0.2.1>\r\n"
        "\r\n"
    )
    msg = parse_message(raw.encode())
    assert isinstance(msg, SipRequest)
    return msg


def response(req: SipRequest, status: int, to_tag: str | None = "ttag") -> SipResponse:
    return build_response(req, status, to_tag=to_tag if status != 100 else None)


def sent(events: list[Event]) -> list[SipRequest | SipResponse]:
    return [e.message for e in events if isinstance(e, SendMessage)]


def of_type(events: list[Event], cls: type) -> list[Event]:
    return [e for e in events if isinstance(e, cls)]


def run_until(txn, until: float) -> list[tuple[float, Event]]:
    """Fire a transaction's timers at their deadlines up to ``until``."""
    out = []
    while (d := txn.deadline()) is not None and d <= until:
        out += [(d, e) for e in txn.timer(d)]
    return out


# ---------------------------------------------------------------------------------------------
# Client INVITE (§17.1.1)


def test_client_invite_timer_a_doubles_without_cap_and_b_times_out():
    inv = request()
    txn = ClientInviteTransaction(inv, PEER)
    assert sent(txn.start(0.0)) == [inv]
    events = run_until(txn, 100.0)
    sends = [t for t, e in events if isinstance(e, SendMessage)]
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A = 0.5, 1, 2, 4, 8, 16 s
    assert [type(e) for _, e in events[-2:]] == [TransactionTimeout, TransactionTerminated]
    assert events[-2] == (32.0, TransactionTimeout(txn.key, "B"))
    assert txn.state is State.TERMINATED and txn.deadline() is None


def test_client_invite_provisional_stops_retransmission():
    inv = request()
    txn = ClientInviteTransaction(inv, PEER)
    txn.start(0.0)
    ringing = response(inv, 180)
    assert txn.receive(ringing, 0.2) == [ResponseReceived(ringing, txn.key)]
    assert txn.state is State.PROCEEDING
    assert txn.deadline() is None  # a UAC waits in Proceeding for ever (no Timer C)


def test_client_invite_non2xx_is_acked_and_d_absorbs_retransmissions():
    inv = request()
    txn = ClientInviteTransaction(inv, PEER)
    txn.start(0.0)
    busy = response(inv, 486)
    events = txn.receive(busy, 1.0)
    ack = sent(events)[0]
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.uri == inv.uri and ack.call_id == inv.call_id
    assert str(ack.cseq) == "1 ACK"
    assert ack.headers.get_all("Via") == inv.headers.get_all("Via")  # same branch
    assert ack.to.tag == "ttag"
    assert ack.headers.get_all("Route") == inv.headers.get_all("Route")
    assert of_type(events, ResponseReceived) == [ResponseReceived(busy, txn.key)]
    assert txn.state is State.COMPLETED
    # Retransmitted 486: ACK again, not passed up.
    again = txn.receive(busy, 2.0)
    assert sent(again) == [ack] and not of_type(again, ResponseReceived)
    assert txn.deadline() == 33.0  # Timer D: 32 s
    assert [type(e) for _, e in run_until(txn, 40.0)] == [TransactionTerminated]


def test_client_invite_2xx_passed_up_not_acked_and_accepted_until_m():
    inv = request()
    txn = ClientInviteTransaction(inv, PEER)
    txn.start(0.0)
    ok = response(inv, 200)
    events = txn.receive(ok, 0.3)
    assert events == [ResponseReceived(ok, txn.key)]  # no ACK: that is the TU's
    assert txn.state is State.ACCEPTED
    # Retransmitted 2xx and a 2xx from another fork go up too (RFC 6026).
    fork = response(inv, 200, to_tag="other")
    assert txn.receive(ok, 1.0) == [ResponseReceived(ok, txn.key)]
    assert txn.receive(fork, 1.0) == [ResponseReceived(fork, txn.key)]
    assert txn.receive(response(inv, 486), 1.0) == []
    assert txn.deadline() == pytest.approx(32.3)  # Timer M
    assert [type(e) for _, e in run_until(txn, 40.0)] == [TransactionTerminated]


def test_client_invite_reliable_no_retransmission_and_d_zero():
    inv = request(transport="TCP")
    txn = ClientInviteTransaction(inv, PEER, reliable=True)
    txn.start(0.0)
    assert txn.deadline() == 32.0  # only Timer B
    events = run_until(txn, 40.0)
    assert not of_type([e for _, e in events], SendMessage)
    txn = ClientInviteTransaction(inv, PEER, reliable=True)
    txn.start(0.0)
    events = txn.receive(response(inv, 503), 1.0)
    assert [type(e) for e in events] == [SendMessage, ResponseReceived, TransactionTerminated]


def test_client_invite_transport_error():
    txn = ClientInviteTransaction(request(), PEER)
    txn.start(0.0)
    assert txn.transport_error(0.1) == [TransportError(txn.key), TransactionTerminated(txn.key)]
    assert txn.transport_error(0.2) == []


def test_client_invite_timer_c_cancels_then_gives_up():
    config = TimerConfig(timer_c=181.0)
    layer = TransactionLayer(timers=config)
    inv = request()
    key, _ = layer.send_request(inv, PEER, 0.0)
    layer.receive(response(inv, 180), 1.0)
    layer.receive(response(inv, 183), 60.0)  # resets Timer C
    assert layer.deadline() == 241.0
    events = layer.timer(241.0)
    assert events[0] == ProceedingTimeout(key)
    (cancel,) = sent(events)
    assert isinstance(cancel, SipRequest) and cancel.method == "CANCEL"
    layer.receive(response(cancel, 200), 241.1)
    # No 487 ever comes: the INVITE is given up 64*T1 after the CANCEL (§9.1).
    events = []
    while (d := layer.deadline()) is not None:
        events += layer.timer(d)
    assert TransactionTimeout(key, "cancel") in events
    assert len(layer) == 0


# ---------------------------------------------------------------------------------------------
# Client non-INVITE (§17.1.2)


def test_client_non_invite_timer_e_caps_at_t2_and_f_times_out():
    bye = request("BYE", cseq=2)
    txn = ClientNonInviteTransaction(bye, PEER)
    txn.start(0.0)
    events = run_until(txn, 100.0)
    sends = [t for t, e in events if isinstance(e, SendMessage)]
    # E = 0.5, 1, 2, 4, 4, 4, ... until F = 32 s
    assert sends[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(b - a == 4.0 for a, b in itertools.pairwise(sends[3:]))
    assert sends[-1] < 32.0
    assert events[-2] == (32.0, TransactionTimeout(txn.key, "F"))


def test_client_non_invite_proceeding_retransmits_every_t2():
    info = request("INFO", cseq=3)
    txn = ClientNonInviteTransaction(info, PEER)
    txn.start(0.0)
    txn.timer(0.5)  # first retransmission; next E at 1.5
    txn.receive(response(info, 100), 0.6)
    assert txn.state is State.PROCEEDING
    events = run_until(txn, 10.0)
    sends = [t for t, e in events if isinstance(e, SendMessage)]
    assert sends == [1.5, 5.5, 9.5]


def test_client_non_invite_final_then_k_absorbs():
    bye = request("BYE", cseq=2)
    txn = ClientNonInviteTransaction(bye, PEER)
    txn.start(0.0)
    ok = response(bye, 200)
    assert txn.receive(ok, 0.1) == [ResponseReceived(ok, txn.key)]
    assert txn.receive(ok, 0.2) == []  # absorbed in Completed
    assert txn.deadline() == pytest.approx(5.1)  # Timer K = T4
    assert [type(e) for _, e in run_until(txn, 10.0)] == [TransactionTerminated]
    reliable = ClientNonInviteTransaction(request("BYE", transport="TCP"), PEER, reliable=True)
    reliable.start(0.0)
    assert reliable.deadline() == 32.0
    events = reliable.receive(ok, 0.1)
    assert [type(e) for e in events] == [ResponseReceived, TransactionTerminated]


# ---------------------------------------------------------------------------------------------
# Server INVITE (§17.2.1)


def test_server_invite_trying_and_request_retransmissions_answered_from_cache():
    inv = request()
    txn = ServerInviteTransaction(inv, PEER)
    events = txn.start(0.0)
    (trying,) = sent(events)
    assert isinstance(trying, SipResponse) and trying.status == 100
    assert of_type(events, RequestReceived) == [RequestReceived(inv, txn.key)]
    assert sent(txn.receive(inv, 0.5)) == [trying]
    ringing = response(inv, 180)
    txn.send_response(ringing, 1.0)
    assert sent(txn.receive(inv, 1.5)) == [ringing]
    assert txn.deadline() is None


def test_server_invite_without_immediate_trying():
    inv = request()
    txn = ServerInviteTransaction(inv, PEER, send_trying=False)
    assert txn.start(0.0) == [RequestReceived(inv, txn.key)]
    assert txn.receive(inv, 0.5) == []


def test_server_invite_non2xx_g_h_timeout():
    inv = request()
    txn = ServerInviteTransaction(inv, PEER)
    txn.start(0.0)
    busy = response(inv, 486)
    assert sent(txn.send_response(busy, 0.0)) == [busy]
    events = run_until(txn, 100.0)
    sends = [t for t, e in events if isinstance(e, SendMessage)]
    assert sends[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # G doubles to T2
    assert events[-2] == (32.0, TransactionTimeout(txn.key, "H"))


def test_server_invite_ack_confirms_and_i_absorbs():
    inv = request()
    txn = ServerInviteTransaction(inv, PEER)
    txn.start(0.0)
    busy = response(inv, 486)
    txn.send_response(busy, 0.0)
    assert sent(txn.receive(inv, 0.2)) == [busy]  # retransmitted INVITE: resend the final
    ack = build_ack_for_non2xx(inv, busy)
    assert txn.receive(ack, 0.3) == []
    assert txn.state is State.CONFIRMED
    assert txn.receive(ack, 0.4) == []  # absorbed
    assert txn.receive(inv, 0.4) == []
    assert txn.deadline() == pytest.approx(5.3)  # Timer I = T4
    assert [type(e) for _, e in run_until(txn, 10.0)] == [TransactionTerminated]


def test_server_invite_2xx_retransmitted_until_ack_then_l():
    inv = request()
    txn = ServerInviteTransaction(inv, PEER)
    txn.start(0.0)
    ok = response(inv, 200)
    txn.send_response(ok, 0.0)
    assert txn.state is State.ACCEPTED
    resent = [t for t, e in run_until(txn, 4.0) if isinstance(e, SendMessage)]
    assert resent == [0.5, 1.5, 3.5]
    ack = request("ACK", branch="z9hG4bKnew", to_tag="ttag")
    assert txn.ack_2xx(ack) == [AckReceived(ack, txn.key)]
    assert txn.ack_2xx(ack) == []
    events = run_until(txn, 100.0)
    assert [type(e) for _, e in events] == [TransactionTerminated]  # L, quietly
    with pytest.raises(TransactionStateError):
        txn.send_response(ok, 40.0)


def test_server_invite_2xx_never_acked_reports_l():
    inv = request(transport="TCP")
    txn = ServerInviteTransaction(inv, PEER, reliable=True)
    txn.start(0.0)
    txn.send_response(response(inv, 200), 0.0)
    events = run_until(txn, 100.0)
    assert [e for _, e in events] == [
        TransactionTimeout(txn.key, "L"),
        TransactionTerminated(txn.key),
    ]


def test_server_invite_reliable_i_zero_no_g():
    inv = request(transport="TCP")
    txn = ServerInviteTransaction(inv, PEER, reliable=True)
    txn.start(0.0)
    busy = response(inv, 486)
    txn.send_response(busy, 0.0)
    assert txn.deadline() == 32.0  # H only
    events = txn.receive(build_ack_for_non2xx(inv, busy), 0.1)
    assert events == [TransactionTerminated(txn.key)]


def test_server_invite_tu_misuse_raises():
    inv = request()
    txn = ServerInviteTransaction(inv, PEER)
    txn.start(0.0)
    txn.send_response(response(inv, 486), 0.0)
    with pytest.raises(TransactionStateError):
        txn.send_response(response(inv, 180), 0.1)
    with pytest.raises(TransactionStateError):
        txn.start(0.1)


# ---------------------------------------------------------------------------------------------
# Server non-INVITE (§17.2.2)


def test_server_non_invite_trying_absorbs_then_cache_then_j():
    bye = request("BYE", to_tag="ttag", cseq=5)
    txn = ServerNonInviteTransaction(bye, PEER)
    assert txn.start(0.0) == [RequestReceived(bye, txn.key)]
    assert txn.receive(bye, 0.5) == []  # Trying: absorbed
    trying = response(bye, 100)
    txn.send_response(trying, 0.6)
    assert sent(txn.receive(bye, 0.7)) == [trying]
    ok = response(bye, 200)
    txn.send_response(ok, 1.0)
    assert sent(txn.receive(bye, 1.5)) == [ok]
    assert txn.deadline() == 33.0  # Timer J = 64*T1
    assert [type(e) for _, e in run_until(txn, 40.0)] == [TransactionTerminated]


def test_server_non_invite_reliable_j_zero_and_guard():
    bye = request("BYE", transport="TCP", to_tag="ttag")
    txn = ServerNonInviteTransaction(bye, PEER, reliable=True)
    txn.start(0.0)
    events = txn.send_response(response(bye, 200), 0.1)
    assert [type(e) for e in events] == [SendMessage, TransactionTerminated]
    forgotten = ServerNonInviteTransaction(bye, PEER, reliable=True)
    forgotten.start(0.0)
    assert [e for _, e in run_until(forgotten, 40.0)] == [
        TransactionTimeout(forgotten.key, "F"),
        TransactionTerminated(forgotten.key),
    ]


# ---------------------------------------------------------------------------------------------
# The layer: matching (§17.1.3, §17.2.3), CANCEL, bounded memory


def drain(layer: TransactionLayer, until: float) -> list[Event]:
    out: list[Event] = []
    while (d := layer.deadline()) is not None and d <= until:
        out += layer.timer(d)
    return out


def test_new_branch_is_rfc3261_and_unguessable():
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000
    assert all(b.startswith(BRANCH_MAGIC_COOKIE) and len(b) >= 7 + 24 for b in branches)


def test_layer_client_matching_by_branch_and_method():
    layer = TransactionLayer()
    inv = request(branch="z9hG4bKone")
    key, events = layer.send_request(inv, PEER, 0.0)
    assert sent(events) == [inv] and events[0].destination == PEER
    ringing = response(inv, 180)
    assert layer.receive(ringing, 0.1) == [ResponseReceived(ringing, key)]
    # Unknown branch, and same branch with another CSeq method: strays.
    other = response(request(branch="z9hG4bKtwo"), 200)
    assert layer.receive(other, 0.2) == [StrayResponse(other)]
    wrong_method = response(request("BYE", branch="z9hG4bKone"), 200)
    assert layer.receive(wrong_method, 0.2) == [StrayResponse(wrong_method)]


def test_layer_forked_2xx_both_reach_tu():
    layer = TransactionLayer()
    inv = request()
    key, _ = layer.send_request(inv, PEER, 0.0)
    a = response(inv, 183, to_tag="forkA")
    b = response(inv, 200, to_tag="forkB")
    c = response(inv, 200, to_tag="forkA")
    assert layer.receive(a, 0.1) == [ResponseReceived(a, key)]
    assert layer.receive(b, 0.2) == [ResponseReceived(b, key)]
    assert layer.receive(c, 0.3) == [ResponseReceived(c, key)]
    drain(layer, 100.0)
    assert len(layer) == 0
    assert layer.receive(c, 101.0) == [StrayResponse(c)]  # after Timer M


def test_layer_server_matching_branch_sent_by_method():
    layer = TransactionLayer()
    inv = request()
    events = layer.receive(inv, 0.0, source=PEER)
    (key,) = [e.key for e in events if isinstance(e, RequestReceived)]
    assert key == TransactionKey("z9hG4bKabc", "INVITE", True, "192.0.2.1:5060")
    assert sent(layer.receive(inv, 0.5, source=PEER))[0].status == 100  # retransmission
    # Same branch, other sent-by: another transaction (§17.2.3).
    other = request(sent_by="192.0.2.2")
    assert of_type(layer.receive(other, 0.6, source=PEER), RequestReceived)
    # Same branch, method BYE: another transaction too.
    bye = request("BYE", to_tag="x", cseq=2)
    assert of_type(layer.receive(bye, 0.7, source=PEER), RequestReceived)
    assert len(layer) == 3
    # Responses go back to where the request came from.
    events = layer.send_response(key, response(inv, 180), 0.8)
    assert events[0].destination == PEER


def test_layer_ack_for_non2xx_matches_invite_transaction():
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, 0.0, source=PEER)
    key = TransactionKey("z9hG4bKabc", "INVITE", True, "192.0.2.1:5060")
    busy = response(inv, 486)
    layer.send_response(key, busy, 0.1)
    assert layer.receive(build_ack_for_non2xx(inv, busy), 0.2) == []
    assert layer.get(key).state is State.CONFIRMED
    assert drain(layer, 10.0) == [TransactionTerminated(key)]
    assert len(layer) == 0


def test_layer_ack_for_2xx_routed_by_dialog_and_stray_ack():
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, 0.0, source=PEER)
    key = TransactionKey("z9hG4bKabc", "INVITE", True, "192.0.2.1:5060")
    layer.send_response(key, response(inv, 200, to_tag="ours"), 0.1)
    resent = drain(layer, 2.0)
    assert len(sent(resent)) == 2  # 2xx resent at 0.6 and 1.6
    ack = request("ACK", branch="z9hG4bKack", to_tag="ours")
    assert layer.receive(ack, 2.0) == [AckReceived(ack, key)]
    assert layer.receive(ack, 2.1) == []  # retransmitted ACK
    assert not sent(drain(layer, 5.0))
    stray = request("ACK", branch="z9hG4bKzzz", to_tag="nobody")
    assert layer.receive(stray, 3.0) == [StrayAck(stray)]
    drain(layer, 100.0)
    assert len(layer) == 0 and not layer._acks_2xx
    assert layer.receive(ack, 101.0) == [StrayAck(ack)]


def test_layer_cancel_matched_to_invite_and_481_when_unknown():
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, 0.0, source=PEER)
    key = TransactionKey("z9hG4bKabc", "INVITE", True, "192.0.2.1:5060")
    cancel = build_cancel(inv)
    events = layer.receive(cancel, 1.0, source=PEER)
    (ok,) = sent(events)
    assert ok.status == 200 and ok.cseq.method == "CANCEL"
    assert CancelReceived(cancel, key) in events
    # Retransmitted CANCEL: answered from cache, TU not told again.
    assert [type(e) for e in layer.receive(cancel, 1.5, source=PEER)] == [SendMessage]
    events = layer.send_response(key, response(inv, 487), 1.1)
    assert sent(events)[0].status == 487
    # CANCEL for an unknown INVITE: 481.
    lost = build_cancel(request(branch="z9hG4bKgone"))
    assert sent(layer.receive(lost, 2.0, source=PEER))[0].status == 481
    # CANCEL after the final: 200 but nothing for the TU (§9.2).
    late = layer.receive(cancel.copy(), 40.0, source=PEER)
    assert not of_type(late, CancelReceived)


def test_layer_client_cancel_waits_for_provisional():
    layer = TransactionLayer()
    inv = request()
    key, _ = layer.send_request(inv, PEER, 0.0)
    assert layer.cancel(key, 0.1) == []  # Calling: no CANCEL before a provisional (§9.1)
    events = layer.receive(response(inv, 100), 0.2)
    cancels = [m for m in sent(events) if isinstance(m, SipRequest)]
    assert [c.method for c in cancels] == ["CANCEL"]
    assert cancels[0].headers.get_all("Via") == inv.headers.get_all("Via")
    assert layer.cancel(key, 0.3) == []  # only one CANCEL
    # 487 for the INVITE is ACKed; 200 for the CANCEL passed up.
    cancel_ok = response(cancels[0], 200)
    assert of_type(layer.receive(cancel_ok, 0.4), ResponseReceived)
    terminated = response(inv, 487)
    events = layer.receive(terminated, 0.5)
    assert [m.method for m in sent(events)] == ["ACK"]


def test_layer_cancel_pending_dropped_when_final_arrives_first():
    layer = TransactionLayer()
    inv = request()
    key, _ = layer.send_request(inv, PEER, 0.0)
    layer.cancel(key, 0.1)
    events = layer.receive(response(inv, 200), 0.2)
    assert not any(isinstance(m, SipRequest) for m in sent(events))
    assert not layer._pending_cancel


def test_layer_cancel_200_race():
    """The INVITE's 200 arrives after our CANCEL: the TU still gets it (to ACK and BYE)."""
    layer = TransactionLayer()
    inv = request()
    key, _ = layer.send_request(inv, PEER, 0.0)
    layer.receive(response(inv, 180), 0.1)
    (cancel,) = sent(layer.cancel(key, 1.0, reason='SIP;cause=487;text="gone"'))
    assert cancel.headers.get("Reason") is not None
    ckey = TransactionKey(key.branch, "CANCEL", False)
    ok_invite = response(inv, 200)
    assert layer.receive(ok_invite, 1.1) == [ResponseReceived(ok_invite, key)]
    ok_cancel = response(cancel, 200)
    assert layer.receive(ok_cancel, 1.2) == [ResponseReceived(ok_cancel, ckey)]
    # The INVITE transaction is Accepted (not timed out by the CANCEL guard).
    events = drain(layer, 100.0)
    assert not of_type(events, TransactionTimeout)
    assert len(layer) == 0


def test_layer_cancel_after_final_is_noop():
    layer = TransactionLayer()
    inv = request()
    key, _ = layer.send_request(inv, PEER, 0.0)
    layer.receive(response(inv, 486), 0.1)
    assert layer.cancel(key, 0.2) == []
    assert layer.cancel(TransactionKey("nope", "INVITE", False), 0.2) == []


def test_layer_rfc2543_peer_without_magic_cookie():
    layer = TransactionLayer()
    inv = request(branch="old2543")
    events = layer.receive(inv, 0.0, source=PEER)
    (key,) = [e.key for e in events if isinstance(e, RequestReceived)]
    assert sent(layer.receive(inv, 0.1, source=PEER))  # retransmission matched
    cancel = build_cancel(inv)
    assert CancelReceived(cancel, key) in layer.receive(cancel, 0.2, source=PEER)
    busy = response(inv, 487)
    layer.send_response(key, busy, 0.3)
    layer.receive(build_ack_for_non2xx(inv, busy), 0.4)
    assert layer.get(key).state is State.CONFIRMED


def test_layer_reliable_from_via_and_no_retransmits():
    layer = TransactionLayer()
    inv = request(transport="TCP")
    events = layer.receive(inv, 0.0, source=PEER)
    (key,) = [e.key for e in events if isinstance(e, RequestReceived)]
    layer.send_response(key, response(inv, 486), 0.0)
    assert not sent(drain(layer, 31.9))
    layer.send_request(request("OPTIONS", branch=new_branch()), PEER, 0.0, reliable=True)
    assert not sent(drain(layer, 100.0))
    assert len(layer) == 0


def test_layer_transport_error_and_misuse():
    layer = TransactionLayer()
    key, _ = layer.send_request(request(), PEER, 0.0)
    assert layer.transport_error(key, 0.1) == [TransportError(key), TransactionTerminated(key)]
    assert len(layer) == 0 and layer.deadline() is None
    assert layer.transport_error(key, 0.2) == []
    with pytest.raises(TransactionStateError):
        layer.send_response(key, response(request(), 200), 0.3)
    with pytest.raises(ValueError):
        layer.send_request(request("ACK"), PEER, 0.0)
    layer.send_request(request("OPTIONS"), PEER, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request("OPTIONS"), PEER, 0.0)


def test_layer_memory_bounded_after_many_transactions():
    layer = TransactionLayer()
    now = 0.0
    for i in range(1500):
        now += 0.01
        inv = request(branch=new_branch(), call_id=f"c{i}")
        events = layer.receive(inv, now, source=PEER)
        (key,) = [e.key for e in events if isinstance(e, RequestReceived)]
        layer.send_response(key, response(inv, 486), now)
        out = layer.send_request(request("OPTIONS", branch=new_branch()), PEER, now)[0]
        layer.receive(response(layer.get(out).request, 200), now)
        layer.timer(now)
    drain(layer, now + 100.0)
    assert len(layer) == 0
    assert layer.deadline() is None
    assert len(layer._heap) == 0 and not layer._scheduled and not layer._acks_2xx


def test_layer_overload_answers_503():
    layer = TransactionLayer(max_transactions=2)
    for i in range(2):
        layer.receive(request("OPTIONS", branch=f"z9hG4bK{i}"), 0.0, source=PEER)
    events = layer.receive(request("OPTIONS", branch="z9hG4bKx"), 0.0, source=PEER)
    assert [m.status for m in sent(events)] == [503] and len(layer) == 2
    assert layer.receive(request("ACK", branch="z9hG4bKy"), 0.0) == [
        StrayAck(request("ACK", branch="z9hG4bKy"))
    ]


# ---------------------------------------------------------------------------------------------
# Property: random input never raises, never hangs, always ends by the timers


_STATUSES = st.sampled_from([100, 180, 183, 200, 202, 302, 404, 486, 487, 503, 603])
_OP = st.one_of(
    st.tuples(st.just("advance"), st.floats(0.0, 40.0)),
    st.tuples(st.just("timer"), st.none()),
    st.tuples(st.just("response"), _STATUSES),
    st.tuples(st.just("request"), st.sampled_from(["same", "ack", "other"])),
    st.tuples(st.just("tu"), _STATUSES),
    st.tuples(st.just("error"), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["ci", "cn", "si", "sn"]),
    reliable=st.booleans(),
    ops=st.lists(_OP, max_size=40),
)
def test_random_input_never_raises_and_terminates(kind, reliable, ops):
    method = "INVITE" if kind[1] == "i" else "BYE"
    req = request(method, transport="TCP" if reliable else "UDP")
    cls = {
        "ci": ClientInviteTransaction,
        "cn": ClientNonInviteTransaction,
        "si": ServerInviteTransaction,
        "sn": ServerNonInviteTransaction,
    }[kind]
    txn = cls(req, PEER, reliable=reliable, timers=TimerConfig(timer_c=200.0))
    now = 0.0
    txn.start(now)
    terminated = 0
    for op, arg in ops:
        events: list[Event] = []
        if op == "advance":
            now += arg
        elif op == "timer":
            events = txn.timer(now)
        elif op == "response" and kind[0] == "c":
            events = txn.receive(response(req, arg), now)
        elif op == "request" and kind[0] == "s":
            other = {"same": req, "ack": request("ACK", to_tag="ttag"), "other": request("INFO")}
            events = txn.receive(other[arg], now)
        elif op == "tu" and kind[0] == "s":
            try:
                events = txn.send_response(response(req, arg), now)
            except TransactionStateError:
                assert txn.has_final or txn.terminated  # the only misuse here
        elif op == "error":
            events = txn.transport_error(now)
        terminated += len(of_type(events, TransactionTerminated))
        assert txn.terminated == (terminated == 1)
    # The TU does its part: a server answers, a ringing client INVITE relies on Timer C.
    if kind[0] == "s" and not txn.terminated and not txn.has_final:
        terminated += len(
            of_type(txn.send_response(response(req, 486), now), TransactionTerminated)
        )
    steps = 0
    while not txn.terminated:
        d = txn.deadline()
        assert d is not None, f"{txn!r} would hang"
        now = max(now, d)
        events = txn.timer(now)
        terminated += len(of_type(events, TransactionTerminated))
        if kind == "ci" and of_type(events, ProceedingTimeout):
            pass  # the layer sends the CANCEL; the transaction gives up 64*T1 later
        steps += 1
        assert steps < 200
    assert terminated == 1
    assert txn.deadline() is None


_LAYER_OP = st.one_of(
    st.tuples(st.just("advance"), st.floats(0.0, 20.0), st.integers(0, 3)),
    st.tuples(st.just("request"), st.sampled_from(["INVITE", "BYE", "ACK", "CANCEL"]),
              st.integers(0, 3)),
    st.tuples(st.just("response"), _STATUSES, st.integers(0, 3)),
    st.tuples(st.just("answer"), _STATUSES, st.integers(0, 3)),
    st.tuples(st.just("send"), st.sampled_from(["INVITE", "OPTIONS"]), st.integers(0, 3)),
    st.tuples(st.just("cancel"), st.none(), st.integers(0, 3)),
    st.tuples(st.just("error"), st.none(), st.integers(0, 3)),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_LAYER_OP, max_size=40), reliable=st.booleans())
def test_layer_random_traffic_never_raises_and_empties(ops, reliable):
    layer = TransactionLayer(timers=TimerConfig(timer_c=200.0))
    transport = "TCP" if reliable else "UDP"
    branches = [f"z9hG4bKb{i}" for i in range(4)]
    server_keys: list[TransactionKey] = []
    client: list[tuple[TransactionKey, SipRequest]] = []
    now = 0.0
    for op, arg, i in ops:
        if op == "advance":
            now += arg
            layer.timer(now)
        elif op == "request":
            to_tag = "ttag" if arg in ("ACK", "BYE") else None
            req = request(arg, branch=branches[i], transport=transport, to_tag=to_tag)
            for e in layer.receive(req, now, source=PEER):
                if isinstance(e, RequestReceived):
                    server_keys.append(e.key)
        elif op == "response" and client:
            key, req = client[i % len(client)]
            layer.receive(response(req, arg, to_tag=f"t{i}"), now)
        elif op == "response":
            layer.receive(response(request(branch=branches[i]), arg), now)
        elif op == "answer" and server_keys:
            key = server_keys[i % len(server_keys)]
            txn = layer.get(key)
            if txn is not None and not txn.has_final:
                layer.send_response(key, response(txn.request, arg), now)
        elif op == "send":
            req = request(arg, branch=new_branch(), transport=transport)
            key, _ = layer.send_request(req, PEER, now, reliable=reliable)
            client.append((key, req))
        elif op == "cancel" and client:
            layer.cancel(client[i % len(client)][0], now)
        elif op == "error" and client:
            layer.transport_error(client[i % len(client)][0], now)
    for key in server_keys:  # the TU answers whatever it left pending
        txn = layer.get(key)
        if txn is not None and not txn.has_final:
            layer.send_response(key, response(txn.request, 486), now)
    steps = 0
    while (d := layer.deadline()) is not None:
        now = max(now, d)
        layer.timer(now)
        steps += 1
        assert steps < 1000
    assert len(layer) == 0
    assert not layer._scheduled and not layer._acks_2xx and not layer._pending_cancel
