"""The sandbox provider's SIP UA: against a real baresip caller, then protocol cases driven
with raw SIP over UDP from the test (retransmissions, CANCEL, rejections, hang-ups, junk)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from control_api.sandbox_ua import SandboxDialog, SandboxUA, main
from dtmfmask.rfc4733 import EventGenerator
from sipproxy.rtp import build_rtp, peek_rtp
from sipproxy.sdp import parse_sdp
from sipproxy.sipmessage import SipRequest, SipResponse, build_response, parse_message
from tests.e2e.baresip import (
    BaresipUA,
    baresip_or_skip,
    claim_port_block,
    release_port_block,
)
from tests.sipproxy.sippeers import UdpPeer

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"
_n = itertools.count(1)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=20))


async def eventually(check: Any, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- a real peer


def test_baresip_dials_sends_rfc2833_digits_and_hangs_up(tmp_path: Path) -> None:
    baresip_or_skip()

    async def scenario() -> None:
        async with (
            SandboxUA(HOST, 0) as ua,
            BaresipUA("alice", workdir=tmp_path / "a", codecs=("PCMA", "PCMU")) as alice,
        ):
            await alice.dial(ua.uri("sandbox"))
            await alice.wait_for("CALL_ESTABLISHED")
            # Our stream reached baresip. We stream from the 200 on, so this may come before
            # CALL_ESTABLISHED, where wait_for (which moves on past each match) cannot see it.
            await eventually(lambda: "CALL_RTPESTAB" in alice.event_types(), 5.0)
            (dialog,) = ua.dialogs
            await dialog.wait_for("confirmed")
            assert dialog.codec == "PCMA"  # the offerer's first choice
            assert dialog.event_pt == 101

            await alice.send_dtmf("4*#9", interval=None)  # one sndcode: back to back
            await eventually(lambda: dialog.digits_received == 4, 5.0)
            assert dialog.take_digits() == "4*#9"
            assert dialog.take_digits() == ""  # taken means wiped

            await alice.send_dtmf("07", interval=None)
            await eventually(lambda: dialog.digits_received == 6, 5.0)
            await asyncio.sleep(0.1)  # let the last end packets arrive: still one per key
            assert dialog.digits_received == 6
            await alice.hangup()
            await dialog.wait_for("terminated")
            assert dialog.ended_by == "remote"
            assert dialog.take_digits() == ""  # the BYE wiped "07"
            assert dialog.audio_packets > 20
            assert dialog.rtp_sent > 20
            assert ua.counters.byes_received == 1
            assert ua.counters.malformed == ua.counters.internal_errors == 0
            heard = await alice.recording()
        assert np.abs(heard.astype(np.int32)).max() > 50  # the prompt tone, decoded by baresip

    run(scenario())


# --------------------------------------------------------------------------- raw SIP helpers

OFFER = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP {fmts}\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\na={direction}\r\n"
)


class Call:
    """One call from a raw UDP peer: builds requests, remembers tags and the 200."""

    def __init__(self, ua: SandboxUA, peer: UdpPeer, user: str, rtp_port: int = 40000) -> None:
        n = next(_n)
        self.ua, self.peer, self.user = ua, peer, user
        self.call_id = f"sbx{n}-{os.getpid()}@test"
        self.from_tag = f"f{n}"
        self.to = f"<sip:{user}@{HOST}>"
        self.cseq = 1
        self.rtp_port = rtp_port
        self.invite: SipRequest | None = None
        self.ok: SipResponse | None = None

    def request(
        self,
        method: str,
        *,
        uri: str | None = None,
        branch: str | None = None,
        cseq: int | None = None,
        body: str = "",
        to: str | None = None,
    ) -> SipRequest:
        branch = branch or f"z9hG4bK-{next(_n)}"
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        text = (
            f"{method} {uri or self.ua.uri(self.user)} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.peer.port};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:caller@{HOST}>;tag={self.from_tag}\r\n"
            f"To: {to or self.to}\r\nCall-ID: {self.call_id}\r\n"
            f"CSeq: {self.cseq if cseq is None else cseq} {method}\r\n"
            f"Contact: <sip:caller@{HOST}:{self.peer.port}>\r\n{ctype}"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        )
        msg = parse_message(text.encode())
        assert isinstance(msg, SipRequest)
        return msg

    def offer(self, fmts: str = "0 8 101", direction: str = "sendrecv") -> str:
        return OFFER.format(port=self.rtp_port, fmts=fmts, direction=direction)

    def send_invite(self, body: str | None = None) -> SipRequest:
        self.invite = self.request("INVITE", body=self.offer() if body is None else body)
        self.send(self.invite)
        return self.invite

    def send(self, message: SipRequest | SipResponse | bytes) -> None:
        self.peer.send(message, self.ua.address)

    def in_dialog(self, method: str, *, body: str = "", cseq: int | None = None) -> SipRequest:
        assert self.ok is not None and self.invite is not None
        if method == "ACK":
            cseq = self.invite.cseq.number
        elif cseq is None:
            self.cseq += 1
            cseq = self.cseq
        contact = (self.ok.headers.get("Contact") or "").strip("<>")
        return self.request(method, uri=contact, cseq=cseq, body=body, to=self.ok.headers.get("To"))

    async def answered(self) -> SipResponse:
        await self.expect(100)
        ringing = await self.expect(180)
        ok = await self.expect(200)
        assert ok.to.tag == ringing.to.tag
        self.ok = ok
        return ok

    async def expect(self, what: str | int, timeout: float = 3.0) -> Any:
        return await self.peer.expect(what, timeout, call_id=self.call_id)

    @property
    def dialog(self) -> SandboxDialog:
        d = self.ua.dialog(self.call_id)
        assert d is not None
        return d


class RtpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> tuple[RtpPeer, int]:
        loop = asyncio.get_running_loop()
        transport, peer = await loop.create_datagram_endpoint(cls, local_addr=(HOST, 0))
        return peer, transport.get_extra_info("sockname")[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append((data, addr))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def media_port(ok: SipResponse) -> int:
    sdp = parse_sdp(ok.body)
    return sdp.media[0].port


def digit_packets(key: str, ssrc: int, seq: int, ts: int) -> list[bytes]:
    """One RFC 4733 press (100 ms, 3 end packets), each packet sent twice."""
    out = []
    for p in EventGenerator().digit(key, ts, 800):
        packet = build_rtp(101, seq & 0xFFFF, p.timestamp, ssrc, p.payload, marker=p.marker)
        out += [packet, packet]
        seq += 1
    return out


async def open_ua(**kwargs: Any) -> tuple[SandboxUA, UdpPeer]:
    ua = SandboxUA(HOST, 0, **kwargs)
    await ua.start()
    return ua, await UdpPeer.open()


# --------------------------------------------------------------------------- protocol cases


def test_answer_retransmitted_invite_ack_media_digits_and_bye() -> None:
    async def scenario() -> None:
        ua, peer = await open_ua(t1=0.05)
        rtp, rtp_port = await RtpPeer.open()
        try:
            call = Call(ua, peer, "sandbox", rtp_port)
            invite = call.send_invite()
            ok = await call.answered()
            assert ok.headers.get("Content-Type") == "application/sdp"
            assert ok.headers.get("Contact") == f"<sip:sandbox@{HOST}:{ua.port}>"
            answer = parse_sdp(ok.body)
            (m,) = answer.media
            assert m.formats == ("0", "101")  # PCMU (offered first), telephone-event
            assert "rtpmap:0 PCMU/8000" in [f"{t}:{v}"[2:] for t, v in m.lines if t == "a"]
            assert call.dialog.state == "answered"

            call.send(invite)  # a retransmitted INVITE: the same 200 again
            again = await call.expect(200)
            assert again.serialize() == ok.serialize()
            assert ua.counters.request_retransmissions == 1

            call.send(call.in_dialog("ACK"))
            await call.dialog.wait_for("confirmed")
            await peer.quiet(0.3)  # swallow retransmissions sent before the ACK landed
            assert await peer.quiet(0.4) == []  # and none after it

            # Our stream: one SSRC, contiguous sequence numbers, ts in 20 ms steps, PCMU.
            await eventually(lambda: len(rtp.packets) >= 10)
            heads = [peek_rtp(p) for p, _ in rtp.packets]
            assert {h[0] for h in heads} == {0} and len({h[3] for h in heads}) == 1
            seqs = [h[1] for h in heads]
            assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
            assert all((b[2] - a[2]) % 160 == 0 for a, b in itertools.pairwise(heads))
            assert heads[0][4] and not any(h[4] for h in heads[1:])  # marker on the first
            assert {addr for _, addr in rtp.packets} == {(HOST, media_port(ok))}

            # Theirs: audio packets counted, each key press counted once.
            dest = (HOST, media_port(ok))
            for i in range(10):
                rtp.send(build_rtp(0, 100 + i, 160 * i, 0x1234, bytes(160)), dest)
            for packet in digit_packets("5", 0x1234, 200, 8000):
                rtp.send(packet, dest)
            for packet in digit_packets("7", 0x1234, 300, 16000):
                rtp.send(packet, dest)
            rtp.send(b"\x00junk", dest)
            dialog = call.dialog
            await eventually(lambda: dialog.digits_received == 2 and dialog.rtp_malformed == 1)
            assert dialog.audio_packets == 10
            assert dialog.take_digits() == "57"
            assert "5" not in repr(dialog).replace(dialog.call_id, "")

            for packet in digit_packets("3", 0x1234, 400, 24000):
                rtp.send(packet, dest)
            await eventually(lambda: dialog.digits_received == 3)
            bye = call.in_dialog("BYE")
            call.send(bye)
            assert (await call.expect(200)).cseq.method == "BYE"
            assert dialog.state == "terminated" and dialog.ended_by == "remote"
            assert dialog.take_digits() == ""  # "3" was wiped by the BYE
            call.send(bye)  # retransmitted BYE: the same 200, no 481
            assert (await call.expect(200)).cseq.method == "BYE"
            assert ua.counters.no_dialog == 0
            sent = dialog.rtp_sent
            await asyncio.sleep(0.1)
            assert dialog.rtp_sent == sent  # the stream stopped with the dialog
        finally:
            rtp.close()
            peer.close()
            await ua.close()

    with capture_logs() as logs:
        run(scenario())
    (ended,) = [e for e in logs if e["event"] == "sandbox call ended"]
    assert ended["key_presses"] == 3 and ended["by"] == "remote"
    # A count only: no digit value in any log line. Call ids hold the pid, and ports and
    # addresses are random numbers that may hold "57": left out.
    values = [
        str(v)
        for e in logs
        for k, v in e.items()
        if k not in ("call_id", "key_presses") and "port" not in k and not isinstance(v, tuple)
    ]
    assert not [v for v in values if "57" in v or v in ("3", "5", "7")]


def test_unacknowledged_200_is_retransmitted_doubling_then_ended_with_bye() -> None:
    async def scenario() -> None:
        ua, peer = await open_ua(t1=0.02, t2=0.16)
        try:
            call = Call(ua, peer, "sandbox")
            loop = asyncio.get_running_loop()
            call.send_invite()
            await call.answered()
            first = loop.time()
            bye_task = asyncio.create_task(call.expect("BYE", timeout=3.0))
            times = []
            while not bye_task.done():
                with contextlib.suppress(TimeoutError):
                    await call.expect(200, timeout=0.05)
                    times.append(loop.time() - first)
            # Timers fire late, never early: retransmission k comes no sooner than
            # 20, 60, 140, 300 ms (T1 doubling), and at T2 = 160 ms steps after that, so
            # some 10 of them fit in 64*T1 = 1.28 s (6 if the interval were not capped).
            for k, at in enumerate((0.02, 0.06, 0.14, 0.30)):
                assert times[k] > at - 0.01
            assert 8 <= len(times) <= 11
            bye = bye_task.result()
            assert bye.headers.get("To").startswith("<sip:caller@")  # the remote party
            assert call.ok is not None and bye.from_.tag == call.ok.to.tag
            assert bye.uri == f"sip:caller@{HOST}:{peer.port}"  # our Contact, the target
            call.send(build_response(bye, 200))
            assert call.dialog.ended_by == "ack_timeout"
            assert ua.counters.ack_timeouts == 1
            await asyncio.sleep(0.1)
            assert ua._client == {}  # the 200 ended the BYE's retransmissions
        finally:
            peer.close()
            await ua.close()

    run(scenario())


def test_cancel_of_a_ringing_call_gets_200_and_487_until_ack() -> None:
    async def scenario() -> None:
        ua, peer = await open_ua(t1=0.05)
        try:
            call = Call(ua, peer, "noanswer")
            invite = call.send_invite()
            await call.expect(100)
            ringing = await call.expect(180)
            assert await peer.quiet(0.3) == []  # rings, never answers
            assert call.dialog.state == "ringing"

            branch = invite.vias[0].branch
            cancel = call.request("CANCEL", branch=branch, cseq=invite.cseq.number)
            call.send(cancel)
            ok = await call.expect(200)
            assert ok.cseq.method == "CANCEL" and ok.to.tag == ringing.to.tag
            terminated = await call.expect(487)
            assert terminated.to.tag == ringing.to.tag
            assert call.dialog.ended_by == "cancel"
            await call.expect(487)  # retransmitted until the ACK
            ack = call.request("ACK", branch=branch, cseq=invite.cseq.number,
                               to=terminated.headers.get("To"))  # fmt: skip
            call.send(ack)
            await peer.quiet(0.1)
            assert await peer.quiet(0.3) == []
            call.send(cancel)  # retransmitted CANCEL: its 200 again
            assert (await call.expect(200)).cseq.method == "CANCEL"

            stray = call.request("CANCEL", branch="z9hG4bK-nothing", cseq=1)
            call.send(stray)
            assert (await call.expect(481)).cseq.method == "CANCEL"
            assert ua.counters.cancelled == 1
        finally:
            peer.close()
            await ua.close()

    run(scenario())


@pytest.mark.parametrize(
    ("user", "status"), [("busy", 486), ("decline", 603), ("error", 500), ("nobody", 404)]
)
def test_rejecting_users_answer_their_status_until_ack(user: str, status: int) -> None:
    async def scenario() -> None:
        ua, peer = await open_ua(t1=0.03)
        try:
            call = Call(ua, peer, user)
            invite = call.send_invite()
            await call.expect(100)
            final = await call.expect(status)
            assert final.to.tag
            again = await call.expect(status)  # Timer G
            assert again.serialize() == final.serialize()
            ack = call.request("ACK", branch=invite.vias[0].branch, cseq=1,
                               to=final.headers.get("To"))  # fmt: skip
            call.send(ack)
            await peer.quiet(0.1)
            rest = await peer.quiet(0.3)
            assert rest == [] and ua.dialogs == []
            assert ua.counters.rejected == 1
        finally:
            peer.close()
            await ua.close()

    run(scenario())


def test_hangup_user_answers_then_byes_and_hang_up_method_byes() -> None:
    async def scenario() -> None:
        ua, peer = await open_ua(t1=0.05, hangup_after_s=0.2)
        try:
            call = Call(ua, peer, "hangup")
            loop = asyncio.get_running_loop()
            call.send_invite()
            await call.answered()
            call.send(call.in_dialog("ACK"))
            acked = loop.time()
            bye = await call.expect("BYE")
            assert 0.15 < loop.time() - acked < 1.0
            assert call.ok is not None
            assert bye.headers.get("From") == call.ok.headers.get("To")
            call.send(build_response(bye, 200))
            await call.dialog.wait_for("terminated")
            assert call.dialog.ended_by == "local"

            other = Call(ua, peer, "sandbox")
            other.send_invite()
            await other.answered()
            other.send(other.in_dialog("ACK"))
            await other.dialog.wait_for("confirmed")

            async def answer_bye() -> None:
                bye = await other.expect("BYE")
                other.send(build_response(bye, 200))

            answering = asyncio.create_task(answer_bye())
            assert await ua.hang_up(other.call_id) == 200
            await answering
            with pytest.raises(KeyError):
                await ua.hang_up(other.call_id)
            assert ua.counters.byes_sent == 2
        finally:
            peer.close()
            await ua.close()

    run(scenario())


def test_options_junk_unknown_dialogs_reinvite_and_late_offer() -> None:
    async def scenario() -> None:
        ua, peer = await open_ua(t1=0.05)
        rtp, rtp_port = await RtpPeer.open()
        try:
            probe = Call(ua, peer, "sandbox")
            probe.send(probe.request("OPTIONS"))
            ok = await probe.expect(200)
            assert "INVITE" in (ok.headers.get("Allow") or "")

            junk = [
                b"hello",
                b"INVITE sip:sandbox@127.0.0.1 SIP/2.0\r\n\r\n",  # no mandatory headers
                bytes(range(256)),
                probe.request("OPTIONS").serialize().replace(b"Content-Length: 0",
                                                             b"Content-Length: 99"),
            ]  # fmt: skip
            for data in junk:
                probe.send(data)
            probe.send(b"\r\n\r\n")
            probe.send(probe.request("OPTIONS"))
            await probe.expect(200)  # still answering
            assert ua.counters.malformed == len(junk)
            assert ua.counters.keepalives == 1
            assert ua.counters.internal_errors == 0

            ghost = Call(ua, peer, "sandbox")
            ghost.send(ghost.request("BYE", to=f"<sip:sandbox@{HOST}>;tag=nope"))
            await ghost.expect(481)
            ghost.send(ghost.request("REGISTER"))
            assert (await ghost.expect(405)).headers.get("Allow")

            star = Call(ua, peer, "sandbox")
            star.send(
                star.request("INVITE", body=star.offer())
                .serialize()
                .replace(f"Contact: <sip:caller@{HOST}:{peer.port}>".encode(), b"Contact: *")
            )
            await star.answered()  # and its BYE would go back to the INVITE's source
            assert star.dialog.remote_target is None

            g729 = Call(ua, peer, "sandbox")
            g729.send_invite(g729.offer(fmts="18"))
            await g729.expect(488)

            call = Call(ua, peer, "sandbox", rtp_port)
            call.send_invite()
            ok = await call.answered()
            call.send(call.in_dialog("ACK"))
            await call.dialog.wait_for("confirmed")
            call.send(call.in_dialog("MESSAGE"))
            await call.expect(405)
            call.send(call.in_dialog("INFO"))
            await call.expect(200)

            call.send(call.in_dialog("INVITE", body=call.offer()))
            same = await call.expect(200)
            assert same.body == ok.body  # nothing changed: the same SDP, same version
            call.send(_ack_for(call, same))

            call.send(call.in_dialog("INVITE", body=call.offer(direction="sendonly")))
            held = await call.expect(200)
            hold_sdp = parse_sdp(held.body)
            assert hold_sdp.media[0].direction == "recvonly"
            assert hold_sdp.origin.session_version == parse_sdp(ok.body).origin.session_version + 1
            call.send(_ack_for(call, held))
            await asyncio.sleep(0.05)
            sent = call.dialog.rtp_sent
            await asyncio.sleep(0.15)
            assert call.dialog.rtp_sent == sent  # on hold: we only receive
            call.send(call.in_dialog("BYE"))
            await call.expect(200)

            late = Call(ua, peer, "sandbox", rtp_port)
            late.send_invite(body="")
            offer = parse_sdp((await late.answered()).body)
            assert offer.media[0].formats == ("0", "8", "101")
            answer = late.offer(fmts="8 101")
            late.send(late.in_dialog("ACK", body=answer))
            await late.dialog.wait_for("confirmed")
            assert late.dialog.codec == "PCMA" and late.dialog.event_pt == 101
            assert ua.counters.internal_errors == 0
        finally:
            rtp.close()
            peer.close()
            await ua.close()

    run(scenario())


def _ack_for(call: Call, ok: SipResponse) -> SipRequest:
    return call.request("ACK", uri=(ok.headers.get("Contact") or "").strip("<>"),
                        cseq=ok.cseq.number, to=ok.headers.get("To"))  # fmt: skip


def test_close_byes_live_calls_and_wipes_digits() -> None:
    async def scenario() -> None:
        ua, peer = await open_ua(t1=0.05)
        rtp, rtp_port = await RtpPeer.open()
        try:
            call = Call(ua, peer, "sandbox", rtp_port)
            call.send_invite()
            ok = await call.answered()
            call.send(call.in_dialog("ACK"))
            dialog = call.dialog
            await dialog.wait_for("confirmed")
            for packet in digit_packets("9", 1, 1, 0):
                rtp.send(packet, (HOST, media_port(ok)))
            await eventually(lambda: dialog.digits_received == 1)
            await ua.close()
            assert (await call.expect("BYE")).call_id == call.call_id
            assert dialog.ended_by == "close" and dialog.take_digits() == ""
        finally:
            rtp.close()
            peer.close()
            await ua.close()

    run(scenario())


def test_listening_on_all_addresses_needs_an_address_to_advertise() -> None:
    with pytest.raises(ValueError, match="rtp_host"):
        SandboxUA("0.0.0.0", 5090)
    ua = SandboxUA("0.0.0.0", 5090, rtp_host="192.0.2.7")
    assert ua.uri("busy") == "sip:busy@192.0.2.7:5090"


def test_cli_rejects_a_bad_listen_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--listen", "nonsense"])
    assert re.search(r"host:port", capsys.readouterr().err)
    assert main(["--listen", "0.0.0.0:5090"]) == 2
    assert "rtp_host" in capsys.readouterr().err


def test_cli_runs_the_ua_alone_until_sigterm() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]

    async def scenario() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control_api.sandbox_ua", "--listen", f"{HOST}:{port}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        peer = await UdpPeer.open()
        try:
            probe = Call(SandboxUA(HOST, port), peer, "sandbox")
            async with asyncio.timeout(10):
                while True:
                    probe.send(probe.request("OPTIONS"))
                    with contextlib.suppress(TimeoutError):
                        await probe.expect(200, timeout=0.2)
                        break
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 5) == 0
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
            assert "sandbox ua listening" in err and "Traceback" not in err
        finally:
            peer.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    run(scenario())


def test_mutated_messages_are_dropped_or_answered_never_an_internal_error() -> None:
    """Seeded byte flips, truncations and splices of valid requests: every one is either
    malformed (counted) or handled; nothing escapes as an internal error."""
    import random

    async def scenario() -> None:
        ua, peer = await open_ua(t1=0.05)
        try:
            call = Call(ua, peer, "sandbox")
            seeds = [
                call.request("INVITE", body=call.offer()).serialize(),
                call.request(
                    "INVITE", body=call.offer(fmts="8 0 101", direction="inactive")
                ).serialize(),
                call.request("OPTIONS").serialize(),
                call.request("CANCEL").serialize(),
                call.request("BYE", to=f"<sip:sandbox@{HOST}>;tag=x").serialize(),
                call.request("ACK", to=f"<sip:sandbox@{HOST}>;tag=x").serialize(),
            ]
            rng = random.Random(4733)
            addr = (HOST, peer.port)
            alphabet = b"\r\n :;<>@=0123456789abc/\x00\xff-"
            for i in range(3000):
                data = bytearray(rng.choice(seeds))
                for _ in range(rng.randint(1, 4)):
                    at = rng.randrange(len(data))
                    op = rng.random()
                    if op < 0.5:
                        data[at] = rng.choice(alphabet)
                    elif op < 0.75:
                        del data[at : at + rng.randint(1, 20)]
                    else:
                        data[at:at] = rng.choice(seeds)[: rng.randint(1, 40)]
                ua._on_datagram(bytes(data), addr)
                if i % 200 == 0:
                    await asyncio.sleep(0)  # let answer tasks run
            offer = call.offer(fmts="0 8 101 13")
            for i in range(500):  # well-formed SIP, broken SDP: 400 / 488 / an answer
                body = list(offer)
                for _ in range(rng.randint(1, 3)):
                    at = rng.randrange(len(body))
                    body[at : at + rng.randint(0, 3)] = rng.choice(" 0189:/=\r\nx")
                invite = Call(ua, peer, "sandbox").request("INVITE", body="".join(body))
                ua._on_datagram(invite.serialize(), addr)
                if i % 50 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(0.1)
            assert ua.counters.internal_errors == 0
            assert ua.counters.malformed > 100  # the mutations did break things
            assert ua.counters.invites > 500
        finally:
            peer.close()
            await ua.close()

    run(scenario())


def test_rtp_port_range_gives_even_pairs_then_503() -> None:
    base = claim_port_block(4)

    async def scenario() -> None:
        ua, peer = await open_ua(t1=0.05, rtp_ports=(base, base + 3))
        try:
            ports = []
            for _ in range(2):
                call = Call(ua, peer, "sandbox")
                call.send_invite()
                ports.append(media_port(await call.answered()))
            assert sorted(ports) == [base, base + 2]
            full = Call(ua, peer, "sandbox")
            full.send_invite()
            assert (await full.expect(503)).headers.get("Retry-After")
            assert ua.counters.ports_exhausted == 1
        finally:
            peer.close()
            await ua.close()

    try:
        run(scenario())
    finally:
        release_port_block(base, 4)
