"""Cross-transport digit de-duplication: one key press, one digit (DESIGN invariant 2).

The same key press can reach the engine three ways: as tones in the audio ("inband"), as
RFC 4733 events ("rfc4733") and as SIP INFO ("info"). Each transport reports it on its own
schedule; the caller maps every report onto one millisecond clock and offers it here.

Matching rules, in order:

1. A report from a source that already reported a press is the same press when it is a
   re-offer (its start within ``window_ms`` of that source's start, e.g. offered again once
   the end is known) or when it starts less than ``gap_ms`` after that source's end. Q.24
   puts real gaps at 40 ms or more; the default of 20 ms leaves room for each source's
   timing error, so a real 40 ms gap always makes two digits. It is the same press too
   when that source's report ended but another media source's report of the press says
   the key was still down at the new start (a break in an in-band copy, from frames lost
   or masked, is not a new press). A source that names its presses (``press_id``: RFC
   4733's SSRC and timestamp, RFC 4733 §2.5.2) is matched by name instead, never by time:
   its reports carry arrival times, and jitter or a stalled loop can bring the next press
   of the same key within ``gap_ms`` of the last one.
2. Otherwise it is the same press as a counted press of the same digit that this source has
   not reported yet and that it overlaps, or starts within ``window_ms`` of. While either
   end is unknown, starting within the other's span is overlapping: within the press until
   its end, or (a press still open) up to ``open_ms`` after its start. A press
   takes at most one report per source, which is what keeps two real presses of one key
   two digits however late or stretched another source's reports are.
3. SIP INFO is late, by as much as signalling takes: an INFO report matches a press that
   started up to ``info_tolerance_ms`` before it (the oldest such press first, since INFO
   arrives in order), and a media report matches an INFO-only press that started up to
   ``info_tolerance_ms`` after it.
4. Anything else is a new key press.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import get_args

from dtmfmask.events import Source
from dtmfmask.tones import DIGITS

__all__ = ["DigitDeduplicator"]

_SOURCES: frozenset[str] = frozenset(get_args(Source))


@dataclass(slots=True)
class _Report:
    start: float
    end: float | None
    press_id: Hashable | None = None


@dataclass(slots=True)
class _Press:
    digit: str = field(repr=False)
    reports: dict[str, _Report] = field(default_factory=dict)

    def anchor(self) -> tuple[float, float | None, bool]:
        """(start, end, info_only): media timing is trusted over INFO's."""
        media = [r for s, r in self.reports.items() if s != "info"]
        if not media:
            info = self.reports["info"]
            return info.start, info.end, True
        start = min(r.start for r in media)
        ends = [r.end for r in media if r.end is not None]
        return start, (max(ends) if ends else None), False


class DigitDeduplicator:
    """Decides, report by report, whether a digit is a new key press (see module docstring).

    Sans-I/O and clock-free: every time is the caller's, in milliseconds. Memory is bounded
    to the ``memory`` most recent presses; reports are expected to arrive within about
    ``info_tolerance_ms`` of each other, so older presses are never needed.
    """

    def __init__(
        self,
        window_ms: float = 60.0,
        *,
        gap_ms: float = 20.0,
        info_tolerance_ms: float = 2000.0,
        open_ms: float = 500.0,
        memory: int = 64,
    ) -> None:
        if window_ms < 0 or gap_ms < 0 or info_tolerance_ms < 0 or open_ms < 0:
            raise ValueError("tolerances must not be negative")
        if memory < 1:
            raise ValueError("memory must hold at least one press")
        self.window_ms = window_ms
        self.gap_ms = gap_ms
        self.info_tolerance_ms = info_tolerance_ms
        # a press still open takes another source's copy starting this long after it (an
        # in-band copy whose first frames an overloaded node dropped or masked); a press
        # whose end was lost takes none later than that
        self.open_ms = open_ms
        self._presses: deque[_Press] = deque(maxlen=memory)

    def offer(
        self,
        digit: str,
        source: Source,
        start_ms: float,
        end_ms: float | None,
        press_id: Hashable | None = None,
    ) -> bool:
        """True if this report is a new key press to count; False if already counted.

        ``end_ms`` is None while the press is still going on; offering the same report again
        with its end is allowed (it returns False and records the end). ``press_id``, if the
        source has one, names the press within the source (see rule 1).
        """
        if len(digit) != 1 or digit not in DIGITS:
            raise ValueError(f"not a DTMF key: {digit!r}")
        if source not in _SOURCES:
            raise ValueError(f"unknown source {source!r}, expected one of {sorted(_SOURCES)}")
        if end_ms is not None and end_ms < start_ms:
            raise ValueError("a press cannot end before it starts")
        same = [p for p in self._presses if p.digit == digit]

        for press in reversed(same):
            own = press.reports.get(source)
            if own is not None and (
                self._same_source(own, start_ms, press_id)
                or (
                    press_id is None and own.end is not None and self._held(press, source, start_ms)
                )
            ):
                if end_ms is not None:
                    own.end = end_ms if own.end is None else max(own.end, end_ms)
                return False

        match = self._cross_source(same, source, start_ms, end_ms)
        if match is not None:
            match.reports[source] = _Report(start_ms, end_ms, press_id)
            return False

        self._presses.append(_Press(digit, {source: _Report(start_ms, end_ms, press_id)}))
        return True

    def _same_source(self, own: _Report, start: float, press_id: Hashable | None) -> bool:
        if press_id is not None and own.press_id is not None:
            return press_id == own.press_id
        if abs(start - own.start) <= self.window_ms:
            return True
        return own.end is not None and own.start <= start < own.end + self.gap_ms

    def _held(self, press: _Press, source: str, start: float) -> bool:
        """Another media source's report of ``press`` says the key was still down at
        ``start`` (within its span, or up to ``open_ms`` after its start while open): a
        source whose tone ended and starts again meanwhile lost part of the tone (frames
        lost or masked in the middle of an in-band copy); it did not hear a new press."""
        if source == "info":
            return False
        for other, r in press.reports.items():
            if other in (source, "info"):
                continue
            if r.start <= start < (r.start + self.open_ms if r.end is None else r.end):
                return True
        return False

    def _cross_source(
        self, same: list[_Press], source: str, start: float, end: float | None
    ) -> _Press | None:
        best: _Press | None = None
        best_score = float("inf")
        for press in same:
            if source in press.reports:
                continue
            p_start, p_end, info_only = press.anchor()
            d = start - p_start
            if source == "info":
                ok = -self.window_ms <= d <= self.info_tolerance_ms
                score = p_start  # oldest first: INFO arrives in order
            elif info_only:
                ok = -self.info_tolerance_ms <= d <= self.window_ms
                score = abs(d)
            else:
                overlap = (
                    p_end is not None and end is not None and start <= p_end and p_start <= end
                )
                ok = overlap or abs(d) <= self.window_ms or self._inside(start, end, p_start, p_end)
                score = abs(d)
            if ok and score < best_score:
                best, best_score = press, score
        return best

    def _inside(self, start: float, end: float | None, p_start: float, p_end: float | None) -> bool:
        """A report whose end is not known yet (or of a press whose end is not known yet)
        that starts within the other one's span: two presses of a key cannot overlap, so it
        is the same press, however late the start of one source's copy is (e.g. an
        in-band copy whose first frames an overloaded node dropped)."""
        if p_end is None:
            return p_start - self.window_ms <= start <= p_start + self.open_ms
        return end is None and p_start - self.window_ms <= start <= p_end
