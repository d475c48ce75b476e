"""The provider leg and hold through the asyncio relay, over real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import numpy as np
import pytest

from dtmfmask.rfc4733 import EventReceiver, RtpDigitEnded
from sipproxy.media import DIGIT_SAMPLES, CallDigit, LegParams, MediaEvent
from sipproxy.relay import MediaRelay, PortsExhausted, RelayConfig
from sipproxy.rtp import parse_rtp
from tests.leakdecoder import decode as leak_decode
from tests.sipproxy.media_helpers import FRAME, Phone, audio_of, speechish, tone_power, with_keys
from tests.sipproxy.test_relay import (
    HOST,
    LOOPS,
    open_fds,
    open_peer,
    port_range,
    run,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _idle() -> None:
    await asyncio.sleep(0)


def test_provider_leg_over_udp(loop_kind: str) -> None:
    """Digits reach the provider as RFC 4733, its audio reaches the agent and the caller,
    hold audio reaches the caller while the agent is silent; closing frees everything."""
    events: list[MediaEvent] = []

    async def main() -> None:
        relay = MediaRelay(config=port_range(), on_event=events.append)
        caller, agent, provider, provider_rtcp = [await open_peer() for _ in range(4)]
        call = await relay.open_call(
            "p1", LegParams(remote=caller.address), LegParams(remote=agent.address)
        )
        fds = open_fds()
        port = await relay.open_provider("p1")
        assert port % 2 == 0 and port == call.provider_port
        assert port not in (call.caller_port, call.agent_port) and port in relay._used
        assert open_fds() == fds + 2
        with pytest.raises(ValueError, match="already"):
            await relay.open_provider("p1")
        media = call.media
        media.attach_provider(LegParams("PCMU"), 0.0)  # before the answer: no address yet
        media.attach_provider(
            LegParams("PCMU", remote=provider.address, remote_rtcp=provider_rtcp.address), 0.0
        )
        media.set_capture(True)

        phone = Phone()
        agent_phone = Phone(ssrc=0xA6E17, seq=10, ts=777)
        prov_phone = Phone(ssrc=0x9807, seq=1, ts=99)
        signal, _ = with_keys(speechish(1.2, seed=51), "38", first_ms=300, every_ms=500)
        tone = 3000.0 * np.sin(2 * np.pi * 400.0 * np.arange(signal.size) / 8000.0)
        for i, pkt in enumerate(phone.frames(signal)):
            caller.send(pkt, call.caller_port)
            agent.send(agent_phone.audio(np.zeros(FRAME)), call.agent_port)
            provider.send(prov_phone.audio(tone[i * FRAME : (i + 1) * FRAME]), port)
            await asyncio.sleep(0.01)
        provider_rtcp.send(bytes([0x80, 201, 0, 1]) + (0x9807).to_bytes(4, "big"), port + 1)
        for pkt in phone.frames(np.zeros(FRAME * 15)):
            caller.send(pkt, call.caller_port)
            await asyncio.sleep(0.01)
        await wait_for(lambda: sum(isinstance(e, CallDigit) for e in events) == 2)
        await wait_for(lambda: media.provider_counters.rtcp_rx == 1)

        # the provider got both digits as clean events, and masked audio
        receiver = EventReceiver((101,))
        digits = []
        for i, data in enumerate(provider.received):
            p = parse_rtp(data)
            if p.payload_type == 101:
                for ev in receiver.receive(
                    payload_type=101,
                    ssrc=p.ssrc,
                    timestamp=p.timestamp,
                    marker=p.marker,
                    payload=p.payload,
                    now=i * 20.0,
                ):
                    if isinstance(ev, RtpDigitEnded):
                        digits.append((ev.digit, ev.duration, ev.end_seen))
        assert digits == [("3", DIGIT_SAMPLES, True), ("8", DIGIT_SAMPLES, True)]
        assert len({parse_rtp(d).ssrc for d in provider.received}) == 1
        assert provider_rtcp.received == [] and agent.received  # RTCP not relayed
        heard = audio_of(agent.received)
        assert leak_decode(heard) == []
        assert tone_power(heard[1600:8000].astype(np.float64), 400.0) > 0.3
        back = audio_of(caller.received)
        assert tone_power(back[1600:8000].astype(np.float64), 400.0) > 0.3

        # hold: the agent is silent, the timer paces the hold audio
        n_before = len(caller.received)
        media.set_hold(True)
        await asyncio.sleep(0.4)
        media.set_hold(False)
        await asyncio.sleep(0.05)  # the last ones in flight
        held = caller.received[n_before:]
        assert 12 <= len(held) <= 24
        assert media.counters.hold_tick_frames == len(held)
        assert leak_decode(audio_of(held)) == []

        # closing the provider leg frees its sockets and port; it can be opened again
        relay.close_provider("p1")
        relay.close_provider("p1")  # idempotent
        assert media.provider is None and call.provider_port == 0 and port not in relay._used
        await wait_for(lambda: open_fds() == fds)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
            s.bind((HOST, port))
        again = await relay.open_provider("p1")
        assert open_fds() == fds + 2
        relay.close_call("p1")  # closes the provider leg too
        assert again not in relay._used and relay._used == set()
        await wait_for(lambda: open_fds() == fds - 4)
        await relay.close()
        for peer in (caller, agent, provider, provider_rtcp):
            peer.close()
        await asyncio.sleep(0)

    run(loop_kind, _idle)  # uvloop's first run in a process opens a pipe it keeps
    before = open_fds()
    run(loop_kind, main)
    assert open_fds() == before


def test_open_provider_errors() -> None:
    async def main() -> None:
        # one pair per leg and nothing more: 39101-39105 holds RTP ports 39102 and 39104
        relay = MediaRelay(config=RelayConfig(media_address=HOST, port_min=39101, port_max=39105))
        with pytest.raises(KeyError):
            await relay.open_provider("nope")
        await relay.open_call("e1", LegParams(), LegParams())
        with pytest.raises(PortsExhausted):
            await relay.open_provider("e1")
        assert relay.calls["e1"].provider_port == 0
        assert ("provider", False) not in relay.calls["e1"].endpoints
        relay.close_provider("nope")  # nothing to do
        await relay.close()

    asyncio.run(main())
