"""The media plane, sans-I/O: datagrams and a fake clock in, datagrams and events out."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dtmfmask.masker import MaskConfig
from dtmfmask.rfc4733 import EventGenerator
from sipproxy.media import (
    CallDigit,
    CallMedia,
    Datagram,
    LegParams,
    MediaConfig,
    MediaEngine,
    MediaTimeout,
)
from sipproxy.rtp import RTCP_SR, build_rtp, parse_rtcp, parse_rtp
from tests.leakdecoder import decode as leak_decode
from tests.leakdecoder import leaks
from tests.signals import dtmf_burst
from tests.sipproxy.media_helpers import (
    FRAME,
    Phone,
    audio_of,
    check_stream,
    speechish,
    tone_power,
    with_keys,
)

CALLER = ("192.0.2.10", 40000)
AGENT = ("198.51.100.20", 50000)
STEP = 0.02


class Harness:
    """One call on one engine, a fake clock, the datagrams each peer received."""

    def __init__(
        self,
        engine: MediaEngine | None = None,
        *,
        call_id: str = "call-1",
        caller: LegParams | None = None,
        agent: LegParams | None = None,
        config: MediaConfig | None = None,
    ) -> None:
        self.engine = engine or MediaEngine()
        self.now = 100.0
        self.call: CallMedia = self.engine.open_call(
            call_id,
            caller or LegParams("PCMU", remote=CALLER),
            agent or LegParams("PCMU", remote=AGENT),
            config,
            now=self.now,
        )
        self.to_agent: list[Datagram] = []
        self.to_caller: list[Datagram] = []
        self.events: list[object] = []

    def collect(self) -> None:
        self.engine.flush()
        for call in self.engine.ready_calls():
            for d in call.datagrams_to_send():
                (self.to_agent if d.leg == "agent" else self.to_caller).append(d)
            self.events += call.events()

    def caller(self, data: bytes, *, addr: tuple[str, int] = CALLER, rtcp: bool = False) -> None:
        self.call.receive("caller", data, addr, self.now, rtcp_port=rtcp)

    def agent(self, data: bytes, *, addr: tuple[str, int] = AGENT, rtcp: bool = False) -> None:
        self.call.receive("agent", data, addr, self.now, rtcp_port=rtcp)

    def step(self, dt: float = STEP) -> None:
        """Time passes; the timer ticks; the engine flushes."""
        self.now += dt
        self.engine.tick(self.now)
        self.collect()

    def agent_rtp(self) -> list[bytes]:
        return [d.data for d in self.to_agent if not d.rtcp]

    def digits(self) -> list[CallDigit]:
        return [e for e in self.events if isinstance(e, CallDigit)]


def send_audio(h: Harness, phone: Phone, signal: np.ndarray) -> None:
    for pkt in phone.frames(signal):
        h.caller(pkt)
        h.step()


def flush_tail(h: Harness, phone: Phone, frames: int = 10) -> None:
    """A little silence so the delay line empties."""
    send_audio(h, phone, np.zeros(frames * FRAME))


def test_inband_keys_are_masked_and_counted_once() -> None:
    h = Harness()
    phone = Phone()
    base = speechish(4.0, seed=1)
    assert leak_decode(base) == []  # the speech alone is clean for the decoder
    signal, presses = with_keys(base, "159#*0")
    send_audio(h, phone, signal)
    flush_tail(h, phone)

    pkts = h.agent_rtp()
    ssrc = check_stream(pkts, pt=0)
    assert ssrc != phone.ssrc
    assert len(pkts) == signal.size // FRAME + 10
    heard = audio_of(pkts)
    assert leak_decode(heard) == []
    digits = h.digits()
    assert "".join(d.digit for d in digits) == "159#*0"
    assert {d.source for d in digits} == {"inband"}
    # time-aligned ground truth: the delay is the look-ahead, outside the keys nothing changed
    la = h.engine.masker.lookahead
    aligned = heard[la : la + signal.size].astype(np.float64)
    reference = audio_of([phone_pkt for phone_pkt in Phone().frames(signal)]).astype(np.float64)
    outside = np.ones(reference.size, bool)
    for p in presses:
        outside[max(p.start - 200, 0) : p.end + 200] = False
    assert np.array_equal(aligned[outside], reference[outside])
    # the masking tone is where the keys were
    p = presses[0]
    assert tone_power(aligned[p.start + 40 : p.end - 40], 500.0) > 0.5
    # no digit reached the repr of the events
    assert all("digit" not in repr(d) and "'1'" not in repr(d) for d in digits)


def test_keys_over_real_speech_do_not_leak(talkoff_speech: np.ndarray) -> None:
    h = Harness()
    phone = Phone()
    speech = talkoff_speech[: 8000 * 6].astype(np.float64)
    signal, presses = with_keys(speech, "4826", first_ms=500, every_ms=1300, level_dbm0=-6)
    send_audio(h, phone, signal)
    flush_tail(h, phone)
    heard = audio_of(h.agent_rtp())
    assert leaks(heard, presses, delay=h.engine.masker.lookahead) == []  # type: ignore[arg-type]
    assert "".join(d.digit for d in h.digits()) == "4826"


def _press_rfc4733(
    h: Harness,
    phone: Phone,
    digit: str,
    duration: int,
    *,
    audio: np.ndarray | None = None,
) -> None:
    """One RFC 4733 press, packets sent on time; audio frames alongside if given (else the
    phone stops audio during the event, as many do)."""
    events = phone.event_packets(digit, duration)
    if audio is not None:  # audio goes on while the end packets are repeated
        audio = np.concatenate([audio, np.zeros(max(duration + 4 * FRAME - audio.size, 0))])
    frames = [] if audio is None else list(phone.frames(audio))
    if audio is None:
        phone.skip(duration)
    t = 0
    while events or frames:
        while events and events[0][0] <= t:
            h.caller(events.pop(0)[1])
        if frames:
            h.caller(frames.pop(0))
        h.step()
        t += FRAME


def test_rfc4733_is_never_forwarded_and_masking_fills_the_silent_slots() -> None:
    h = Harness()
    phone = Phone()
    lead = speechish(1.0, seed=2)
    send_audio(h, phone, lead)
    _press_rfc4733(h, phone, "7", 1600)  # 200 ms, no audio meanwhile
    send_audio(h, phone, speechish(1.0, seed=3))
    flush_tail(h, phone)

    pkts = h.agent_rtp()
    # only audio, one stream, no gap: the empty slots were filled
    check_stream(pkts, pt=0)
    assert all(parse_rtp(p).payload_type == 0 for p in pkts)
    assert h.call.counters.fill_frames >= 1600 // FRAME - 1
    digits = h.digits()
    assert [(d.digit, d.source) for d in digits] == [("7", "rfc4733")]
    assert h.call.caller.counters.events_rx >= 10
    # the agent hears the masking tone for the event's duration
    heard = audio_of(pkts).astype(np.float64)
    start = lead.size + h.engine.masker.lookahead
    inside = heard[start + 80 : start + 1600 - 80]
    assert tone_power(inside, 500.0) > 0.8
    assert leak_decode(heard) == []


def test_rfc4733_masks_the_audio_sent_during_the_event() -> None:
    """A phone that keeps sending audio during an event: that audio is masked, whatever it
    holds (here speech), for the event's duration."""
    h = Harness()
    phone = Phone()
    lead = speechish(0.6, seed=10)
    send_audio(h, phone, lead)
    _press_rfc4733(h, phone, "9", 1600, audio=speechish(0.2, seed=11, level=3000.0))
    send_audio(h, phone, speechish(0.6, seed=12))
    flush_tail(h, phone)
    assert [(d.digit, d.source) for d in h.digits()] == [("9", "rfc4733")]
    assert h.call.counters.fill_frames == 0
    heard = audio_of(h.agent_rtp()).astype(np.float64)
    start = lead.size + h.engine.masker.lookahead
    assert tone_power(heard[start + 80 : start + 1600 - 80], 500.0) > 0.8


def test_rfc4733_with_inband_copy_counts_once_and_masks() -> None:
    h = Harness()
    phone = Phone()
    send_audio(h, phone, speechish(0.6, seed=4))
    tone = dtmf_burst("3", 960, -8.0)  # 120 ms of the same key in the audio as well
    _press_rfc4733(h, phone, "3", 960, audio=tone)
    send_audio(h, phone, speechish(0.6, seed=5))
    flush_tail(h, phone)
    digits = h.digits()
    assert [d.digit for d in digits] == ["3"]
    assert h.call.counters.duplicate_digits >= 1  # the other transport was seen and folded
    heard = audio_of(h.agent_rtp())
    assert leak_decode(heard) == []
    check_stream(h.agent_rtp(), pt=0)


def test_sip_info_is_counted_once_with_media_and_alone() -> None:
    h = Harness()
    phone = Phone()
    signal, _ = with_keys(speechish(1.0, seed=6), "8", first_ms=300)
    send_audio(h, phone, signal)
    h.call.on_sip_info("8", 60, h.now - 0.5)  # the same press, reported late by INFO
    h.now += 3.0
    h.call.on_sip_info("2", 100, h.now)  # a press only INFO carried
    h.collect()
    assert [(d.digit, d.source) for d in h.digits()] == [("8", "inband"), ("2", "info")]


def test_malformed_and_hijack_are_counted_and_dropped() -> None:
    h = Harness()
    phone = Phone()
    signal = speechish(1.0, seed=7)
    frames = list(phone.frames(signal))
    bad = [
        b"\x80\x00\x01",  # short
        b"\x40" + bytes(171),  # version 1
        b"\x8f" + bytes(20),  # 15 CSRCs in 21 bytes
        b"\x90" + bytes(13),  # extension header cut off
        b"\xa0" + bytes(11) + b"\x00",  # padding count 0
        build_rtp(96, 1, 1, 1, bytes(160)),  # not negotiated
    ]
    for i, pkt in enumerate(frames):
        h.caller(pkt)
        if i == 10:
            for b in bad:
                h.caller(b)
        if i == 20:  # someone else sends from another address: hijack attempt
            h.caller(build_rtp(0, 999, 999, 0xBAD, bytes(160)), addr=("203.0.113.66", 1234))
        h.step()
    flush_tail(h, phone)
    c = h.call.caller.counters
    assert (c.short, c.version, c.csrc, c.extension, c.padding, c.unknown_pt) == (1,) * 6
    assert c.hijack == 1 and c.relatch == 0
    pkts = h.agent_rtp()
    check_stream(pkts, pt=0)
    assert len(pkts) == len(frames) + 10
    # and the payload still matches: nothing of the hijacker's reached the agent
    la = h.engine.masker.lookahead
    heard = audio_of(pkts)[la : la + signal.size]
    sent = audio_of(frames)
    assert np.array_equal(heard, sent)
    assert all(d.address == AGENT for d in h.to_agent)


def test_relatch_after_silence() -> None:
    h = Harness(config=MediaConfig(relatch_after_s=1.0))
    phone = Phone()
    send_audio(h, phone, speechish(0.2))
    moved = ("192.0.2.99", 41000)
    h.now += 1.5  # the caller went quiet, then comes back from a new address (NAT rebinding)
    for pkt in phone.frames(speechish(0.2)):
        h.caller(pkt, addr=moved)
        h.step()
    assert h.call.caller.counters.relatch == 1 and h.call.caller.counters.hijack == 0
    h.agent(Phone(ssrc=5, seq=1, ts=0).audio(np.zeros(FRAME)))
    h.collect()
    assert h.to_caller[-1].address == moved


@pytest.mark.parametrize("codecs", [("PCMU", "PCMU"), ("PCMA", "PCMU")])
def test_agent_to_caller_relays_with_its_own_stream(codecs: tuple[str, str]) -> None:
    caller_codec, agent_codec = codecs
    h = Harness(
        caller=LegParams(caller_codec, remote=CALLER),  # type: ignore[arg-type]
        agent=LegParams(agent_codec, remote=AGENT),  # type: ignore[arg-type]
    )
    agent = Phone(ssrc=0xA6E17, seq=100, ts=5000, codec=agent_codec)
    signal = speechish(1.0, seed=8)
    sent = []
    for i, pkt in enumerate(agent.frames(signal)):
        if i == 25:  # the PBX switched source (transfer): new SSRC, new sequence and clock
            agent.ssrc, agent.seq, agent.ts = 0x5117C4, 7, 123456
            pkt = agent.audio(signal[25 * FRAME : 26 * FRAME])
        sent.append(pkt)
        h.agent(pkt)
        h.step()
    pkts = [d.data for d in h.to_caller]
    assert all(d.address == CALLER for d in h.to_caller)
    parsed = [parse_rtp(p) for p in pkts]
    assert len({p.ssrc for p in parsed}) == 1
    assert all((b.sequence - a.sequence) & 0xFFFF == 1 for a, b in itertools.pairwise(parsed))
    assert all(
        0 < (b.timestamp - a.timestamp) % 2**32 <= 2 * FRAME for a, b in itertools.pairwise(parsed)
    )
    assert parsed[0].payload_type == (0 if caller_codec == "PCMU" else 8)
    if caller_codec == agent_codec:
        assert [p.payload for p in parsed] == [parse_rtp(p).payload for p in sent]
    else:  # transcoded, no DSP: close to the original
        got = audio_of(pkts, caller_codec).astype(np.float64)
        ref = audio_of(sent, agent_codec).astype(np.float64)
        assert np.max(np.abs(got - ref)) < 0.07 * np.max(np.abs(ref))
    assert h.agent_rtp() == []


def test_engine_failure_sends_silence_not_raw_audio() -> None:
    h = Harness()
    phone = Phone()
    masker = h.engine.masker
    real = masker.process
    failing = {"on": False}

    def process(sids, frames):  # type: ignore[no-untyped-def]
        if failing["on"]:
            raise RuntimeError("overload")
        return real(sids, frames)

    masker.process = process  # type: ignore[method-assign]
    signal, presses = with_keys(speechish(2.0, seed=9), "6", first_ms=1000, on_ms=100)
    frames = list(phone.frames(signal))
    key_frames = range(presses[0].start // FRAME - 1, presses[0].end // FRAME + 2)
    for i, pkt in enumerate(frames):
        failing["on"] = i in key_frames
        h.caller(pkt)
        h.step()
    failing["on"] = False
    flush_tail(h, phone)
    pkts = h.agent_rtp()
    check_stream(pkts, pt=0)
    assert h.call.counters.fail_closed_frames == len(key_frames)
    assert h.call.counters.engine_failures == len(key_frames)
    heard = audio_of(pkts)
    assert leak_decode(heard) == []
    for i in key_frames:  # those slots carry silence
        assert not heard[i * FRAME : (i + 1) * FRAME].any()


def test_rtcp_is_relayed_with_ssrcs_mapped() -> None:
    h = Harness()
    caller = Phone()
    agent = Phone(ssrc=0xA6E17, seq=100, ts=5000)
    h.caller(caller.audio(np.zeros(FRAME)))
    h.agent(agent.audio(np.zeros(FRAME)))
    h.step()
    # caller's SR: it sends caller.ssrc, and reports on the stream we send it
    our_to_caller = parse_rtp(h.to_caller[0].data).ssrc
    our_to_agent = parse_rtp(h.agent_rtp()[0]).ssrc
    sr = (
        bytes([0x81, RTCP_SR, 0, 12])
        + caller.ssrc.to_bytes(4, "big")
        + bytes(8)
        + caller.ts.to_bytes(4, "big")
        + bytes(8)
        + our_to_caller.to_bytes(4, "big")
        + bytes(20)
    )
    h.caller(sr, addr=(CALLER[0], CALLER[1] + 1), rtcp=True)
    h.caller(b"\x81\xc8\x00\x40" + bytes(8), addr=(CALLER[0], CALLER[1] + 1), rtcp=True)
    h.collect()
    rtcp = [d for d in h.to_agent if d.rtcp]
    assert len(rtcp) == 1 and rtcp[0].address == (AGENT[0], AGENT[1] + 1)
    (pkt,) = parse_rtcp(rtcp[0].data)
    assert pkt.ssrc == our_to_agent
    assert pkt.report_blocks[0].ssrc == agent.ssrc
    assert h.call.caller.counters.rtcp_malformed == 1


def test_media_timeout_is_reported_once() -> None:
    h = Harness(config=MediaConfig(media_timeout_s=5.0))
    phone = Phone()
    send_audio(h, phone, speechish(0.2))
    for _ in range(10):
        h.step(1.0)
    timeouts = [e for e in h.events if isinstance(e, MediaTimeout)]
    assert len(timeouts) == 1 and timeouts[0].idle_s >= 5.0


def test_frames_of_all_calls_share_one_engine_pass() -> None:
    engine = MediaEngine(MaskConfig())
    calls = [Harness(engine, call_id=f"c{i}") for i in range(5)]
    phones = [Phone(ssrc=i + 1) for i in range(5)]
    for k in range(10):
        for h, phone in zip(calls, phones, strict=True):
            if k % 2 or h is calls[0]:  # call 0 sends every frame, others every other
                h.caller(phone.audio(np.zeros(FRAME)))
        engine.flush()
    assert engine.passes == 10
    assert engine.batched_frames == 10 + 4 * 5


def test_a_flood_costs_counted_drops_only() -> None:
    h = Harness(config=MediaConfig(max_pending_frames=8))
    phone = Phone()
    for pkt in phone.frames(speechish(1.0)):  # 50 packets in one loop iteration
        h.caller(pkt)
    h.collect()
    assert h.call.caller.counters.flood == 50 - 8
    check_stream(h.agent_rtp(), pt=0)
    assert len(h.agent_rtp()) == 8


def test_closed_call_frees_its_stream() -> None:
    engine = MediaEngine()
    h = Harness(engine)
    h.caller(Phone().audio(np.zeros(FRAME)))
    engine.close_call(h.call)
    assert not engine.pending and engine.calls == {}
    h.caller(Phone().audio(np.zeros(FRAME)))  # ignored
    h2 = Harness(engine, call_id="call-2")
    assert h2.call.stream == h.call.stream  # the stream id was reused


def test_long_event_segments_once() -> None:
    """A held key sent as several RFC 4733 end packets and updates counts once."""
    h = Harness()
    phone = Phone()
    send_audio(h, phone, speechish(0.3))
    gen = EventGenerator()
    pkts = gen.digit("#", phone.ts, 4000)
    for p in pkts:
        h.caller(build_rtp(101, phone.seq, p.timestamp, phone.ssrc, p.payload, marker=p.marker))
        phone.seq += 1
        h.step()
    assert [d.digit for d in h.digits()] == ["#"]


def test_mask_during_payment_only() -> None:
    """``mask: during_payment``: IVR keys before the payment reach the agent as they are
    (and are still counted); keys while capture is on are masked; the last key of the card,
    still sounding when capture stops, stays masked to its end."""
    h = Harness(config=MediaConfig(mask_always=False))
    phone = Phone()
    ivr, _ = with_keys(np.zeros(8 * FRAME * 10), "12")
    send_audio(h, phone, ivr)
    h.call.set_capture(True)
    card, presses = with_keys(np.zeros(8 * FRAME * 10), "34")
    last = presses[-1]
    for i, pkt in enumerate(phone.frames(card)):
        if i * FRAME >= last.start + 2 * FRAME:  # the key completed the card: capture off
            h.call.set_capture(False)
        h.caller(pkt)
        h.step()
    after, _ = with_keys(np.zeros(8 * FRAME * 10), "5")
    flush_tail(h, phone, 60)  # the settle time passes
    send_audio(h, phone, after)
    flush_tail(h, phone)
    heard = audio_of(h.agent_rtp())
    found = "".join(d.digit for d in leak_decode(heard) if d.method == "goertzel")
    assert found == "125"
    assert "".join(d.digit for d in h.digits()) == "12345"
