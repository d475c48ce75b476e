"""RFC 4733: payload codec, the receiver against misbehaving trunks, the generator."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dtmfmask.rfc4733 import (
    MAX_DURATION,
    EventGenerator,
    EventPacket,
    EventReceiver,
    ReceiverEvent,
    Rfc4733Error,
    RtpDigitEnded,
    RtpDigitStarted,
    RtpOtherEvent,
    TelephoneEvent,
    build_payload,
    digit_to_event,
    event_to_digit,
)
from dtmfmask.tones import DIGITS

PT = 101
SSRC = 0x1234ABCD
UNITS_PER_MS = 8  # 8 kHz telephone-event clock


# --- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    packet: EventPacket
    now: float
    ssrc: int = SSRC
    payload_type: int = PT


def arrivals(packets: Iterable[EventPacket], start_ms: float = 0.0) -> list[Arrival]:
    return [Arrival(p, start_ms + p.send_offset / UNITS_PER_MS) for p in packets]


def feed(rx: EventReceiver, items: Iterable[Arrival], *, poll: bool = False) -> list[ReceiverEvent]:
    out: list[ReceiverEvent] = []
    for a in items:
        if poll:
            out += rx.poll(a.now)
        p = a.packet
        out += rx.receive(
            payload_type=a.payload_type,
            ssrc=a.ssrc,
            timestamp=p.timestamp,
            marker=p.marker,
            payload=p.payload,
            now=a.now,
        )
    return out


def digits(events: Sequence[ReceiverEvent]) -> str:
    return "".join(e.digit for e in events if isinstance(e, RtpDigitStarted))


def ended(events: Sequence[ReceiverEvent]) -> list[RtpDigitEnded]:
    return [e for e in events if isinstance(e, RtpDigitEnded)]


def press(digit: str, ts: int, duration: int) -> list[EventPacket]:
    return EventGenerator().digit(digit, ts, duration)


def raw(
    ts: int, event: int, duration: int, *, end: bool = False, marker: bool = False
) -> EventPacket:
    return EventPacket(marker, ts, TelephoneEvent(event, end, 10, duration).build(), 0)


# --- payload codec -------------------------------------------------------------------------


def test_digit_mapping() -> None:
    assert [event_to_digit(i) for i in range(16)] == list("0123456789*#ABCD")
    assert event_to_digit(16) is None
    assert event_to_digit(255) is None
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    for bad in ("", "E", "12", "a", " "):
        with pytest.raises(ValueError):
            digit_to_event(bad)


def test_parse_known_bytes() -> None:
    # Event 5, E bit, volume 10, duration 800: the §2.3 layout by hand.
    assert TelephoneEvent.parse(b"\x05\x8a\x03\x20") == [TelephoneEvent(5, True, 10, 800)]
    assert TelephoneEvent(11, False, 63, 65535).build() == b"\x0b\x3f\xff\xff"


def test_reserved_bit_is_ignored() -> None:
    assert TelephoneEvent.parse(b"\x01\x4a\x00\xa0") == [TelephoneEvent(1, False, 10, 160)]


def test_parse_several_events() -> None:
    events = [TelephoneEvent(1, True, 10, 800), TelephoneEvent(2, False, 10, 320)]
    assert TelephoneEvent.parse(build_payload(events)) == events


@pytest.mark.parametrize(
    ("payload", "rule", "offset"),
    [
        (b"", "§2.3", 0),
        (b"\x01\x0a\x00", "§2.3", 0),
        (b"\x01\x8a\x00\xa0\x02", "§2.3", 4),
        (b"\x01\x0a\x00\xa0\x02\x0a\x00\xa0", "§2.5.1.5", 1),
    ],
)
def test_parse_errors_name_rule_and_offset(payload: bytes, rule: str, offset: int) -> None:
    with pytest.raises(Rfc4733Error) as info:
        TelephoneEvent.parse(payload)
    assert info.value.rule == rule
    assert info.value.offset == offset
    assert rule in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs", [{"event": 256}, {"event": -1}, {"volume": 64}, {"duration": 65536}]
)
def test_field_ranges_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TelephoneEvent(**{"event": 1, **kwargs})


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_rfc4733_error(payload: bytes) -> None:
    try:
        events = TelephoneEvent.parse(payload)
    except Rfc4733Error:
        return
    assert build_payload(events) == bytes(
        b & 0xBF if i % 4 == 1 else b for i, b in enumerate(payload)
    )


@given(
    st.builds(
        TelephoneEvent,
        st.integers(0, 255),
        st.booleans(),
        st.integers(0, 63),
        st.integers(0, MAX_DURATION),
    )
)
def test_build_parse_round_trip(ev: TelephoneEvent) -> None:
    assert TelephoneEvent.parse(ev.build()) == [ev]


# --- receiver: the trunk misbehaviours -----------------------------------------------------


def test_clean_press_is_one_digit() -> None:
    rx = EventReceiver()
    events = feed(rx, arrivals(press("7", 1000, 800), start_ms=50.0))
    assert events[0] == RtpDigitStarted(SSRC, "7", 1000, 50.0)
    assert ended(events) == [RtpDigitEnded(SSRC, "7", 1000, 800, 50.0, 150.0, True)]
    assert len(events) == 2


def test_three_end_packets_count_once() -> None:
    rx = EventReceiver()
    pkts = press("5", 0, 480)
    assert sum(p.report.end for p in pkts) == 3
    events = feed(rx, arrivals(pkts))
    assert digits(events) == "5"
    assert len(ended(events)) == 1
    assert rx.counters.duplicates == 2


def test_missing_marker_bits() -> None:
    rx = EventReceiver()
    pkts = [replace(p, marker=False) for p in press("9", 0, 800)]
    events = feed(rx, arrivals(pkts))
    assert digits(events) == "9"
    assert ended(events)[0].duration == 800


def test_marker_on_every_packet() -> None:
    rx = EventReceiver()
    pkts = [replace(p, marker=True) for p in press("9", 0, 800)]
    assert digits(feed(rx, arrivals(pkts))) == "9"


def test_lost_first_packets_start_on_first_seen() -> None:
    rx = EventReceiver()
    pkts = press("3", 4000, 800)[3:]  # start and two updates lost
    events = feed(rx, arrivals(pkts, start_ms=1000.0))
    start = events[0]
    assert isinstance(start, RtpDigitStarted)
    assert start.timestamp == 4000
    # The first packet seen reports 480 units (60 ms) already elapsed.
    assert start.started_at == pytest.approx(1000.0)
    assert digits(events) == "3"
    assert ended(events)[0].duration == 800


def test_only_end_packet_arrives() -> None:
    rx = EventReceiver()
    events = feed(rx, arrivals(press("0", 0, 800)[-1:]))
    assert digits(events) == "0"
    assert ended(events)[0].duration == 800


def test_zero_duration_event() -> None:
    rx = EventReceiver()
    events = feed(rx, [Arrival(raw(100, 4, 0, end=True, marker=True), 0.0)] * 3)
    assert digits(events) == "4"
    assert ended(events)[0].duration == 0


def test_start_with_zero_duration_then_updates() -> None:
    rx = EventReceiver()
    pkts = press("4", 100, 640)
    assert pkts[0].report.duration == 0 and pkts[0].marker
    assert digits(feed(rx, arrivals(pkts))) == "4"


def test_irregular_update_cadence() -> None:
    rx = EventReceiver(end_timeout_ms=1000.0)
    gaps_ms = [5, 300, 12, 700, 40, 950, 1]
    t, dur, items = 0.0, 0, []
    for gap in gaps_ms:
        t += gap
        dur += gap * UNITS_PER_MS
        items.append(Arrival(raw(8000, 2, dur), t))
    items += [Arrival(raw(8000, 2, dur, end=True), t + 3)] * 3
    events = feed(rx, items, poll=True)
    assert digits(events) == "2"
    assert ended(events)[0].end_seen


def test_never_ending_event_is_closed_by_poll() -> None:
    rx = EventReceiver(end_timeout_ms=500.0)
    pkts = [p for p in press("8", 0, 800) if not p.report.end]
    events = feed(rx, arrivals(pkts))
    assert digits(events) == "8" and not ended(events)
    last = pkts[-1].send_offset / UNITS_PER_MS
    assert rx.deadline() == pytest.approx(last + 500.0)
    assert rx.poll(last + 499.0) == []
    closed = rx.poll(last + 500.0)
    assert len(closed) == 1 and isinstance(closed[0], RtpDigitEnded)
    assert not closed[0].end_seen
    assert closed[0].duration == pkts[-1].report.duration
    assert rx.deadline() is None
    assert rx.poll(10_000.0) == []
    # The end packets arriving after the timeout must not count the key again.
    assert feed(rx, [Arrival(p, 2000.0) for p in press("8", 0, 800)]) == []
    assert rx.counters.timeouts == 1


def test_new_press_closes_one_left_open() -> None:
    rx = EventReceiver()
    first = [p for p in press("1", 0, 800) if not p.report.end]
    second = press("1", 1200, 800)
    events = feed(rx, arrivals(first) + arrivals(second, start_ms=150.0))
    assert digits(events) == "11"
    assert [e.end_seen for e in ended(events)] == [False, True]
    assert isinstance(events[1], RtpDigitEnded) and events[1].timestamp == 0
    assert rx.counters.superseded == 1


def test_repeated_key_is_counted_each_time() -> None:
    rx = EventReceiver()
    items: list[Arrival] = []
    for i in range(4):
        items += arrivals(press("6", i * 1120, 800), start_ms=i * 140.0)
    assert digits(feed(rx, items)) == "6666"


def test_duplicated_and_reordered_packets() -> None:
    rx = EventReceiver()
    pkts = press("#", 500, 1600)
    shuffled = pkts + pkts[::-1] + pkts[3:7]
    random.Random(4).shuffle(shuffled)
    events = feed(rx, [Arrival(p, 0.0) for p in shuffled])
    assert digits(events) == "#"
    assert len(ended(events)) == 1


def test_late_older_press_does_not_disturb_newer_one() -> None:
    rx = EventReceiver()
    old = press("1", 0, 800)
    new = press("2", 1200, 800)
    events = feed(rx, [Arrival(new[0], 0.0), Arrival(old[2], 1.0), Arrival(new[1], 2.0)])
    assert digits(events) == "21"
    assert [e.digit for e in ended(events)] == ["1"]  # the old one, whole; "2" still open
    events = feed(rx, [Arrival(p, 3.0) for p in old + new])
    assert digits(events) == ""
    assert [e.digit for e in ended(events)] == ["2"]


@pytest.mark.parametrize("duration", [MAX_DURATION, MAX_DURATION + 1, 200_000, 4 * MAX_DURATION])
def test_segmented_long_event_is_one_digit(duration: int) -> None:
    rx = EventReceiver()
    pkts = press("*", 77, duration)
    assert len({p.timestamp for p in pkts}) == -(-duration // MAX_DURATION)
    events = feed(rx, arrivals(pkts), poll=True)
    assert digits(events) == "*"
    assert ended(events) == [
        RtpDigitEnded(SSRC, "*", 77, duration, 0.0, duration / UNITS_PER_MS, True)
    ]


def test_segmented_event_with_first_segment_lost() -> None:
    rx = EventReceiver()
    pkts = press("A", 0, 150_000)
    second = [p for p in pkts if p.timestamp != 0]
    first = [p for p in pkts if p.timestamp == 0]
    events = feed(rx, arrivals(second) + [Arrival(p, 20_000.0) for p in first])
    assert digits(events) == "A"
    assert ended(events)[0].timestamp == MAX_DURATION


def test_segmented_event_with_marker_on_each_segment() -> None:
    rx = EventReceiver()
    pkts = press("B", 10, 140_000)
    starts = {p.timestamp for p in pkts}
    pkts = [
        replace(p, marker=True) if i == 0 or p.timestamp != pkts[i - 1].timestamp else p
        for i, p in enumerate(pkts)
    ]
    assert sum(p.marker for p in pkts) == len(starts)
    assert digits(feed(rx, arrivals(pkts))) == "B"


def test_timestamp_wrap_around() -> None:
    rx = EventReceiver()
    base = 2**32 - 500
    items = arrivals(press("1", base, 800))
    items += arrivals(press("2", (base + 1200) % 2**32, 800), start_ms=150.0)
    items += arrivals(press("3", (base + 2400) % 2**32, 200_000), start_ms=300.0)
    events = feed(rx, items)
    assert digits(events) == "123"
    assert [e.duration for e in ended(events)] == [800, 800, 200_000]


def test_segmented_event_across_wrap() -> None:
    rx = EventReceiver()
    pkts = press("C", 2**32 - 1000, 100_000)
    assert {p.timestamp for p in pkts} == {2**32 - 1000, MAX_DURATION - 1000}
    events = feed(rx, arrivals(pkts))
    assert digits(events) == "C"
    assert ended(events)[0].duration == 100_000


def test_non_dtmf_events_are_never_digits() -> None:
    rx = EventReceiver()
    flash = EventGenerator().digit(16, 0, 800)
    events = feed(rx, arrivals(flash))
    assert events == [RtpOtherEvent(SSRC, 16, 0, 0.0)]
    assert digits(events) == ""
    # A non-DTMF event does not close a key press that is in progress.
    events = feed(rx, [Arrival(raw(1000, 5, 160), 200.0), Arrival(raw(1100, 200, 0), 201.0)])
    events += feed(rx, [Arrival(raw(1000, 5, 800, end=True), 300.0)])
    assert digits(events) == "5"
    assert ended(events)[0].end_seen


def test_unnegotiated_payload_type_is_dropped() -> None:
    rx = EventReceiver(payload_types={96, 101})
    pkts = press("1", 0, 800)
    events = feed(rx, [replace(a, payload_type=0) for a in arrivals(pkts)])
    assert events == [] and rx.counters.unnegotiated == len(pkts)
    events = feed(rx, [replace(a, payload_type=96) for a in arrivals(pkts)])
    assert digits(events) == "1"


def test_malformed_payloads_are_counted_not_raised() -> None:
    rx = EventReceiver()
    for payload in (b"", b"\x01", b"\x01\x0a\x00\xa0\x02"):
        assert (
            rx.receive(
                payload_type=PT, ssrc=SSRC, timestamp=0, marker=True, payload=payload, now=0.0
            )
            == []
        )
    assert rx.counters.malformed == 3


def test_several_events_in_one_packet() -> None:
    rx = EventReceiver()
    payload = build_payload([TelephoneEvent(1, True, 10, 800), TelephoneEvent(2, False, 10, 320)])
    events = rx.receive(
        payload_type=PT, ssrc=SSRC, timestamp=0, marker=True, payload=payload, now=0.0
    )
    assert digits(events) == "12"
    starts = [e for e in events if isinstance(e, RtpDigitStarted)]
    assert [s.timestamp for s in starts] == [0, 800]


def test_ssrc_is_part_of_the_key() -> None:
    rx = EventReceiver()
    pkts = press("1", 0, 800)
    items = arrivals(pkts) + [replace(a, ssrc=SSRC + 1, now=a.now + 200) for a in arrivals(pkts)]
    assert digits(feed(rx, items)) == "11"


def test_memory_is_bounded_and_forgotten_presses_are_not_recounted() -> None:
    rx = EventReceiver(memory=8)
    items: list[Arrival] = []
    for i in range(200):
        items += arrivals(press(DIGITS[i % 16], i * 1200, 800), start_ms=i * 150.0)
    events = feed(rx, items)
    assert len(digits(events)) == 200
    assert len(rx._keys) <= 8
    # A very late copy of the first press must not be counted again.
    assert feed(rx, arrivals(press("0", 0, 800), start_ms=40_000.0)) == []
    assert rx.counters.stale > 0


# --- generator ------------------------------------------------------------------------------


def test_generator_packet_sequence() -> None:
    pkts = EventGenerator().digit("5", 1000, 800)
    reports = [p.report for p in pkts]
    assert [p.marker for p in pkts] == [True] + [False] * 7
    assert {p.timestamp for p in pkts} == {1000}
    assert [r.duration for r in reports] == [0, 160, 320, 480, 640, 800, 800, 800]
    assert [r.end for r in reports] == [False] * 5 + [True] * 3
    assert [p.send_offset for p in pkts] == [0, 160, 320, 480, 640, 800, 960, 1120]
    assert all(r.event == 5 and r.volume == 10 for r in reports)


def test_generator_incremental_matches_whole() -> None:
    gen = EventGenerator(interval=80)
    pkts = gen.start("#", 50)
    assert gen.active
    for t in range(0, 1000, 37):
        pkts += gen.advance(t)
    pkts += gen.stop(1000)
    assert not gen.active
    assert pkts == EventGenerator(interval=80).digit("#", 50, 1000)
    assert gen.advance(2000) == [] and gen.stop(2000) == []


def test_generator_refuses_overlapping_presses() -> None:
    gen = EventGenerator()
    gen.start("1", 0)
    with pytest.raises(ValueError):
        gen.start("2", 0)


def test_generator_rejects_bad_keys() -> None:
    with pytest.raises(ValueError):
        EventGenerator().start("E", 0)
    with pytest.raises(ValueError):
        EventGenerator().start(300, 0)


def test_generator_segments_long_events() -> None:
    pkts = EventGenerator().digit("0", 2**32 - 10, 140_000)
    seg_starts = sorted({p.timestamp for p in pkts}, key=lambda ts: (ts - (2**32 - 10)) % 2**32)
    assert seg_starts == [2**32 - 10, MAX_DURATION - 10, 2 * MAX_DURATION - 10]
    boundary = [p.report for p in pkts if p.report.duration == MAX_DURATION]
    assert len(boundary) == 2 and not any(r.end for r in boundary)
    assert sum(p.marker for p in pkts) == 1
    ends = [p for p in pkts if p.report.end]
    assert len(ends) == 3 and {p.report.duration for p in ends} == {140_000 - 2 * MAX_DURATION}
    offsets = [p.send_offset for p in pkts]
    assert offsets == sorted(offsets)


def test_generator_exact_segment_length_does_not_open_empty_segment() -> None:
    pkts = EventGenerator().digit("0", 0, MAX_DURATION)
    assert {p.timestamp for p in pkts} == {0}
    assert pkts[-1].report == TelephoneEvent(0, True, 10, MAX_DURATION)


@given(
    key=st.sampled_from(DIGITS),
    ts=st.integers(0, 2**32 - 1),
    duration=st.one_of(st.integers(0, 3000), st.integers(60_000, 200_000)),
    interval=st.sampled_from([80, 160, 240]),
)
@settings(max_examples=60, deadline=None)
def test_generate_receive_round_trip(key: str, ts: int, duration: int, interval: int) -> None:
    pkts = EventGenerator(interval=interval).digit(key, ts, duration)
    events = feed(EventReceiver(), arrivals(pkts))
    assert digits(events) == key
    (end,) = ended(events)
    assert (end.timestamp, end.duration, end.end_seen) == (ts, duration, True)


# --- the property: a hostile network never makes two digits of one press --------------------

press_specs = st.lists(
    st.tuples(
        st.sampled_from(DIGITS),
        # Short presses, or long ones that span two or three segments.
        st.one_of(st.integers(0, 3000), st.integers(100_000, 140_000)),
        st.integers(1, 4000),  # gap before the next press, in RTP units
    ),
    min_size=1,
    max_size=6,
)


def _ambiguous(specs: list[tuple[str, int, int]]) -> bool:
    """A same-key press starting where a long press's next segment would (class docstring)."""
    for (digit, duration, gap), (next_digit, _, _) in itertools.pairwise(specs):
        if digit == next_digit and duration > MAX_DURATION:
            next_segment = ((duration - 1) // MAX_DURATION + 1) * MAX_DURATION
            if abs(duration + gap - next_segment) <= 800:
                return True
    return False


@given(
    specs=press_specs,
    base=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
    dup=st.sampled_from([0.0, 0.1, 0.5]),
    jitter_ms=st.sampled_from([0.0, 30.0, 120.0]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_loss_duplication_reordering_never_double_count(
    specs: list[tuple[str, int, int]],
    base: int,
    seed: int,
    loss: float,
    dup: float,
    jitter_ms: float,
) -> None:
    assume(not _ambiguous(specs))
    rng = random.Random(seed)
    presses: list[tuple[str, int, int]] = []  # (digit, offset from base, duration)
    sent: list[tuple[float, int, EventPacket]] = []
    offset = 0
    for digit, duration, gap in specs:
        presses.append((digit, offset, duration))
        for p in EventGenerator().digit(digit, (base + offset) % 2**32, duration):
            if rng.random() < loss:
                continue
            arrival = (offset + p.send_offset) / UNITS_PER_MS + rng.uniform(0, jitter_ms)
            sent.append((arrival, len(presses) - 1, p))
            if rng.random() < dup:
                sent.append((arrival + rng.uniform(0, jitter_ms), len(presses) - 1, p))
        offset += duration + gap
    sent.sort(key=lambda s: s[0])

    rx = EventReceiver()
    # Arrival times are reordered by jitter but the receiver clock only moves forward.
    clock = 0.0
    items = []
    for arrival, _, p in sent:
        clock = max(clock, arrival)
        items.append(Arrival(p, clock))
    events = feed(rx, items, poll=True) + rx.poll(clock + 10_000.0)

    def owner(ts: int) -> int:
        rel = (ts - base) % 2**32
        return next(i for i, (_, off, dur) in enumerate(presses) if off <= rel <= off + dur)

    started = [e for e in events if isinstance(e, RtpDigitStarted)]
    per_press = [owner(e.timestamp) for e in started]
    assert len(per_press) == len(set(per_press)), "a press was counted twice"
    delivered = {i for _, i, _ in sent}
    assert set(per_press) == delivered, "a press that reached us was not counted"
    for e, i in zip(started, per_press, strict=True):
        assert e.digit == presses[i][0]
    assert sorted(owner(e.timestamp) for e in ended(events)) == sorted(per_press)
    assert rx.deadline() is None
