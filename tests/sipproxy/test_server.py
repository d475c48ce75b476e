"""The running proxy over real sockets: SIP over TCP, malformed and oversized input, media
timeout, and nothing left behind after many calls (tasks, sockets, call state)."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sipproxy.app import Proxy
from sipproxy.config import parse_config
from sipproxy.sipmessage import SipRequest, SipResponse
from tests.sipproxy.sippeers import FakePbx, TcpPeer, UdpPeer, in_dialog, invite, options

CONFIG = """
proxy:
  sip: {listen: 127.0.0.1, udp_port: 0, tcp_port: 0, max_message_size: 4096}
  media: {address: 127.0.0.1, port_min: 21000, port_max: 21998, timeout_s: %s}
  upstream: {pbx: "127.0.0.1:%d"}
  trunks: {allow: [127.0.0.0/8]}
  metrics: {listen: null}
"""


@asynccontextmanager
async def running(timeout_s: float = 30) -> AsyncIterator[tuple[Proxy, FakePbx]]:
    pbx = await FakePbx.open()
    proxy = Proxy(parse_config(CONFIG % (timeout_s, pbx.port)))
    await proxy.start()
    try:
        yield proxy, pbx
    finally:
        await proxy.stop(grace_s=0)
        pbx.close()


def udp_addr(proxy: Proxy) -> tuple[str, int]:
    return ("127.0.0.1", proxy.sip.udp_port)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_call_over_tcp_is_answered_on_its_connection_and_bridged_to_the_udp_pbx() -> None:
    async def scenario() -> None:
        async with running() as (proxy, pbx):
            assert proxy.sip.tcp_port
            caller = await TcpPeer.connect(("127.0.0.1", proxy.sip.tcp_port))
            inv = invite(("127.0.0.1", proxy.sip.tcp_port), via=caller.via, transport="TCP")
            data = inv.serialize()
            caller.send(data[:37])  # framing by Content-Length across segments
            await asyncio.sleep(0.05)
            caller.send(data[37:])
            await caller.expect(100)
            await caller.expect(180)
            ok = await caller.expect(200)
            assert isinstance(ok, SipResponse) and ok.body
            contact = ok.headers.get("Contact") or ""
            assert "transport=tcp" in contact and f":{proxy.sip.tcp_port}" in contact
            pbx_inv = await pbx.expect("INVITE")
            assert "SIP/2.0/UDP" in (pbx_inv.headers.get("Via") or "")
            await pbx.expect("ACK")
            # ACK and an in-dialog OPTIONS in one segment: two messages, both handled
            assert isinstance(inv, SipRequest)
            ack = in_dialog("ACK", inv, ok, via=caller.via, transport="TCP")
            opt = in_dialog("OPTIONS", inv, ok, via=caller.via, transport="TCP", cseq=2)
            caller.send(ack.serialize() + opt.serialize())
            assert (await caller.expect(200)).cseq.method == "OPTIONS"
            # the PBX hangs up: the BYE reaches the caller over its TCP connection
            pbx_ok = next(m for m in pbx.seen if isinstance(m, SipRequest) and m.method == "ACK")
            assert pbx_ok
            (call,) = proxy.b2bua.calls
            proxy.sip.dispatch(proxy.b2bua.hangup(call, proxy.sip.now(), "test"))
            bye = await caller.expect("BYE")
            assert (bye.headers.get("Via") or "").startswith("SIP/2.0/TCP")
            await pbx.expect("BYE")
            assert proxy.relay.calls == {} and proxy.b2bua.calls == []
            assert proxy.sip.counters.internal_errors == 0
            await caller.close()

    asyncio.run(scenario())


def test_tcp_malformed_message_gets_400_and_the_connection_stays_but_bad_framing_closes() -> None:
    async def scenario() -> None:
        async with running() as (proxy, _):
            assert proxy.sip.tcp_port
            addr = ("127.0.0.1", proxy.sip.tcp_port)
            peer = await TcpPeer.connect(addr)
            bad = (
                "OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP {peer.via};branch=z9hG4bK1\r\n"
                "From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: bad1\r\n"
                "CSeq: one OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            peer.send(b"\r\n\r\n" + bad)  # a keep-alive ping, then a framed, malformed request
            await asyncio.sleep(0.3)
            assert b"SIP/2.0 400 " in peer.raw and b"Call-ID: bad1" in peer.raw
            assert b"CSeq: one OPTIONS" in peer.raw and peer.unparsed == 1
            good = options(addr, via=peer.via).serialize().replace(b"/UDP", b"/TCP")
            peer.send(good)
            await peer.expect(200)  # §18.3: framed correctly, so the connection goes on
            assert peer.raw.startswith(b"\r\n")  # the pong
            # no Content-Length on a stream: the message cannot be framed, so it is closed
            peer.send(good.replace(b"Content-Length: 0\r\n", b""))
            await asyncio.wait_for(peer.closed.wait(), 3)
            assert proxy.sip.counters.tcp_closed_framing == 1
            await peer.close()
            # a message over max_message_size on a stream: closed too, counted
            peer = await TcpPeer.connect(addr)
            peer.send(good.replace(b"Content-Length: 0", b"Content-Length: 9000") + b"x" * 9000)
            await asyncio.wait_for(peer.closed.wait(), 3)
            assert proxy.sip.counters.too_large == 1
            await peer.close()

    asyncio.run(scenario())


def test_udp_malformed_request_gets_400_and_oversized_is_counted() -> None:
    async def scenario() -> None:
        async with running() as (proxy, _):
            peer = await UdpPeer.open()
            target = udp_addr(proxy)
            good = options(target, via=peer.via).serialize()
            peer.send(good.replace(b"Max-Forwards: 70", b"Max-Forwards: many"), target)
            await peer.expect(400)
            big = good.replace(b"Content-Length: 0", b"Content-Length: 5000") + b"y" * 5000
            peer.send(big, target)
            assert (await peer.expect(513)).status == 513
            peer.send(b"\x00\xff garbage", target)
            peer.send(b"SIP/2.0 200 OK\r\n\r\n", target)  # a broken response: never answered
            peer.send(good, target)
            assert (await peer.expect(200)).cseq.method == "OPTIONS"
            assert await peer.quiet(0.2) == []
            c = proxy.sip.counters
            assert c.parse_errors == 4 and c.too_large == 1 and c.answered_400 == 2
            peer.close()

    asyncio.run(scenario())


async def _call(proxy: Proxy, caller: UdpPeer, pbx: FakePbx) -> tuple[SipRequest, SipResponse]:
    inv = invite(udp_addr(proxy), via=caller.via)
    caller.send(inv, udp_addr(proxy))
    ok = await caller.expect(200, call_id=inv.call_id)
    assert isinstance(ok, SipResponse)
    caller.send(in_dialog("ACK", inv, ok, via=caller.via), udp_addr(proxy))
    return inv, ok


def test_media_timeout_hangs_up_both_legs_and_releases_the_sockets() -> None:
    async def scenario() -> None:
        before = open_fds()
        async with running(timeout_s=1) as (proxy, pbx):
            caller = await UdpPeer.open()
            during = open_fds()
            await _call(proxy, caller, pbx)
            assert len(proxy.relay.calls) == 1 and open_fds() > during
            # no RTP at all: BYE to both legs within timeout_s (plus the relay's tick)
            loop = asyncio.get_running_loop()
            start = loop.time()
            bye_a = await caller.expect("BYE", timeout=3)
            bye_b = await pbx.expect("BYE", timeout=3)
            assert loop.time() - start < 1.6
            caller.send(bye_a and _ok(bye_a), udp_addr(proxy))
            assert bye_b.method == "BYE"
            await asyncio.sleep(0.05)
            assert proxy.relay.calls == {} and proxy.b2bua.calls == []
            assert open_fds() == during  # the call's four RTP/RTCP sockets are closed
            caller.close()
        await asyncio.sleep(0.05)
        assert open_fds() <= before

    asyncio.run(scenario())


def _ok(request: SipRequest | SipResponse) -> SipResponse:
    from sipproxy.sipmessage import build_response

    assert isinstance(request, SipRequest)
    return build_response(request, 200)


def test_many_calls_leave_no_tasks_sockets_or_state_behind() -> None:
    async def scenario() -> None:
        tasks_before = set(asyncio.all_tasks())
        fds_before = open_fds()
        async with running() as (proxy, pbx):
            caller = await UdpPeer.open()
            fds_idle = open_fds()
            for round_ in range(3):
                dialogs = await asyncio.gather(*(_call(proxy, caller, pbx) for _ in range(10)))
                assert len(proxy.b2bua.calls) == 10 and len(proxy.relay.calls) == 10
                for i, (inv, ok) in enumerate(dialogs):
                    if (i + round_) % 2:  # half hung up by the caller, half by the PBX side
                        caller.send(in_dialog("BYE", inv, ok, via=caller.via), udp_addr(proxy))
                    else:
                        calls = proxy.b2bua.calls
                        (call,) = [c for c in calls if c.a_invite.call_id == inv.call_id]
                        proxy.sip.dispatch(proxy.b2bua.hangup(call, proxy.sip.now(), "test"))
                await asyncio.sleep(0.2)
                assert proxy.b2bua.calls == [] and proxy.relay.calls == {}
                assert open_fds() == fds_idle
            b2b = proxy.b2bua
            assert b2b._calls == {} and b2b._waiting_media == {} and not b2b.take_media_requests()
            assert proxy.sip._tasks == set() and proxy.sip.events._subs == {}
            assert proxy.sip.counters.internal_errors == 0
            caller.close()
        await asyncio.sleep(0.05)
        gc.collect()
        assert set(asyncio.all_tasks()) <= tasks_before | {asyncio.current_task()}
        assert open_fds() <= fds_before

    asyncio.run(scenario())


def test_a_ringing_call_without_early_media_is_not_timed_out() -> None:
    async def scenario() -> None:
        async with running(timeout_s=1) as (proxy, pbx):
            pbx.answer = False  # 180 only: a queue that rings for longer than timeout_s
            caller = await UdpPeer.open()
            inv = invite(udp_addr(proxy), via=caller.via)
            caller.send(inv, udp_addr(proxy))
            await caller.expect(180, call_id=inv.call_id)
            got = await caller.quiet(1.6)
            assert [m for m in got if isinstance(m, SipResponse) and m.status >= 200] == []
            assert [c.state for c in proxy.b2bua.calls] == ["early"]
            caller.close()

    asyncio.run(scenario())
