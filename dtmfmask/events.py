"""What the engine reports: small frozen dataclasses, matched on type by callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Source = Literal["inband", "rfc4733", "info"]


@dataclass(frozen=True, slots=True)
class DigitStarted:
    """A key press was accepted (Q.24 grade). ``start`` is the stream's sample index."""

    stream: int
    digit: str = field(repr=False)  # card digits never reach a log through a repr
    start: int
    source: Source = "inband"


@dataclass(frozen=True, slots=True)
class DigitEnded:
    """The key press that started at ``start`` ended at ``end`` (exclusive sample index)."""

    stream: int
    digit: str = field(repr=False)  # card digits never reach a log through a repr
    start: int
    end: int
    source: Source = "inband"


DigitEvent = DigitStarted | DigitEnded
