"""Hold audio for a caller on hold, sans-I/O: a looped pattern read out frame by frame.

The default pattern is a soft two-note chime (440 Hz, then 550 Hz, each a short note with a
gentle attack and a decaying tail) at about -24 dBm0, followed by a long pause, looped every
two seconds. It is built to be clearly not DTMF (DESIGN.md invariant 1 applies to whatever a
detector downstream might make of it): one pure sine at a time, never two at once, both below
the lowest DTMF row tone (697 Hz), and every note fades to zero before the next begins, so
there is no energy a DTMF detector could take for a key.

:class:`HoldAudio` keeps only a read position into a shared, precomputed loop, so the audio
is phase continuous across frames of any length and a call on hold costs one slice per frame.
A profile may loop its own recording instead (:meth:`HoldAudio.from_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from dtmfmask.tones import ROW_FREQS, SAMPLE_RATE, dbm0_to_amplitude

__all__ = ["HoldAudio", "HoldPattern", "hold_loop"]

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class HoldPattern:
    """A chime: ``notes_hz`` played in turn, each ``note_s`` long and ``gap_s`` apart, then
    silence up to ``cycle_s``. ``level_dbm0`` is each note's peak level."""

    notes_hz: tuple[float, ...] = (440.0, 550.0)
    note_s: float = 0.45
    gap_s: float = 0.15
    cycle_s: float = 2.0
    level_dbm0: float = -24.0
    attack_s: float = 0.02
    decay_s: float = 0.15  # e-folding time of the note's tail

    def __post_init__(self) -> None:
        if not self.notes_hz:
            raise ValueError("a hold pattern needs at least one note")
        # a single tone below the row group (with room for a detector's tolerance) can
        # never be read as a key, whatever else is mixed with it
        if any(not 100.0 <= f <= ROW_FREQS[0] * 0.9 for f in self.notes_hz):
            raise ValueError(f"hold notes must be within 100..{ROW_FREQS[0] * 0.9:.0f} Hz")
        if not -60.0 <= self.level_dbm0 <= -10.0:
            raise ValueError(f"hold level must be within -60..-10 dBm0, got {self.level_dbm0}")
        if self.note_s <= 2 * self.attack_s or self.gap_s < 0 or self.decay_s <= 0:
            raise ValueError("note_s must exceed twice attack_s; gap_s >= 0; decay_s > 0")
        if len(self.notes_hz) * (self.note_s + self.gap_s) > self.cycle_s + 1e-9:
            raise ValueError("the notes and gaps do not fit in cycle_s")


@cache
def hold_loop(pattern: HoldPattern = HoldPattern()) -> Pcm:
    """One cycle of ``pattern`` as 16-bit PCM at 8 kHz; it starts and ends in silence, so it
    loops without a click. Cached: every call on hold shares it (read-only)."""
    n_cycle = round(pattern.cycle_s * SAMPLE_RATE)
    n_note = round(pattern.note_s * SAMPLE_RATE)
    n_attack = max(round(pattern.attack_s * SAMPLE_RATE), 1)
    t = np.arange(n_note, dtype=np.float64) / SAMPLE_RATE
    env = np.exp(-t / pattern.decay_s)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n_attack) / n_attack)
    env[:n_attack] *= ramp
    env[-n_attack:] *= ramp[::-1]  # fade to zero: no click, no overlap with the next note
    env /= env.max()  # the peak is at the level asked for
    amplitude = dbm0_to_amplitude(pattern.level_dbm0)
    out = np.zeros(n_cycle, dtype=np.float64)
    step = round((pattern.note_s + pattern.gap_s) * SAMPLE_RATE)
    for i, f in enumerate(pattern.notes_hz):
        a = i * step
        out[a : a + n_note] = amplitude * env * np.sin(2.0 * np.pi * f * t)
    loop = np.rint(out).astype(np.int16)
    loop.flags.writeable = False
    return loop


class HoldAudio:
    """Reads a looped PCM pattern out in frames, phase continuous from one read to the next."""

    __slots__ = ("_loop", "_pos")

    def __init__(self, pattern: HoldPattern | None = None) -> None:
        self._loop = hold_loop(pattern or HoldPattern())
        self._pos = 0

    @classmethod
    def from_samples(cls, samples: npt.ArrayLike) -> HoldAudio:
        """Loop a recording (16-bit PCM at 8 kHz), e.g. a profile's hold music."""
        pcm = np.clip(np.rint(np.asarray(samples, dtype=np.float64)), -32768, 32767)
        if pcm.ndim != 1 or pcm.size == 0:
            raise ValueError("hold audio must be a non-empty mono signal")
        audio = cls.__new__(cls)
        loop = pcm.astype(np.int16)
        loop.flags.writeable = False
        audio._loop = loop
        audio._pos = 0
        return audio

    @property
    def position(self) -> int:
        """Samples read so far, modulo the loop length."""
        return self._pos

    def read(self, n: int) -> Pcm:
        """The next ``n`` samples (a new array)."""
        loop = self._loop
        size = loop.size
        a = self._pos
        # the common case is one slice; a read across the loop's end wraps the indices
        out = loop[a : a + n].copy() if a + n <= size else loop[(a + np.arange(n)) % size]
        self._pos = (a + n) % size
        return out
