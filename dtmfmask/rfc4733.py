"""RFC 4733 telephone events: payload codec, a receiver that counts each key once, a generator.

Sans-I/O: the caller parses the RTP header, passes the fields in with its own clock reading
(milliseconds, any origin) and gets frozen events back. Nothing here reads a clock, keeps a
timer or touches a socket; ``EventReceiver.poll`` is how the caller's timer closes events
whose end packets never came.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dtmfmask.tones import DIGITS

__all__ = [
    "MAX_DURATION",
    "EventGenerator",
    "EventPacket",
    "EventReceiver",
    "ReceiverCounters",
    "ReceiverEvent",
    "Rfc4733Error",
    "RtpDigitEnded",
    "RtpDigitStarted",
    "RtpOtherEvent",
    "TelephoneEvent",
    "build_payload",
    "digit_to_event",
    "event_to_digit",
]

MAX_DURATION = 0xFFFF
"""Largest duration one event report can carry; longer events are segmented (§2.5.1.3)."""

_TS_MOD = 1 << 32
_EVENT = struct.Struct("!BBH")


class Rfc4733Error(ValueError):
    """A payload broke a rule of RFC 4733; ``rule`` names the section, ``offset`` the byte."""

    def __init__(self, rule: str, offset: int, message: str) -> None:
        super().__init__(f"RFC 4733 {rule}: {message} (at byte {offset})")
        self.rule = rule
        self.offset = offset


def event_to_digit(event: int) -> str | None:
    """The DTMF key for event codes 0-15 (§3.2); ``None`` for every other event."""
    return DIGITS[event] if 0 <= event < len(DIGITS) else None


def digit_to_event(digit: str) -> int:
    """The event code of a DTMF key ("0"-"9", "*", "#", "A"-"D")."""
    code = DIGITS.find(digit) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF key: {digit!r}")
    return code


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One 4-byte event report (§2.3). ``volume`` is the power level in -dBm0 (0-63)."""

    event: int = field(repr=False)  # codes 0-15 are the keys: kept out of reprs
    end: bool = False
    volume: int = 10
    duration: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.event <= 255:
            raise ValueError(f"event code out of range 0..255: {self.event}")
        if not 0 <= self.volume <= 63:
            raise ValueError(f"volume out of range 0..63: {self.volume}")
        if not 0 <= self.duration <= MAX_DURATION:
            raise ValueError(f"duration out of range 0..65535: {self.duration}")

    @property
    def digit(self) -> str | None:
        return event_to_digit(self.event)

    @classmethod
    def parse(cls, payload: bytes) -> list[TelephoneEvent]:
        """Every event report in ``payload``; several may share a packet (§2.5.1.5)."""
        if not payload:
            raise Rfc4733Error("§2.3", 0, "empty payload, an event report is 4 bytes")
        whole = len(payload) - len(payload) % 4
        if whole != len(payload):
            raise Rfc4733Error(
                "§2.3", whole, f"payload of {len(payload)} bytes is not a whole number of events"
            )
        events = [
            # The R bit (0x40) is reserved: senders set it to zero, receivers ignore it.
            cls(event, bool(flags & 0x80), flags & 0x3F, duration)
            for event, flags, duration in _EVENT.iter_unpack(payload)
        ]
        for i, ev in enumerate(events[:-1]):
            if not ev.end:
                raise Rfc4733Error(
                    "§2.5.1.5", 4 * i + 1, "an event followed by another in the packet lacks E"
                )
        return events

    def build(self) -> bytes:
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)


def build_payload(events: Sequence[TelephoneEvent]) -> bytes:
    """Pack several event reports into one payload (§2.5.1.5)."""
    return b"".join(ev.build() for ev in events)


def _ts_diff(a: int, b: int) -> int:
    """``a - b`` on the 32-bit RTP timestamp circle, as a signed number."""
    d = (a - b) % _TS_MOD
    return d - _TS_MOD if d >= _TS_MOD // 2 else d


# ---------------------------------------------------------------------------------------------
# Receiving


@dataclass(frozen=True, slots=True)
class RtpDigitStarted:
    """A key press reported by RFC 4733, first seen. ``timestamp`` identifies the press.

    ``started_at`` is the caller's clock (ms) at the start of the tone, estimated from the
    arrival of the first packet seen minus the duration it already reported.
    """

    ssrc: int
    digit: str = field(repr=False)  # card digits never reach a log through a repr
    timestamp: int
    started_at: float


@dataclass(frozen=True, slots=True)
class RtpDigitEnded:
    """The key press ended. ``duration`` is in RTP clock units, summed over segments.

    ``end_seen`` is False when the press was closed without an end packet: by
    ``EventReceiver.poll`` after the timeout, or because another press began.
    """

    ssrc: int
    digit: str = field(repr=False)  # card digits never reach a log through a repr
    timestamp: int
    duration: int
    started_at: float
    ended_at: float
    end_seen: bool


@dataclass(frozen=True, slots=True)
class RtpOtherEvent:
    """An event that is not a DTMF key (code 16-255: flash, tones, ...), reported once."""

    ssrc: int
    event: int
    timestamp: int
    received_at: float


ReceiverEvent = RtpDigitStarted | RtpDigitEnded | RtpOtherEvent


@dataclass(slots=True)
class ReceiverCounters:
    """Plain-int counters, read by the metrics exporter on scrape (never per packet)."""

    packets: int = 0
    unnegotiated: int = 0
    malformed: int = 0
    duplicates: int = 0
    stale: int = 0
    non_dtmf: int = 0
    timeouts: int = 0
    superseded: int = 0


@dataclass(slots=True)
class _Press:
    ssrc: int
    event: int
    first_ts: int
    segment_ts: int
    segment_duration: int
    started_at: float
    last_seen: float
    marked: bool
    closed: bool = False
    end_seen: bool = False

    @property
    def duration(self) -> int:
        return (self.segment_ts - self.first_ts) % _TS_MOD + self.segment_duration


_Key = tuple[int, int, int]


class EventReceiver:
    """Turns the telephone-event packets of one RTP stream into one digit per key press.

    A press is identified by (SSRC, timestamp, event) as RFC 4733 §2.5.2 prescribes, so
    the three end packets, retransmissions, duplicates and reordering all fold into the
    press they belong to. The marker bit is not needed to start a press: trunks lose or
    misplace it, and a new timestamp alone tells a new press from an update. Continuation
    segments of a long event (§2.5.1.3) are recognised by their timestamp, one full segment
    after the previous one, and extend the press instead of starting another. The one
    ambiguous case, a new press of the same key whose first packet seen has no marker and
    whose timestamp falls within ``clock_rate // 10`` of where the open press's next
    segment would start, is taken as the continuation.

    Memory is bounded: only the ``memory`` most recent keys are remembered. A packet older
    than every forgotten key of its SSRC is dropped as stale rather than counted again.
    """

    def __init__(
        self,
        payload_types: Iterable[int] = (101,),
        *,
        clock_rate: int = 8000,
        end_timeout_ms: float = 1000.0,
        memory: int = 64,
    ) -> None:
        if memory < 4:
            raise ValueError("memory must hold at least a few presses")
        self.payload_types = frozenset(payload_types)
        self.clock_rate = clock_rate
        self.end_timeout_ms = end_timeout_ms
        self.memory = memory
        self.counters = ReceiverCounters()
        self._keys: OrderedDict[_Key, _Press | None] = OrderedDict()
        self._floor: OrderedDict[int, int] = OrderedDict()
        self._active: _Press | None = None
        # Senders split at exactly MAX_DURATION; the slack absorbs ones that round to a frame.
        self._segment_slack = clock_rate // 10

    def receive(
        self,
        *,
        payload_type: int,
        ssrc: int,
        timestamp: int,
        marker: bool,
        payload: bytes,
        now: float,
    ) -> list[ReceiverEvent]:
        """Feed one RTP packet's fields; ``now`` is the arrival time in ms on the caller's clock.

        Never raises on hostile input: bad packets are counted in ``counters`` and dropped.
        """
        self.counters.packets += 1
        if payload_type not in self.payload_types:
            self.counters.unnegotiated += 1
            return []
        try:
            reports = TelephoneEvent.parse(payload)
        except Rfc4733Error:
            self.counters.malformed += 1
            return []
        out: list[ReceiverEvent] = []
        ssrc &= 0xFFFFFFFF
        start = timestamp % _TS_MOD
        for report in reports:
            self._report(ssrc, start, report, marker, now, out)
            marker = False  # it belongs to the packet's first event
            # In a multi-event packet each event starts where the previous one ended.
            start = (start + report.duration) % _TS_MOD
        return out

    def poll(self, now: float) -> list[ReceiverEvent]:
        """Close the open press if no packet for it arrived within ``end_timeout_ms``."""
        press = self._active
        if press is None or now - press.last_seen < self.end_timeout_ms:
            return []
        self.counters.timeouts += 1
        return [self._close(press, end_seen=False)]

    def deadline(self) -> float | None:
        """When ``poll`` next has work to do (caller's clock, ms), or None."""
        press = self._active
        return None if press is None else press.last_seen + self.end_timeout_ms

    def progress(self) -> tuple[int, int, int] | None:
        """(SSRC, first timestamp, timestamp reported up to) of the open press (the last
        is its segment's timestamp plus duration), or None when no press is open: the
        sender's media clock, which arrival times under load do not follow."""
        press = self._active
        if press is None:
            return None
        return press.ssrc, press.first_ts, (press.segment_ts + press.segment_duration) % _TS_MOD

    # -- internals ------------------------------------------------------------------------

    def _report(
        self,
        ssrc: int,
        ts: int,
        report: TelephoneEvent,
        marker: bool,
        now: float,
        out: list[ReceiverEvent],
    ) -> None:
        key = (ssrc, ts, report.event)
        if key in self._keys:
            press = self._keys[key]
            if press is not None and press is self._active and press.segment_ts == ts:
                self._update(press, report, now, out)
            else:
                self.counters.duplicates += 1
            return
        floor = self._floor.get(ssrc)
        if floor is not None and _ts_diff(ts, floor) <= 0:
            self.counters.stale += 1
            return
        if report.digit is None:
            self.counters.non_dtmf += 1
            self._remember(key, None)
            out.append(RtpOtherEvent(ssrc, report.event, ts, now))
            return
        owner = self._segment_owner(ssrc, ts, report.event, marker)
        if owner is not None:
            self._remember(key, owner)
            if owner is self._active and _ts_diff(ts, owner.segment_ts) > 0:
                owner.segment_ts = ts
                owner.segment_duration = 0
                self._update(owner, report, now, out)
            else:
                self.counters.duplicates += 1
            return
        self._open(key, report, marker, now, out)

    def _segment_owner(self, ssrc: int, ts: int, event: int, marker: bool) -> _Press | None:
        lo, hi = MAX_DURATION - self._segment_slack, MAX_DURATION + self._segment_slack
        for (k_ssrc, _, k_event), press in reversed(self._keys.items()):
            if press is None or k_ssrc != ssrc or k_event != event:
                continue
            # The next segment of an event whose end we have not seen (it may have been
            # closed early by a timeout or by a reordered later press)...
            # The exact §2.5.1.3 timestamp is enough. Near it, a marker means a new press, and
            # the segment must have run long enough to be the head of a long event.
            after = _ts_diff(ts, press.segment_ts)
            if not press.end_seen and (
                after == MAX_DURATION
                or (
                    lo <= after <= hi and not marker and press.segment_duration >= MAX_DURATION // 2
                )
            ):
                return press
            # ...or an earlier segment overtaken by a later one; a press opened by a marked
            # packet began with its first segment, so nothing can precede it.
            if not press.marked and lo <= _ts_diff(press.first_ts, ts) <= hi:
                return press
        return None

    def _open(
        self,
        key: _Key,
        report: TelephoneEvent,
        marker: bool,
        now: float,
        out: list[ReceiverEvent],
    ) -> None:
        ssrc, ts, event = key
        active = self._active
        # A press older than the one in progress is a late arrival of its own: report it
        # whole, and leave the newer press open.
        late = active is not None and active.ssrc == ssrc and _ts_diff(ts, active.first_ts) < 0
        if active is not None and not late:
            self.counters.superseded += 1
            out.append(self._close(active, end_seen=False))
        press = _Press(
            ssrc=ssrc,
            event=event,
            first_ts=ts,
            segment_ts=ts,
            segment_duration=report.duration,
            started_at=now - report.duration * 1000.0 / self.clock_rate,
            last_seen=now,
            marked=marker,
        )
        self._remember(key, press)
        out.append(RtpDigitStarted(ssrc, DIGITS[event], ts, press.started_at))
        if late:
            out.append(self._close(press, end_seen=report.end, make_active=False))
            return
        self._active = press
        if report.end:
            out.append(self._close(press, end_seen=True))

    def _update(
        self, press: _Press, report: TelephoneEvent, now: float, out: list[ReceiverEvent]
    ) -> None:
        press.segment_duration = max(press.segment_duration, report.duration)
        press.last_seen = now
        if report.end:
            out.append(self._close(press, end_seen=True))

    def _close(self, press: _Press, *, end_seen: bool, make_active: bool = True) -> RtpDigitEnded:
        press.closed = True
        press.end_seen = end_seen
        if make_active and press is self._active:
            self._active = None
        return RtpDigitEnded(
            ssrc=press.ssrc,
            digit=DIGITS[press.event],
            timestamp=press.first_ts,
            duration=press.duration,
            started_at=press.started_at,
            ended_at=press.started_at + press.duration * 1000.0 / self.clock_rate,
            end_seen=end_seen,
        )

    def _remember(self, key: _Key, press: _Press | None) -> None:
        self._keys[key] = press
        while len(self._keys) > self.memory:
            (ssrc, ts, _), forgotten = self._keys.popitem(last=False)
            if forgotten is not None and forgotten is self._active:
                # Still running: keep it reachable under its newest key instead.
                self._keys[(ssrc, forgotten.segment_ts, forgotten.event)] = forgotten
                continue
            floor = self._floor.get(ssrc)
            if floor is None or _ts_diff(ts, floor) > 0:
                self._floor[ssrc] = ts
                self._floor.move_to_end(ssrc)
            while len(self._floor) > self.memory:
                self._floor.popitem(last=False)


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass(frozen=True, slots=True)
class EventPacket:
    """One telephone-event packet for the RTP layer to wrap in a header of its own.

    ``timestamp`` is the RTP timestamp of the (segment of the) event, already wrapped to
    32 bits; ``send_offset`` is when to send it, in RTP clock units after the press began.
    """

    marker: bool
    timestamp: int
    payload: bytes
    send_offset: int

    @property
    def report(self) -> TelephoneEvent:
        return TelephoneEvent.parse(self.payload)[0]


class EventGenerator:
    """Sends one outgoing stream's key presses as conformant RFC 4733 packets.

    Incremental: ``start`` when the press begins, ``advance`` as time passes (an update per
    ``interval``), ``stop`` when it ends (three end packets, §2.5.1.4). ``digit`` does a
    whole press of known length in one call. Offsets are in RTP clock units since ``start``.
    """

    def __init__(
        self,
        *,
        interval: int = 160,
        volume: int = 10,
        end_repeats: int = 3,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.volume = volume
        self.end_repeats = end_repeats
        self._event: int | None = None
        self._first_ts = 0
        self._segment_base = 0  # offset of the current segment's start from the press start
        self._next_update = 0

    @property
    def active(self) -> bool:
        return self._event is not None

    def start(self, key: str | int, timestamp: int) -> list[EventPacket]:
        """Begin a press of ``key`` (a DTMF digit or an event code) at RTP ``timestamp``."""
        if self._event is not None:
            raise ValueError("a telephone event is already in progress")
        event = digit_to_event(key) if isinstance(key, str) else key
        TelephoneEvent(event)  # validates the code before any state changes
        self._event = event
        self._first_ts = timestamp % _TS_MOD
        self._segment_base = 0
        self._next_update = self.interval
        return [self._packet(0, end=False, marker=True)]

    def advance(self, elapsed: int) -> list[EventPacket]:
        """Updates due up to and including ``elapsed`` units after the start."""
        if self._event is None:
            return []
        out: list[EventPacket] = []
        while self._next_update <= elapsed:
            self._roll_segments(self._next_update, out)
            out.append(self._packet(self._next_update, end=False))
            self._next_update += self.interval
        return out

    def stop(self, elapsed: int) -> list[EventPacket]:
        """End the press ``elapsed`` units after its start: pending updates, then E packets."""
        if self._event is None:
            return []
        out = self.advance(elapsed - 1)
        elapsed = max(elapsed, self._next_update - self.interval)
        self._roll_segments(elapsed, out)
        for i in range(self.end_repeats):
            out.append(self._packet(elapsed, end=True, send_at=elapsed + i * self.interval))
        self._event = None
        return out

    def digit(self, key: str | int, timestamp: int, duration: int) -> list[EventPacket]:
        """Every packet of one press of ``duration`` units starting at ``timestamp``."""
        return self.start(key, timestamp) + self.stop(duration)

    def _roll_segments(self, elapsed: int, out: list[EventPacket]) -> None:
        # §2.5.1.3: close the full segment at MAX_DURATION without E, carry on in a new one
        # whose timestamp is where the old one stopped.
        while elapsed - self._segment_base > MAX_DURATION:
            boundary = self._segment_base + MAX_DURATION
            out.append(self._packet(boundary, end=False))
            self._segment_base = boundary

    def _packet(
        self, elapsed: int, *, end: bool, marker: bool = False, send_at: int | None = None
    ) -> EventPacket:
        assert self._event is not None
        report = TelephoneEvent(self._event, end, self.volume, elapsed - self._segment_base)
        return EventPacket(
            marker=marker,
            timestamp=(self._first_ts + self._segment_base) % _TS_MOD,
            payload=report.build(),
            send_offset=elapsed if send_at is None else send_at,
        )
