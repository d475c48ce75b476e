"""The provider leg, hold and the 3-party mix in the media plane, sans-I/O: real RTP bytes in,
every leg's output decoded (RTP headers, RFC 4733 events, audio)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from dtmfmask.detector import detect_signal
from dtmfmask.events import DigitStarted
from dtmfmask.rfc4733 import EventReceiver, RtpDigitEnded, TelephoneEvent
from sipproxy.holdaudio import HoldAudio
from sipproxy.media import DIGIT_SAMPLES, Datagram, LegParams, MediaConfig, MediaEngine
from sipproxy.rtp import build_rtp, parse_rtp
from tests.leakdecoder import decode as leak_decode
from tests.leakdecoder import leaks
from tests.sipproxy.media_helpers import (
    FRAME,
    Phone,
    audio_of,
    check_stream,
    decode,
    speechish,
    tone_power,
    with_keys,
)
from tests.sipproxy.test_media import AGENT, CALLER, Harness

PROVIDER = ("203.0.113.30", 60000)


class ProviderHarness(Harness):
    """The call of :class:`Harness`, plus what the provider received."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.to_provider: list[Datagram] = []

    def collect(self) -> None:
        self.engine.flush()
        for call in self.engine.ready_calls():
            for d in call.datagrams_to_send():
                if d.leg == "provider":
                    self.to_provider.append(d)
                else:
                    (self.to_agent if d.leg == "agent" else self.to_caller).append(d)
            self.events += call.events()

    def attach(self, params: LegParams | None = None) -> None:
        self.call.attach_provider(params or LegParams("PCMU", remote=PROVIDER), self.now)

    def provider(
        self, data: bytes, *, addr: tuple[str, int] = PROVIDER, rtcp: bool = False
    ) -> None:
        self.call.receive("provider", data, addr, self.now, rtcp_port=rtcp)

    def provider_rtp(self) -> list[bytes]:
        return [d.data for d in self.to_provider if not d.rtcp]

    def caller_rtp(self) -> list[bytes]:
        return [d.data for d in self.to_caller if not d.rtcp]


def send_audio(h: Harness, phone: Phone, signal: npt.NDArray[np.float64]) -> None:
    for pkt in phone.frames(signal):
        h.caller(pkt)
        h.step()


@dataclass
class ProviderStream:
    """What the provider received, taken apart: its audio (in order) and its events."""

    audio: npt.NDArray[np.int16]
    digits: list[RtpDigitEnded]
    event_packets: int
    slots: int  # audio packets and event packets that are not end packets


def check_provider_stream(
    packets: list[bytes], audio_pt: int = 0, event_pt: int = 101
) -> ProviderStream:
    """Invariant 6 on the provider's stream with events in it: one SSRC, sequence +1 per
    packet; every slot (an audio packet, or an event packet that is not an end packet, at
    its timestamp plus its duration) exactly one frame after the last; an event's packets
    share its timestamp, the first is marked, its end repeated three times at 100 ms."""
    assert packets, "nothing received"
    parsed = [parse_rtp(p) for p in packets]
    assert len({p.ssrc for p in parsed}) == 1
    for a, b in itertools.pairwise(parsed):
        assert (b.sequence - a.sequence) & 0xFFFF == 1
    assert {p.payload_type for p in parsed} <= {audio_pt, event_pt}
    receiver = EventReceiver((event_pt,))
    digits: list[RtpDigitEnded] = []
    slot_ts: int | None = None
    event_ts: int | None = None
    ends = 0
    n_events = 0
    slots = 0
    for i, p in enumerate(parsed):
        if p.payload_type == event_pt:
            n_events += 1
            (report,) = TelephoneEvent.parse(p.payload)
            if report.end:
                assert p.timestamp == event_ts and report.duration == DIGIT_SAMPLES
                assert not p.marker
                ends += 1
            else:
                if report.duration == 0:  # a new event
                    assert ends in (0, 3), "the previous event did not send 3 end packets"
                    assert p.marker
                    event_ts = p.timestamp
                    ends = 0
                assert p.timestamp == event_ts
                slots += 1
                virtual = (p.timestamp + report.duration) % 2**32
                if slot_ts is not None:
                    assert (virtual - slot_ts) % 2**32 == FRAME
                slot_ts = virtual
            for ev in receiver.receive(
                payload_type=p.payload_type,
                ssrc=p.ssrc,
                timestamp=p.timestamp,
                marker=p.marker,
                payload=p.payload,
                now=i * 20.0,
            ):
                if isinstance(ev, RtpDigitEnded):
                    digits.append(ev)
        else:
            slots += 1
            if slot_ts is not None:
                assert (p.timestamp - slot_ts) % 2**32 == FRAME, (p.timestamp, slot_ts)
            slot_ts = p.timestamp
    assert ends in (0, 3)
    audio = [p.payload for p in parsed if p.payload_type == audio_pt]
    pcm = decode("PCMU", b"".join(audio)) if audio else np.zeros(0, np.int16)
    return ProviderStream(pcm, digits, n_events, slots)


def sine(hz: float, n: int, amplitude: float = 3000.0, start: int = 0) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = amplitude * np.sin(
        2 * np.pi * hz * (start + np.arange(n)) / 8000
    )
    return out


# --------------------------------------------------------------------------- digits


def test_new_digits_go_to_the_provider_as_clean_rfc4733_events() -> None:
    h = ProviderHarness()
    phone = Phone()
    h.attach()
    h.call.set_capture(True)
    signal, _ = with_keys(speechish(2.4, seed=31), "4711", first_ms=300, every_ms=450)
    send_audio(h, phone, signal)
    # a press sent as RFC 4733 only, the phone silent meanwhile: the timer fills the slots
    for offset, pkt in phone.event_packets("9", 1200):
        while offset > 0:
            h.step()
            offset -= FRAME
        h.caller(pkt)
    phone.skip(1200 + 3 * FRAME)
    for _ in range(20):
        h.step()
    send_audio(h, phone, speechish(0.4, seed=32))

    assert [d.digit for d in h.digits()] == list("47119")
    got = check_provider_stream(h.provider_rtp())
    assert [d.digit for d in got.digits] == list("47119")
    assert all(d.end_seen and d.duration == DIGIT_SAMPLES for d in got.digits)
    assert got.event_packets == 5 * 8  # start, 4 updates, 3 ends each
    assert h.call.counters.digits_to_provider == 5
    # one slot per caller frame (masking fill frames included): the timer added none, so
    # the provider's stream keeps real time through the silent RFC 4733 press
    assert got.slots == len(h.agent_rtp())
    # the provider's audio is the masked caller audio: no key in it but the events
    assert leak_decode(got.audio) == []
    # and the agent never got a key, nor an event
    agent = h.agent_rtp()
    check_stream(agent, pt=0)
    assert leak_decode(audio_of(agent)) == []
    assert h.call.provider_counters.tx_packets == len(h.provider_rtp())
    assert all(d.address == PROVIDER for d in h.to_provider)


def test_no_digit_goes_to_the_provider_while_capture_is_off() -> None:
    h = ProviderHarness()
    phone = Phone()
    h.attach()
    signal, _ = with_keys(speechish(1.6, seed=33), "258", first_ms=300, every_ms=400)
    send_audio(h, phone, signal)
    h.call.on_sip_info("1", 100, h.now)
    h.collect()
    assert [d.digit for d in h.digits()] == list("2581")
    got = check_provider_stream(h.provider_rtp())
    assert got.event_packets == 0 and got.digits == []
    assert leak_decode(got.audio) == []
    assert h.call.counters.digits_to_provider == 0
    # capture on, then off again before anything was sent: the queue is dropped
    h.call.set_capture(True)
    h.call.on_sip_info("3", 100, h.now + 1.0)
    h.call.set_capture(False)
    for _ in range(20):
        h.step()
    assert check_provider_stream(h.provider_rtp()).event_packets == 0


def test_inband_tones_when_the_provider_has_no_telephone_event() -> None:
    h = ProviderHarness()
    phone = Phone()
    h.attach(LegParams("PCMA", event_payload_type=None, remote=PROVIDER))
    h.call.set_capture(True)
    send_audio(h, phone, speechish(0.3, seed=34))
    now = h.now
    for i, key in enumerate("1590#"):  # five quick INFO presses: they queue up
        h.call.on_sip_info(key, 100, now + 0.001 * i)
    send_audio(h, phone, np.zeros(FRAME * 60))
    pkts = h.provider_rtp()
    check_stream(pkts, pt=8)
    heard = audio_of(pkts, "PCMA")
    found = [e for e in detect_signal(heard) if isinstance(e, DigitStarted)]
    assert "".join(e.digit for e in found) == "1590#"
    # 100 ms each, 160 ms apart: never overlapping
    starts = [e.start for e in found]
    assert all(b - a >= 8 * FRAME - FRAME for a, b in itertools.pairwise(starts))
    assert h.call.counters.digits_to_provider == 5


def test_digits_wait_for_the_providers_address_and_the_queue_is_bounded() -> None:
    h = ProviderHarness(config=MediaConfig(provider_digit_queue=3))
    phone = Phone()
    h.attach(LegParams("PCMU"))  # no SDP answer yet: nowhere to send
    h.call.set_capture(True)
    for i, key in enumerate("12345"):
        h.call.on_sip_info(key, 100, h.now + 0.3 * i)
    assert h.call.counters.provider_digits_dropped == 2
    send_audio(h, phone, speechish(0.4, seed=35))
    assert h.to_provider == []
    assert h.call.provider_counters.no_destination > 0
    h.attach(LegParams("PCMU", remote=PROVIDER))  # the answer arrives
    send_audio(h, phone, speechish(1.0, seed=36))
    got = check_provider_stream(h.provider_rtp())
    assert [d.digit for d in got.digits] == list("123")


# --------------------------------------------------------------------------- the mix


@pytest.mark.parametrize("hz", [1000.0, 400.0])
def test_provider_audio_is_mixed_toward_agent_and_caller_but_keys_stay_masked(hz: float) -> None:
    h = ProviderHarness()
    caller = Phone()
    agent = Phone(ssrc=0xA6E17, seq=10, ts=777)
    prov = Phone(ssrc=0x9807, seq=1, ts=99)
    h.attach()
    h.call.set_capture(True)
    signal, presses = with_keys(speechish(2.0, seed=37), "36", first_ms=400, every_ms=900)
    agent_speech = speechish(2.0, seed=38)
    tone = sine(hz, signal.size)
    frames = list(caller.frames(signal))
    for i, pkt in enumerate(frames):
        h.provider(prov.audio(tone[i * FRAME : (i + 1) * FRAME]))
        h.caller(pkt)
        h.agent(agent.audio(agent_speech[i * FRAME : (i + 1) * FRAME]))
        h.step()
    send_audio(h, caller, np.zeros(FRAME * 10))

    heard = audio_of(h.agent_rtp()).astype(np.float64)
    check_stream(h.agent_rtp(), pt=0)
    assert tone_power(heard[4000:12000], hz) > 0.3  # the provider is heard...
    la = h.engine.masker.lookahead
    assert leaks(heard, presses, delay=la) == []  # type: ignore[arg-type]  # ...nor the keys
    if hz != 1000.0:  # (1 kHz between the groups plus speech fools the decoder elsewhere)
        assert leak_decode(heard) == []
    assert [d.digit for d in h.digits()] == list("36")
    to_caller = h.caller_rtp()
    check_stream(to_caller, pt=0)
    back = audio_of(to_caller).astype(np.float64)
    assert tone_power(back[4000:12000], hz) > 0.3
    # the provider does not hear itself
    got = check_provider_stream(h.provider_rtp())
    mine = tone_power(got.audio[4000:12000].astype(np.float64), hz)
    assert mine < 0.1 * tone_power(heard[4000:12000], hz)
    c = h.call.counters
    assert c.mix_agent_frames >= len(frames) - 2 and c.mix_caller_frames >= len(frames) - 2
    assert c.mix_overflow == 0


def test_provider_events_rtcp_and_junk_are_counted_and_dropped() -> None:
    h = ProviderHarness()
    h.attach()
    prov = Phone(ssrc=0x9807, seq=1, ts=99)
    for _, pkt in prov.event_packets("5", 800):
        h.provider(pkt)
    h.provider(b"\x80\x00")  # short
    h.provider(build_rtp(96, 1, 1, 0x9807, bytes(160)))  # not negotiated
    rr = bytes([0x80, 201, 0, 1]) + (0x9807).to_bytes(4, "big")
    h.provider(rr, addr=(PROVIDER[0], PROVIDER[1] + 1), rtcp=True)
    h.provider(b"\x81\xc8\x00\x40" + bytes(8), addr=(PROVIDER[0], PROVIDER[1] + 1), rtcp=True)
    h.provider(prov.audio(np.zeros(FRAME)), addr=("198.51.100.99", 4000))  # hijack
    h.step()
    c = h.call.provider_counters
    n_events = len(Phone().event_packets("5", 800))
    assert h.call.counters.provider_events_dropped == n_events == c.events_rx
    assert (c.short, c.unknown_pt, c.rtcp_rx, c.rtcp_malformed, c.hijack) == (1, 1, 1, 1, 1)
    assert h.to_agent == [] and h.to_caller == [] and h.to_provider == []
    assert h.digits() == []


def test_fifo_overflow_is_counted_and_bounded() -> None:
    h = ProviderHarness(config=MediaConfig(mix_fifo_samples=400))
    h.attach()
    prov = Phone(ssrc=0x9807, seq=1, ts=99)
    for _ in range(10):  # 200 ms at once, nobody taking
        h.provider(prov.audio(np.full(FRAME, 1000.0)))
    assert h.call.counters.mix_overflow > 0
    h.agent(Phone(ssrc=7).audio(np.zeros(FRAME * 3)))  # one 60 ms frame takes 480 samples
    h.collect()
    back = audio_of(h.caller_rtp())
    assert np.count_nonzero(back) <= 400  # no more than the FIFO held


def test_detach_stops_mix_and_digits() -> None:
    h = ProviderHarness()
    phone = Phone()
    h.attach()
    h.call.set_capture(True)
    h.provider(Phone(ssrc=0x9807).audio(np.full(FRAME, 2000.0)))
    h.call.detach_provider()
    h.call.detach_provider()  # idempotent
    assert h.call.provider is None and h.engine._providers == 0
    signal, _ = with_keys(speechish(1.0, seed=39), "7", first_ms=300)
    send_audio(h, phone, signal)
    h.provider(Phone(ssrc=0x9807).audio(np.full(FRAME, 2000.0)))
    assert h.to_provider == [] and h.call.counters.provider_unattached == 1
    la = h.engine.masker.lookahead
    heard = audio_of(h.agent_rtp())
    assert leak_decode(heard) == []
    assert not heard[:la].any()  # the provider's frame was not mixed in after the detach
    with pytest.raises(KeyError):
        h.call.leg("provider")


# --------------------------------------------------------------------------- hold


def _hold_ok(pcm: npt.NDArray[np.int16]) -> None:
    x = pcm.astype(np.float64)
    assert np.abs(x).max() > 300  # audible
    assert tone_power(x, 440.0) + tone_power(x, 550.0) > 0.8
    assert leak_decode(pcm) == []
    assert [e for e in detect_signal(pcm) if isinstance(e, DigitStarted)] == []


def test_hold_audio_reaches_the_caller_while_the_agent_is_silent() -> None:
    h = ProviderHarness()
    agent = Phone(ssrc=0xA6E17, seq=10, ts=777)
    for _ in range(5):
        h.agent(agent.audio(np.full(FRAME, 500.0)))
        h.step()
    h.call.set_hold(True)
    h.call.set_hold(True)  # idempotent
    for _ in range(150):  # 3 s, the agent sends nothing
        h.step()
    pkts = h.caller_rtp()
    check_stream(pkts, pt=0)  # one stream through the switch to hold
    held = audio_of(pkts[5:])
    assert len(pkts) - 5 >= 145
    _hold_ok(held)
    assert h.call.counters.hold_tick_frames == len(pkts) - 5


def test_hold_audio_is_paced_by_the_agent_and_retrieve_resumes_its_audio() -> None:
    h = ProviderHarness()
    h.attach()
    agent = Phone(ssrc=0xA6E17, seq=10, ts=777)
    prov = Phone(ssrc=0x9807, seq=1, ts=99)
    speech = speechish(4.0, seed=40)
    h.call.set_hold(True)
    frames = list(agent.frames(speech[: 8000 * 3]))
    for i, pkt in enumerate(frames):
        h.agent(pkt)
        h.provider(prov.audio(sine(1000.0, FRAME, start=i * FRAME)))
        h.step()
    held_pkts = h.caller_rtp()
    assert len(held_pkts) == len(frames)
    assert h.call.counters.hold_frames == len(frames) and h.call.counters.hold_tick_frames == 0
    held = audio_of(held_pkts)
    _hold_ok(held)
    assert tone_power(held.astype(np.float64), 1000.0) < 0.001  # no provider toward a held caller
    h.call.set_hold(False)
    h.call.detach_provider()
    back = list(agent.frames(speech[8000 * 3 :]))
    for pkt in back:
        h.agent(pkt)
        h.step()
    pkts = h.caller_rtp()
    parsed = [parse_rtp(p) for p in pkts]
    assert len({p.ssrc for p in parsed}) == 1
    assert all((b.sequence - a.sequence) & 0xFFFF == 1 for a, b in itertools.pairwise(parsed))
    assert all(
        0 < (b.timestamp - a.timestamp) % 2**32 <= 2 * FRAME for a, b in itertools.pairwise(parsed)
    )
    assert [p.payload for p in parsed[len(frames) :]] == [parse_rtp(p).payload for p in back]


def test_hold_keeps_the_fast_path_off_and_plain_calls_on_it() -> None:
    engine = MediaEngine()
    plain = Harness(engine, call_id="plain")
    held = Harness(engine, call_id="held")
    sent: list[bytes] = []
    for h in (plain, held):
        h.call.bind_senders("caller", lambda d, a: sent.append(d), None)
    held.call.set_hold(True)
    assert not plain.call._extra and held.call._extra
    assert set(engine._extra) == {"held"}
    pkt = Phone(ssrc=5).audio(np.full(FRAME, 700.0))
    plain.call.rx_agent(pkt, AGENT, plain.now)  # latches
    plain.call.rx_agent(Phone(ssrc=5, seq=66, ts=160 * 66).audio(np.full(FRAME, 700.0)), AGENT, 1)
    held.call.rx_agent(pkt, AGENT, held.now)
    assert parse_rtp(sent[0]).payload == parse_rtp(pkt).payload  # relayed as it came
    assert parse_rtp(sent[-1]).payload != parse_rtp(pkt).payload  # hold audio instead
    held.call.set_hold(False)
    assert engine._extra == {}


def test_hold_audio_with_a_custom_recording_loops() -> None:
    h = ProviderHarness()
    h.call.set_hold(True, audio=HoldAudio.from_samples(sine(300.0, 8000, 2000.0)))
    agent = Phone(ssrc=3)
    for _ in range(100):
        h.agent(agent.audio(np.zeros(FRAME)))
        h.step()
    heard = audio_of(h.caller_rtp()).astype(np.float64)
    assert tone_power(heard, 300.0) > 0.9
    assert h.to_caller[0].address == CALLER


def test_the_timer_carries_a_digit_while_the_caller_sends_nothing() -> None:
    h = ProviderHarness()
    phone = Phone()
    h.attach()
    h.call.set_capture(True)
    send_audio(h, phone, speechish(0.2, seed=41))
    h.call.on_sip_info("6", 100, h.now)  # and then the caller falls silent
    for _ in range(20):
        h.step()
    got = check_provider_stream(h.provider_rtp())
    assert [(d.digit, d.duration, d.end_seen) for d in got.digits] == [("6", DIGIT_SAMPLES, True)]
    assert got.event_packets == 8
    n = len(h.provider_rtp())
    for _ in range(20):  # nothing more to say: the timer sends nothing
        h.step()
    assert len(h.provider_rtp()) == n


def test_new_provider_sdp_without_telephone_event_mid_digit() -> None:
    h = ProviderHarness()
    phone = Phone()
    h.attach()
    h.call.set_capture(True)
    send_audio(h, phone, speechish(0.2, seed=42))
    h.call.on_sip_info("2", 100, h.now)
    send_audio(h, phone, speechish(0.06, seed=43))  # the event is under way...
    h.attach(LegParams("PCMU", event_payload_type=None, remote=PROVIDER))  # ...re-INVITE
    h.call.on_sip_info("7", 100, h.now + 0.5)
    send_audio(h, phone, np.zeros(FRAME * 30))
    assert h.call.counters.provider_failures == 0 and h.call.counters.engine_failures == 0
    pkts = h.provider_rtp()
    parsed = [parse_rtp(p) for p in pkts]
    assert all((b.sequence - a.sequence) & 0xFFFF == 1 for a, b in itertools.pairwise(parsed))
    assert len({p.ssrc for p in parsed}) == 1
    audio = audio_of([p for p in pkts if parse_rtp(p).payload_type == 0])
    found = [e.digit for e in detect_signal(audio) if isinstance(e, DigitStarted)]
    assert found == ["7"]  # the second digit went in-band


def test_fifo_keeps_the_newest_and_the_mix_saturates() -> None:
    from sipproxy.media import _Fifo, _mix

    f = _Fifo(5)
    assert f.push(np.array([1, 2, 3], np.int16))
    assert f.take(2).tolist() == [1, 2]  # type: ignore[union-attr]
    assert not f.push(np.array([4, 5, 6, 7, 8], np.int16))  # 3 goes
    assert f.take(3).tolist() == [4, 5, 6]  # type: ignore[union-attr]
    assert f.take(4).tolist() == [7, 8, 0, 0]  # type: ignore[union-attr]
    assert f.take(1) is None and len(f) == 0
    mixed = _mix(np.array([32000, -32000, 5], np.int16), np.array([1000, -1000, 5], np.int32))
    assert mixed.dtype == np.int16 and mixed.tolist() == [32767, -32768, 10]
