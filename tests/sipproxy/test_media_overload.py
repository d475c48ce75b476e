"""One key, one digit (DESIGN.md invariant 2) when the node is overloaded.

Sans-I/O: packets go into :class:`CallMedia` with the arrival times an overloaded loop
gives them (late, stretched, bunched after a stall, dropped by the pending-frame bound) and
the engine flushes when such a loop would. Whatever the schedule, each key press is one
:class:`CallDigit`; overload may cost counted drops and latency, never an extra digit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest

from dtmfmask.tones import dtmf_tone
from sipproxy.media import CallDigit, CallMedia, LegParams, MediaConfig, MediaEngine
from tests.sipproxy.media_helpers import FRAME, Phone

CALLER = ("192.0.2.10", 40000)
AGENT = ("198.51.100.20", 50000)

# (arrival time, packet)
Schedule = list[tuple[float, bytes]]


def _key_audio(digit: str = "5", *, lead: int = 10, key: int = 5, tail: int = 30) -> np.ndarray:
    """What ``benchmarks/proxy_load.py`` sends: low noise, one 100 ms key at -10 dBm0."""
    rng = np.random.default_rng(7)
    n = lead + key + tail
    x = rng.normal(0, 60, n * FRAME)
    x[lead * FRAME : (lead + key) * FRAME] += dtmf_tone(digit, key * FRAME, -10.0)
    return np.clip(x, -32768, 32767)


class Node:
    """One engine, many calls, a loop that reads packets, then flushes and ticks."""

    def __init__(self, config: MediaConfig | None = None) -> None:
        self.engine = MediaEngine()
        self.config = config
        self.calls: list[CallMedia] = []
        self.digits: list[CallDigit] = []

    def open(self, call_id: str = "c") -> CallMedia:
        call = self.engine.open_call(
            call_id,
            LegParams("PCMU", remote=CALLER),
            LegParams("PCMU", remote=AGENT),
            self.config,
            now=99.0,
        )
        self.calls.append(call)
        return call

    def iteration(self, now: float) -> None:
        """The end of one loop iteration: the batched pass, the timer, the outputs."""
        self.engine.flush()
        self.engine.tick(now)
        self.engine.flush()
        for call in self.engine.ready_calls():
            call.datagrams_to_send()
            self.digits += [e for e in call.events() if isinstance(e, CallDigit)]

    def run(self, schedule: Schedule, *, call_index: int = 0, batch: int = 1) -> None:
        """Feed ``schedule`` (sorted by time) to one call; the loop ends an iteration every
        ``batch`` packets, and whenever time moves on by more than 5 ms (then the timer
        runs first, as libuv runs it)."""
        call = self.calls[call_index]
        last = schedule[0][0] if schedule else 0.0
        k = 0
        for now, pkt in schedule:
            if now - last > 0.005 or k >= batch:
                self.iteration(last)
                k = 0
            if now - last > 0.005:
                # libuv runs due timers before it polls the sockets: after a stall the
                # tick sees the time jump before the packets sent meanwhile are read
                self.engine.tick(now)
            last = now
            call.rx_caller(pkt, CALLER, now)
            k += 1
        self.iteration(last)
        for t in np.arange(1, 100) * 0.02:  # the timer runs on; every end is seen
            self.iteration(last + float(t))


# packets with the times they were sent (seconds after the first audio frame)
Sent = list[tuple[float, bytes]]
T0 = 100.0


def audio_sent(packets: Iterable[bytes]) -> Sent:
    return [(i * 0.02, p) for i, p in enumerate(packets)]


def stretched(sent: Sent, factor: float) -> Schedule:
    """A loop that reads the socket slower than real time (sustained overload)."""
    return [(T0 + t * factor, p) for t, p in sent]


def stalled(sent: Sent, at: int, stall: float) -> Schedule:
    """On time, except that nothing is read for ``stall`` seconds from 20 ms x ``at``; the
    packets sent meanwhile are then read in one burst, and the loop catches up."""
    out: Schedule = []
    resume = at * 0.02 + stall
    last = float("-inf")
    for t, p in sent:  # in send order: one socket, no reordering
        last = max(T0 + (resume if at * 0.02 <= t < resume else t), last + 1e-5)
        out.append((last, p))
    return out


def _inband(schedule_of: Callable[[Sent], Schedule], *, batch: int = 1) -> list[str]:
    node = Node()
    node.open()
    node.run(schedule_of(audio_sent(Phone().frames(_key_audio()))), batch=batch)
    return [f"{d.digit}:{d.source}" for d in node.digits]


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 3.0, 4.0])
def test_inband_key_once_when_the_loop_reads_slower_than_real_time(factor: float) -> None:
    """Sustained overload: frames are read 20 ms x ``factor`` apart. Before the fix the
    press was counted twice from 2x on (proxy_load at 500 calls: 100 digits for 50 keys):
    the in-band start, mapped to ms through the arrival time of the frame that ended the
    tone, was re-offered more than the de-duplicator's window away from the first report."""
    assert _inband(lambda p: stretched(p, factor)) == ["5:inband"]


@pytest.mark.parametrize("at", range(9, 17))
@pytest.mark.parametrize("stall", [0.1, 0.2, 0.5])
def test_inband_key_once_when_the_loop_stalls_around_the_tone(at: int, stall: float) -> None:
    assert _inband(lambda p: stalled(p, at, stall)) == ["5:inband"]


@pytest.mark.parametrize("batch", [2, 4, 8, 16])
def test_inband_key_once_with_bunched_arrivals(batch: int) -> None:
    """A loop catching up: ``batch`` frames read back to back, then one engine pass."""
    sched = [(100.0 + i * 0.0005, p) for i, p in enumerate(Phone().frames(_key_audio()))]
    assert _inband(lambda _: sched, batch=batch) == ["5:inband"]


def test_stall_longer_than_the_pending_bound_costs_drops_not_digits() -> None:
    """Half a second of frames read in one go: beyond ``max_pending_frames`` they are
    dropped (counted); the key is counted at most once, never twice."""
    for at in range(0, 16):
        node = Node(MediaConfig(max_pending_frames=8))
        call = node.open()
        node.run(stalled(audio_sent(Phone().frames(_key_audio())), at, 0.5), batch=1000)
        assert [d.source for d in node.digits] in (["inband"], [])
        if not node.digits:
            assert call.caller.counters.flood > 0


def _both_sent(audio: np.ndarray, key_at: int, key_len: int) -> Sent:
    """The same key as RFC 4733 events and in the audio (phones that send both), with their
    send times: an audio frame goes when its last sample is in; an event update when its
    duration is reached."""
    phone = Phone()
    sent: Sent = []
    events: list[tuple[int, bytes]] = []
    for i in range(audio.size // FRAME):
        if i == key_at:
            events = [(key_at * FRAME + off, p) for off, p in phone.event_packets("5", key_len)]
        while events and events[0][0] <= i * FRAME:
            off, p = events.pop(0)
            sent.append((off / 8000.0, p))
        sent.append((i * 0.02, phone.audio(audio[i * FRAME : (i + 1) * FRAME])))
    sent += [(off / 8000.0, p) for off, p in events]
    return sent


def _both(
    audio: np.ndarray, key_at: int, key_len: int, schedule_of: Callable[[Sent], Schedule]
) -> tuple[list[str], CallMedia]:
    """:func:`_both_sent` rescheduled by ``schedule_of``, through one call."""
    node = Node()
    call = node.open()
    node.run(schedule_of(_both_sent(audio, key_at, key_len)))
    return sorted(f"{d.digit}:{d.source}" for d in node.digits), call


@pytest.mark.parametrize("factor", [1.0, 2.0, 3.0])
def test_rfc4733_and_inband_copy_once_when_stretched(factor: float) -> None:
    digits, _ = _both(_key_audio(), 10, 5 * FRAME, lambda p: stretched(p, factor))
    assert len(digits) == 1, digits


@pytest.mark.parametrize("at", range(8, 22, 2))
@pytest.mark.parametrize("stall", [0.1, 0.3])
def test_rfc4733_and_inband_copy_once_when_stalled(at: int, stall: float) -> None:
    digits, _ = _both(_key_audio(), 10, 5 * FRAME, lambda p: stalled(p, at, stall))
    assert len(digits) == 1, digits


@pytest.mark.parametrize("key", [8, 12])
@pytest.mark.parametrize("stall", [0.05, 0.07, 0.1])
def test_a_late_loop_does_not_fill_the_slots_of_late_audio(key: int, stall: float) -> None:
    """The caller sends audio during the event (with an in-band copy of the key). A stall
    mid-key makes the timer see 50 ms and more without audio: before the fix it put masking
    frames in those slots, the late audio was dropped as too late, and the in-band copy,
    split in two tones around the hole, was counted again. The slots are judged on the
    caller's media clock now: the audio was only late, nothing is filled or dropped."""
    for at in range(11, 10 + key):
        digits, call = _both(
            _key_audio(key=key), 10, key * FRAME, lambda p, at=at: stalled(p, at, stall)
        )
        assert len(digits) == 1, (at, digits)
        assert call.counters.fill_frames == 0 and call.caller.counters.late == 0


def test_silent_caller_during_an_event_still_gets_its_slots_filled() -> None:
    """A phone that stops its audio during an event: the slots are filled (on the event's
    clock) up to the event's end, the masked tail comes out, the agent's stream has no hole."""
    phone = Phone()
    audio = _key_audio(key=0)
    sent: Sent = [(i * 0.02, phone.audio(audio[i * FRAME : (i + 1) * FRAME])) for i in range(10)]
    events = phone.event_packets("5", 10 * FRAME)
    phone.skip(10 * FRAME)
    sent += [(0.2 + off / 8000.0, p) for off, p in events]
    sent += [(0.4 + i * 0.02, phone.audio(audio[i * FRAME : (i + 1) * FRAME])) for i in range(20)]
    sent.sort(key=lambda item: item[0])
    for schedule in (stretched(sent, 1.0), stalled(sent, 14, 0.1)):
        node = Node()
        call = node.open()
        node.run(schedule)
        assert [d.source for d in node.digits] == ["rfc4733"]
        assert call.counters.fill_frames >= 9  # as many as before the media-clock check


@pytest.mark.parametrize("failing", [range(2, 8), range(9, 12), range(12, 15)])
def test_engine_failures_keep_every_source_on_one_clock(failing: range) -> None:
    """Passes that raise (the frames go out as silence) before or during the key: the
    engine did not take those frames, the call's timeline is shifted with it, so the RFC
    4733 report and the in-band copy still meet."""
    node = Node()
    call = node.open()
    masker = node.engine.masker
    real = masker.process
    seen = {"frames": 0}

    def process(sids, frames):  # type: ignore[no-untyped-def]
        seen["frames"] += 1
        if seen["frames"] - 1 in failing:
            raise RuntimeError("overload")
        return real(sids, frames)

    masker.process = process  # type: ignore[method-assign]
    node.run(stretched(_both_sent(_key_audio(), 10, 5 * FRAME), 1.0))
    assert [d.digit for d in node.digits] == ["5"]
    assert call.counters.engine_failures == len(failing)


def test_a_pass_that_fails_after_detection_keeps_its_digits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The detector ran, then the pass raised (encoding, the provider mix): the frames go
    out as silence, and the key reported in that pass is still counted, once."""
    import sipproxy.media as media

    node = Node()
    call = node.open()
    masker = node.engine.masker
    real_process = masker.process
    real_encode = media._encode
    state = {"fail": False}

    def process(sids, frames):  # type: ignore[no-untyped-def]
        out, events = real_process(sids, frames)
        state["fail"] = bool(events)
        return out, events

    def encode(codec, pcm):  # type: ignore[no-untyped-def]
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("overload")
        return real_encode(codec, pcm)

    masker.process = process  # type: ignore[method-assign]
    monkeypatch.setattr(media, "_encode", encode)
    node.run(stretched(audio_sent(Phone().frames(_key_audio())), 1.0))
    assert [d.source for d in node.digits] == ["inband"]
    assert call.counters.engine_failures == 2  # the pass with the start, the one with the end


@pytest.mark.parametrize("at", [6, 9, 10, 11, 12])
def test_flood_drops_around_the_key_with_rfc4733_count_once(at: int) -> None:
    """Frames beyond the pending bound are dropped (counted) while the RFC 4733 packets
    still arrive: the event is placed where the engine will see the audio after the drops,
    so an in-band copy that survives meets it."""
    node = Node(MediaConfig(max_pending_frames=4))
    call = node.open()
    node.run(stalled(_both_sent(_key_audio(), 10, 5 * FRAME), at, 0.2), batch=1000)
    assert [d.digit for d in node.digits] == ["5"]
    assert call.caller.counters.flood > 0


@pytest.mark.parametrize("factor", [1.0, 2.0, 3.0])
def test_sip_info_and_inband_once_under_load(factor: float) -> None:
    node = Node()
    call = node.open()
    sched = stretched(audio_sent(Phone().frames(_key_audio())), factor)
    node.run(sched[:20])
    call.on_sip_info("5", 100, sched[19][0] + 0.3)  # INFO comes late, as signalling does
    node.run(sched[20:])
    assert len(node.digits) == 1


@pytest.mark.parametrize("key", [8, 12])
@pytest.mark.parametrize("stall", [0.06, 0.1, 0.2])
def test_stall_between_the_event_and_its_audio_counts_once(key: int, stall: float) -> None:
    """The stall falls right after the event's first packet, before the audio sent with it:
    the timer (which runs before the socket is read) sees an open event and no audio for
    it, and fills, so the in-band copy loses its first frames and starts late. The two
    reports still meet: the in-band start lies within the RFC 4733 press still open."""
    sent = _both_sent(_key_audio(key=key), 10, key * FRAME)
    first = next(i for i, (_, p) in enumerate(sent) if p[1] & 0x7F == 101)
    t_event = sent[first][0]
    schedule: Schedule = []
    last = float("-inf")
    for i, (t, p) in enumerate(sent):
        arrive = T0 + (t_event + stall if i > first and t < t_event + stall else t)
        last = max(arrive, last + 1e-5)
        schedule.append((last, p))
    node = Node()
    node.open()
    node.run(schedule)
    assert len(node.digits) == 1, [d.source for d in node.digits]


@pytest.mark.parametrize(
    ("lost", "at", "stall", "batch"),
    [
        ({9, 10, 14, 15, 18}, 18, 0.05, 4),
        ({14}, 0, 0.0, 1),
        ({13, 14}, 0, 0.0, 1),
        ({12, 15}, 14, 0.1, 4),
    ],
)
def test_audio_lost_inside_an_rfc4733_press_counts_once(
    lost: set[int], at: int, stall: float, batch: int
) -> None:
    """Audio frames lost in the middle of the key (the RFC 4733 packets get through): the
    in-band copy may break in two tones (spliced, or 20 ms apart where the timer filled a
    slot with masking). A second tone that starts while the RFC 4733 press holds the key
    is the same press."""
    sent = [
        (t, p)
        for t, p in _both_sent(_key_audio(key=8), 10, 8 * FRAME)
        if p[1] & 0x7F == 101 or round(t / 0.02) not in lost
    ]
    node = Node()
    node.open()
    node.run(stalled(sent, at, stall) if stall else stretched(sent, 1.0), batch=batch)
    assert len(node.digits) == 1, [d.source for d in node.digits]
