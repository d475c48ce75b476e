"""The asyncio media relay over real UDP sockets on 127.0.0.1, stdlib loop and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

import numpy as np
import pytest

from sipproxy.media import CallDigit, LegParams, MediaEvent
from sipproxy.relay import MediaRelay, PortsExhausted, RelayConfig
from sipproxy.rtp import build_rtp, parse_rtp
from tests.leakdecoder import decode as leak_decode
from tests.sipproxy.media_helpers import (
    FRAME,
    Phone,
    audio_of,
    check_stream,
    speechish,
    tone_power,
    with_keys,
)

HOST = "127.0.0.1"
LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None  # type: ignore[assignment]


def run(kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


_next_range = iter(range(31000, 39000, 200))


def port_range() -> RelayConfig:
    """A fresh port range per relay, so parallel tests and TIME_WAIT never collide."""
    lo = next(_next_range)
    return RelayConfig(media_address=HOST, port_min=lo, port_max=lo + 199)


class Peer(asyncio.DatagramProtocol):
    """A test phone's socket: sends what it is told, keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the stdlib's selector transport is not a DatagramTransport subclass
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, (HOST, port))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_peer() -> Peer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(Peer, local_addr=(HOST, 0))
    return peer


async def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.005)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_masked_call_end_to_end(loop_kind: str) -> None:
    """Caller speech with in-band keys and an RFC 4733 press, agent speech back: the agent
    gets one clean masked stream, the caller the agent's audio, each digit once."""
    events: list[MediaEvent] = []

    async def main() -> None:
        relay = MediaRelay(config=port_range(), on_event=events.append)
        caller, agent = await open_peer(), await open_peer()
        call = await relay.open_call(
            "c1",
            LegParams("PCMU", remote=caller.address),
            LegParams("PCMU", remote=agent.address),
        )
        phone = Phone()
        agent_phone = Phone(ssrc=0xA6E17, seq=10, ts=777)
        base = speechish(2.0, seed=21)
        signal, _ = with_keys(base, "42", first_ms=300, every_ms=800)
        frames = list(phone.frames(signal[: FRAME * 50]))
        # 1) in-band keys at 4x real time (the core does not care about pacing)
        for pkt in frames:
            caller.send(pkt, call.caller_port)
            agent.send(agent_phone.audio(np.zeros(FRAME)), call.agent_port)
            await asyncio.sleep(0.005)
        # 2) an RFC 4733 press of "9" in real time, the phone silent meanwhile
        press_at = len(frames)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for offset, pkt in phone.event_packets("9", 1600):
            await asyncio.sleep(max(t0 + offset / 8000 - loop.time(), 0))
            caller.send(pkt, call.caller_port)
        phone.skip(1600 + 3 * FRAME)
        await asyncio.sleep(0.08)
        # 3) more speech with a key, then silence to drain the delay line
        tail = list(phone.frames(signal[FRAME * 50 :])) + list(phone.frames(np.zeros(FRAME * 5)))
        for pkt in tail:
            caller.send(pkt, call.caller_port)
            await asyncio.sleep(0.005)
        await wait_for(lambda: sum(1 for e in events if isinstance(e, CallDigit)) >= 3)
        await asyncio.sleep(0.05)
        got = list(agent.received)
        to_caller = list(caller.received)
        counters = call.media.counters
        await relay.close()
        caller.close()
        agent.close()
        await asyncio.sleep(0)

        check_stream(got, pt=0)
        assert all(parse_rtp(p).payload_type == 0 for p in got)  # no RFC 4733 reached the agent
        heard = audio_of(got)
        assert leak_decode(heard) == []
        digits = [e for e in events if isinstance(e, CallDigit)]
        assert sorted((d.digit, d.source) for d in digits) == [
            ("2", "inband"),
            ("4", "inband"),
            ("9", "rfc4733"),
        ]
        assert counters.fill_frames >= 5  # slots of the silent event were filled
        start = press_at * FRAME + 160  # lookahead plus the slack before the first fill
        assert tone_power(heard[start : start + 800].astype(np.float64), 500.0) > 0.5
        check_stream(to_caller, pt=0)
        assert len(to_caller) == len(frames)

    run(loop_kind, main)


def test_malformed_and_hijack_over_udp(loop_kind: str) -> None:
    async def main() -> None:
        relay = MediaRelay(config=port_range())
        caller, agent, intruder = await open_peer(), await open_peer(), await open_peer()
        call = await relay.open_call(
            "c2", LegParams(remote=caller.address), LegParams(remote=agent.address)
        )
        phone = Phone()
        signal = speechish(0.6, seed=22)
        frames = list(phone.frames(signal))
        for i, pkt in enumerate(frames):
            caller.send(pkt, call.caller_port)
            if i == 5:
                for bad in (b"\x80", b"\x40" + bytes(20), build_rtp(99, 1, 1, 1, b"x")):
                    caller.send(bad, call.caller_port)
                intruder.send(build_rtp(0, 1, 1, 0xBAD, bytes(160)), call.caller_port)
            await asyncio.sleep(0.002)
        for pkt in phone.frames(np.zeros(FRAME * 3)):
            caller.send(pkt, call.caller_port)
        await wait_for(lambda: len(agent.received) == len(frames) + 3)
        c = call.media.caller.counters
        assert (c.short, c.version, c.unknown_pt, c.hijack) == (1, 1, 1, 1)
        check_stream(agent.received, pt=0)
        la = relay.engine.masker.lookahead
        assert np.array_equal(audio_of(agent.received)[la : la + signal.size], audio_of(frames))
        assert intruder.received == []
        await relay.close()
        for p in (caller, agent, intruder):
            p.close()

    run(loop_kind, main)


def test_rtcp_sockets_relay_between_legs() -> None:
    async def main() -> None:
        relay = MediaRelay(config=port_range())
        caller, agent = await open_peer(), await open_peer()
        caller_rtcp, agent_rtcp = await open_peer(), await open_peer()
        call = await relay.open_call(
            "c3",
            LegParams(remote=caller.address, remote_rtcp=caller_rtcp.address),
            LegParams(remote=agent.address, remote_rtcp=agent_rtcp.address),
        )
        rr = bytes([0x80, 201, 0, 1]) + (0x1234ABCD).to_bytes(4, "big")
        caller_rtcp.send(rr, call.caller_port + 1)
        await wait_for(lambda: len(agent_rtcp.received) == 1)
        assert agent_rtcp.received[0][:4] == rr[:4]
        await relay.close()
        for p in (caller, agent, caller_rtcp, agent_rtcp):
            p.close()

    asyncio.run(main())


def test_ports_are_even_pairs_released_and_exhaustion_is_clear() -> None:
    async def main() -> None:
        # 39001-39009: even RTP ports 39002-39008, RTCP on the odd one after each
        cfg = RelayConfig(media_address=HOST, port_min=39001, port_max=39009)
        relay = MediaRelay(config=cfg)
        a = await relay.open_call("a", LegParams(), LegParams())
        b = await relay.open_call("b", LegParams(), LegParams())
        ports = [a.caller_port, a.agent_port, b.caller_port, b.agent_port]
        assert sorted(ports) == [39002, 39004, 39006, 39008]
        with pytest.raises(PortsExhausted, match="39001-39009"):
            await relay.open_call("c", LegParams(), LegParams())
        assert "c" not in relay.calls and len(relay.engine.calls) == 2
        relay.close_call("a")
        await asyncio.sleep(0)
        c = await relay.open_call("c", LegParams(), LegParams())
        assert {c.caller_port, c.agent_port} == {a.caller_port, a.agent_port}
        await relay.close()

    asyncio.run(main())


def test_teardown_leaves_no_sockets_or_tasks(loop_kind: str) -> None:
    before = open_fds()

    async def main() -> None:
        relay = MediaRelay(config=port_range())
        peer = await open_peer()
        fds_with_peer = open_fds()
        handles = [
            await relay.open_call(f"t{i}", LegParams(remote=peer.address), LegParams())
            for i in range(5)
        ]
        assert open_fds() == fds_with_peer + 5 * 4
        for h in handles:
            peer.send(Phone().audio(np.zeros(FRAME)), h.caller_port)
        await asyncio.sleep(0.05)
        await relay.close()
        assert relay.calls == {} and relay.engine.calls == {}
        assert open_fds() == fds_with_peer
        assert asyncio.all_tasks() == {asyncio.current_task()}
        # the ports are free again
        for h in handles:
            for port in (h.caller_port, h.caller_port + 1):
                with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
                    s.bind((HOST, port))
        peer.close()
        await asyncio.sleep(0)

    run(loop_kind, main)
    assert open_fds() == before
