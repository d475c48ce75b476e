"""Deterministic test signals for the DSP tests and benchmarks, with their ground truth.

Every builder returns float64 samples in 16-bit linear units at 8 kHz (a full-scale sine has
peak 32767 and is +3.14 dBm0) together with the key presses it put in, so a test can compare
what a detector reports, or what leaks through a masker, against what is really there.

Everything is deterministic: randomness comes from a seeded ``numpy.random.Generator``.

Contents:
- ``Press``, ``KeySpec``, ``build_sequence``: DTMF key sequences with given timing, level,
  twist and frequency offsets, random start phases.
- ``add_white_noise``, ``g711_roundtrip``: channel impairments.
- ``Case`` and the ITU-T Q.24 battery generators (``q24_battery`` and one per group).
- ``music_like`` / ``music_segments``: chords, sweeps and whistles that are not key presses.
- ``mix_presses_into_speech``: key presses on top of continuing speech.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from dtmfmask.tones import (
    COL_FREQS,
    DIGITS,
    KEYPAD,
    ROW_FREQS,
    SAMPLE_RATE,
    dbm0_to_amplitude,
    key_freqs,
)

Signal = npt.NDArray[np.float64]
Law = Literal["linear", "ulaw", "alaw"]
LAWS: tuple[Law, ...] = ("linear", "ulaw", "alaw")
RngLike = np.random.Generator | int | None

INT16_MAX = 32767.0


def ms_to_samples(ms: float) -> int:
    return round(ms * SAMPLE_RATE / 1000.0)


def as_rng(rng: RngLike) -> np.random.Generator:
    """A Generator from a seed (None means seed 0: these builders are never unseeded)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


# --------------------------------------------------------------------------------------------
# Key presses and sequences


@dataclass(frozen=True, slots=True)
class Press:
    """A key press in a signal: its tone occupies samples ``start`` up to ``end`` (exclusive)."""

    digit: str
    start: int
    end: int

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) * 1000.0 / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key in a sequence; a field left at None takes the sequence-wide value."""

    digit: str
    on_ms: float | None = None
    off_ms: float | None = None
    level_dbm0: float | None = None
    twist_db: float | None = None
    row_offset: float | None = None
    col_offset: float | None = None


def dtmf_burst(
    digit: str,
    n_samples: int,
    level_dbm0: float = -10.0,
    *,
    twist_db: float = 0.0,
    row_offset: float = 0.0,
    col_offset: float = 0.0,
    phases: tuple[float, float] = (0.0, 0.0),
) -> Signal:
    """A DTMF key: ``level_dbm0`` is the low (row) tone's level, the high tone is ``twist_db``
    weaker (negative = reverse twist); offsets are fractional (0.015 = +1.5 %)."""
    f_row, f_col = key_freqs(digit)
    n = np.arange(n_samples, dtype=np.float64)
    w = 2.0 * np.pi / SAMPLE_RATE
    a_row = dbm0_to_amplitude(level_dbm0)
    a_col = dbm0_to_amplitude(level_dbm0 - twist_db)
    out: Signal = a_row * np.sin(w * f_row * (1.0 + row_offset) * n + phases[0])
    out += a_col * np.sin(w * f_col * (1.0 + col_offset) * n + phases[1])
    return out


def sine(n_samples: int, freq: float, level_dbm0: float, phase: float = 0.0) -> Signal:
    """A steady sine at ``level_dbm0`` (e.g. a flat masking tone)."""
    n = np.arange(n_samples, dtype=np.float64)
    out: Signal = dbm0_to_amplitude(level_dbm0) * np.sin(
        2.0 * np.pi * freq / SAMPLE_RATE * n + phase
    )
    return out


def build_sequence(
    keys: str | Sequence[str | KeySpec],
    *,
    on_ms: float = 50.0,
    off_ms: float = 50.0,
    level_dbm0: float = -10.0,
    twist_db: float = 0.0,
    row_offset: float = 0.0,
    col_offset: float = 0.0,
    lead_ms: float = 40.0,
    rng: RngLike = 0,
) -> tuple[Signal, list[Press]]:
    """Key presses one after another: ``lead_ms`` of silence, then per key its tone (``on_ms``)
    followed by silence (``off_ms``). Start phases are random. Returns (signal, presses)."""
    gen = as_rng(rng)
    specs = [KeySpec(k) if isinstance(k, str) else k for k in keys]
    pieces: list[Signal] = [np.zeros(ms_to_samples(lead_ms))]
    presses: list[Press] = []
    pos = len(pieces[0])
    for spec in specs:
        n_on = ms_to_samples(on_ms if spec.on_ms is None else spec.on_ms)
        n_off = ms_to_samples(off_ms if spec.off_ms is None else spec.off_ms)
        phases = gen.uniform(0.0, 2.0 * np.pi, 2)
        tone = dtmf_burst(
            spec.digit,
            n_on,
            level_dbm0 if spec.level_dbm0 is None else spec.level_dbm0,
            twist_db=twist_db if spec.twist_db is None else spec.twist_db,
            row_offset=row_offset if spec.row_offset is None else spec.row_offset,
            col_offset=col_offset if spec.col_offset is None else spec.col_offset,
            phases=(float(phases[0]), float(phases[1])),
        )
        presses.append(Press(spec.digit, pos, pos + n_on))
        pieces += [tone, np.zeros(n_off)]
        pos += n_on + n_off
    return np.concatenate(pieces), presses


def dtmf_power(level_dbm0: float, twist_db: float = 0.0) -> float:
    """Mean square of a key (both tones) whose low tone is at ``level_dbm0``."""
    a_row = dbm0_to_amplitude(level_dbm0)
    a_col = dbm0_to_amplitude(level_dbm0 - twist_db)
    return (a_row * a_row + a_col * a_col) / 2.0


def presses_power(signal: Signal, presses: Iterable[Press]) -> float:
    """Mean square of ``signal`` over the samples covered by ``presses``."""
    parts = [signal[p.start : p.end] for p in presses]
    if not parts:
        raise ValueError("no presses to measure")
    both = np.concatenate(parts)
    return float(np.mean(both * both))


# --------------------------------------------------------------------------------------------
# Impairments


def add_white_noise(
    signal: Signal,
    snr_db: float,
    ref_power: float | None = None,
    rng: RngLike = 0,
    *,
    presses: Iterable[Press] | None = None,
) -> Signal:
    """``signal`` plus Gaussian white noise (flat over 0-4 kHz) at ``snr_db``.

    S/N is the power of the DTMF signal (both tones, while the key is on) over the total noise
    power across the band. The signal power is ``ref_power`` if given (see ``dtmf_power``),
    else measured over ``presses``, else over the samples that are not exactly zero.
    """
    if ref_power is None:
        if presses is not None:
            ref_power = presses_power(signal, presses)
        else:
            on = signal[signal != 0.0]
            ref_power = float(np.mean(on * on)) if on.size else 0.0
    sigma = np.sqrt(ref_power / 10.0 ** (snr_db / 10.0))
    out: Signal = signal + sigma * as_rng(rng).standard_normal(signal.shape)
    return out


def clip16(signal: Signal) -> Signal:
    """Round to integers and clip to the 16-bit range (still float64)."""
    out: Signal = np.clip(np.rint(signal), -32768.0, 32767.0)
    return out


def g711_roundtrip(signal: Signal, law: Law | str) -> Signal:
    """Encode to G.711 and back (``law`` "ulaw", "alaw"; "linear" only rounds and clips).

    Uses ``dtmfmask.g711`` (imported here, lazily) when it exists, else the reference codec in
    this module.
    """
    pcm = clip16(signal).astype(np.int16)
    if law == "linear":
        return pcm.astype(np.float64)
    if law not in ("ulaw", "alaw"):
        raise ValueError(f"unknown law {law!r}: expected 'linear', 'ulaw' or 'alaw'")
    try:
        from dtmfmask import g711

        if law == "ulaw":
            decoded = g711.ulaw_decode(g711.ulaw_encode(pcm))
        else:
            decoded = g711.alaw_decode(g711.alaw_encode(pcm))
    except ImportError:
        if law == "ulaw":
            decoded = reference_ulaw_decode(reference_ulaw_encode(pcm))
        else:
            decoded = reference_alaw_decode(reference_alaw_encode(pcm))
    return np.asarray(decoded, dtype=np.float64)


# Reference G.711 (after the public-domain Sun g711.c), vectorised; for cross-checking.


def reference_ulaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    x = pcm.astype(np.int32) >> 2  # 14-bit
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), 8159) + 0x21
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    uval = (seg << 4) | ((mag >> (seg + 1)) & 0xF)
    out = np.where(seg >= 8, 0x7F ^ mask, uval ^ mask)
    return out.astype(np.uint8)


def reference_ulaw_decode(code: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    u = (~code.astype(np.int32)) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    out = np.where(u & 0x80, 0x84 - t, t - 0x84)
    return out.astype(np.int16)


def reference_alaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    x = pcm.astype(np.int32) >> 3  # 13-bit
    mask = np.where(x >= 0, 0xD5, 0x55)
    mag = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), mag)
    low = np.where(seg < 2, (mag >> 1) & 0xF, (mag >> np.maximum(seg, 1)) & 0xF)
    aval = (seg << 4) | low
    out = np.where(seg >= 8, 0x7F ^ mask, aval ^ mask)
    return out.astype(np.uint8)


def reference_alaw_decode(code: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    a = code.astype(np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    out = np.where(a & 0x80, t, -t)
    return out.astype(np.int16)


# --------------------------------------------------------------------------------------------
# ITU-T Q.24 battery


@dataclass(frozen=True, slots=True)
class Case:
    """One labelled battery case.

    ``presses`` are all the key tones in ``signal`` (ground truth, whether or not a receiver
    should accept them). ``expected`` is the digit string a Q.24 receiver must report, in
    order: "" means it must report nothing, None means the count is not checked. ``must_mask``
    says the masker must hide these tones whatever the detector reports. ``report_only``
    cases (heavy noise) are measured, never asserted.
    """

    name: str
    group: str
    signal: Signal
    presses: tuple[Press, ...]
    expected: str | None
    must_mask: bool
    report_only: bool = False
    law: Law = "linear"

    @property
    def expects_nothing(self) -> bool:
        return self.expected == ""

    @property
    def expected_presses(self) -> tuple[Press, ...]:
        """The presses a receiver must report (empty when it must report nothing)."""
        return self.presses if self.expected else ()


NOMINAL_LEVEL = -10.0


def _case(
    name: str,
    group: str,
    keys: str | Sequence[str | KeySpec],
    *,
    expect: Literal["all", "none", "dont_care"],
    must_mask: bool | None = None,
    seed: int,
    **kwargs: float,
) -> Case:
    signal, presses = build_sequence(keys, rng=seed, **kwargs)
    digits = "".join(p.digit for p in presses)
    expected = {"all": digits, "none": "", "dont_care": None}[expect]
    return Case(
        name,
        group,
        signal,
        tuple(presses),
        expected,
        must_mask=(expect != "none") if must_mask is None else must_mask,
    )


def _seed(*parts: object) -> int:
    """A stable per-case seed (not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def q24_keys(ci_sized: bool = False) -> Iterator[Case]:
    """All 16 keys at -10 dBm0 with 40/40 ms and 50/50 ms timing: all must be reported."""
    for on_off in (40.0, 50.0):
        yield _case(
            f"keys/all16/{on_off:g}-{on_off:g}ms",
            "keys",
            DIGITS,
            expect="all",
            on_ms=on_off,
            off_ms=on_off,
            level_dbm0=NOMINAL_LEVEL,
            seed=_seed("keys", on_off),
        )


ACCEPT_OFFSETS = (-0.015, 0.015)
REJECT_OFFSETS = (-0.05, -0.035, 0.035, 0.05)


def q24_frequency_offsets(ci_sized: bool = False) -> Iterator[Case]:
    """Each row and column tone offset on its own: ±1.5 % accepted, ±3.5 % and ±5 % rejected.

    Full size: every key that uses the shifted tone; CI size: one key per tone.
    """
    for group, freqs in (("row", ROW_FREQS), ("col", COL_FREQS)):
        for i, freq in enumerate(freqs):
            keys = KEYPAD[i] if group == "row" else "".join(row[i] for row in KEYPAD)
            if ci_sized:
                keys = keys[i % 4]
            for offset, digit in itertools.product(ACCEPT_OFFSETS + REJECT_OFFSETS, keys):
                accept = offset in ACCEPT_OFFSETS
                yield _case(
                    f"offset/{group}{freq:g}/{offset * 100:+.1f}%/{digit}",
                    "offset",
                    digit,
                    expect="all" if accept else "none",
                    on_ms=50.0,
                    off_ms=50.0,
                    level_dbm0=NOMINAL_LEVEL,
                    row_offset=offset if group == "row" else 0.0,
                    col_offset=offset if group == "col" else 0.0,
                    seed=_seed("offset", group, i, offset, digit),
                )


def q24_twist(ci_sized: bool = False) -> Iterator[Case]:
    """Twist 0..8 dB normal and 0..4 dB reverse in 0.5 dB steps (accepted) and a few beyond
    (count not checked). Positive twist = high tone weaker. The stronger tone is at -10 dBm0."""
    normal = np.arange(0.0, 8.01, 0.5)
    reverse = -np.arange(0.5, 4.01, 0.5)
    beyond = (10.0, 12.0, -6.0, -8.0)
    digits = "1" if ci_sized else "159D"
    for twist, digit in itertools.product((*normal.tolist(), *reverse.tolist(), *beyond), digits):
        level = NOMINAL_LEVEL if twist >= 0 else NOMINAL_LEVEL + twist
        yield _case(
            f"twist/{twist:+.1f}dB/{digit}",
            "twist",
            digit,
            expect="all" if -4.0 <= twist <= 8.0 else "dont_care",
            must_mask=True,
            on_ms=50.0,
            off_ms=50.0,
            level_dbm0=level,
            twist_db=twist,
            seed=_seed("twist", twist, digit),
        )


def q24_levels(ci_sized: bool = False) -> Iterator[Case]:
    """Per-tone levels -3..-36 dBm0 in 1 dB steps (accepted); -45 and -50 dBm0 (rejected)."""
    digits = "5" if ci_sized else "1D"
    for level, digit in itertools.product(
        (*np.arange(-3.0, -36.01, -1.0).tolist(), -45.0, -50.0), digits
    ):
        yield _case(
            f"level/{level:+.0f}dBm0/{digit}",
            "level",
            digit,
            expect="all" if level >= -36.0 else "none",
            on_ms=50.0,
            off_ms=50.0,
            level_dbm0=level,
            seed=_seed("level", level, digit),
        )


def q24_durations(ci_sized: bool = False) -> Iterator[Case]:
    """Tone durations: 40, 45, 50 ms accepted; 10, 15, 19 ms rejected; 25 and 30 ms are
    "don't care" for the count but must be masked."""
    digits = "8" if ci_sized else DIGITS
    table = ((40.0, "all"), (45.0, "all"), (50.0, "all"), (10.0, "none"), (15.0, "none"),
             (19.0, "none"), (25.0, "dont_care"), (30.0, "dont_care"))  # fmt: skip
    for (on_ms, expect), digit in itertools.product(table, digits):
        yield _case(
            f"duration/{on_ms:g}ms/{digit}",
            "duration",
            digit,
            expect=expect,  # type: ignore[arg-type]
            must_mask=expect != "none",
            on_ms=on_ms,
            off_ms=60.0,
            level_dbm0=NOMINAL_LEVEL,
            seed=_seed("duration", on_ms, digit),
        )


def q24_gaps(ci_sized: bool = False) -> Iterator[Case]:
    """The same key twice with a 40 ms gap (40 ms tones): two digits."""
    digits = "0" if ci_sized else DIGITS
    for digit in digits:
        yield _case(
            f"gap/40ms/{digit}{digit}",
            "gap",
            digit * 2,
            expect="all",
            on_ms=40.0,
            off_ms=40.0,
            level_dbm0=NOMINAL_LEVEL,
            seed=_seed("gap", digit),
        )


def q24_noise(ci_sized: bool = False) -> Iterator[Case]:
    """White noise at 15 dB S/N (error-free expected), and 12, 9, 6 dB (report only).

    Each case is the 16 keys, 50/50 ms; full size repeats with 8 seeds and two levels.
    """
    repeats = 1 if ci_sized else 8
    levels = (NOMINAL_LEVEL,) if ci_sized else (NOMINAL_LEVEL, -25.0)
    for snr, level, rep in itertools.product((15.0, 12.0, 9.0, 6.0), levels, range(repeats)):
        seed = _seed("noise", snr, level, rep)
        gen = as_rng(seed)
        keys = "".join(gen.permutation(list(DIGITS)))
        signal, presses = build_sequence(keys, level_dbm0=level, rng=gen)
        noisy = add_white_noise(signal, snr, dtmf_power(level), gen)
        yield Case(
            f"noise/{snr:g}dB/{level:+.0f}dBm0/{rep}",
            "noise",
            noisy,
            tuple(presses),
            keys,
            must_mask=True,
            report_only=snr < 15.0,
        )


Q24_GROUPS = (
    q24_keys,
    q24_frequency_offsets,
    q24_twist,
    q24_levels,
    q24_durations,
    q24_gaps,
    q24_noise,
)


def with_laws(cases: Iterable[Case], laws: Iterable[Law] = LAWS) -> Iterator[Case]:
    """Each case as is ("linear", rounded to 16-bit) and after a G.711 round trip."""
    laws = tuple(laws)
    for case in cases:
        for law in laws:
            yield replace(
                case,
                name=f"{case.name}/{law}",
                signal=g711_roundtrip(case.signal, law),
                law=law,
            )


def q24_battery(*, ci_sized: bool = False, laws: Iterable[Law] = LAWS) -> Iterator[Case]:
    """The whole battery, every case after each of ``laws``.

    ``ci_sized`` keeps it small (a few hundred short cases, well under a minute through a fast
    detector); the benchmark runs the full size.
    """
    for group in Q24_GROUPS:
        yield from with_laws(group(ci_sized), laws)


# --------------------------------------------------------------------------------------------
# Music-like signals (no key presses in them)

# A partial at or near both tones of one key (within this fraction) is never generated.
PAIR_GUARD = 0.04


def has_dtmf_pair(freqs: Iterable[float], guard: float = PAIR_GUARD) -> bool:
    """True if ``freqs`` contain a row and a column frequency of one key within ``guard``."""
    fs = np.asarray(list(freqs), dtype=np.float64)
    if fs.size == 0:
        return False
    near_row = np.abs(fs[:, None] / np.asarray(ROW_FREQS)[None, :] - 1.0) <= guard
    near_col = np.abs(fs[:, None] / np.asarray(COL_FREQS)[None, :] - 1.0) <= guard
    return bool(near_row.any() and near_col.any())


def _near(
    freq: Signal, targets: Sequence[float], guard: float = PAIR_GUARD
) -> npt.NDArray[np.bool_]:
    """Per sample: is ``freq`` within ``guard`` of any of ``targets``."""
    ratio = freq[:, None] / np.asarray(targets)[None, :]
    out: npt.NDArray[np.bool_] = (np.abs(ratio - 1.0) <= guard).any(axis=1)
    return out


def _envelope(n: int, attack: int, release: int) -> Signal:
    env = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r:
        env[n - r :] = np.linspace(1.0, 0.0, r)
    out: Signal = env * np.exp(-np.arange(n) / (1.5 * n))  # a gentle decay
    return out


def _chord(gen: np.random.Generator, n: int) -> tuple[str, Signal]:
    while True:
        root = 110.0 * 2.0 ** (gen.integers(0, 36) / 12.0)  # A2..A5
        shape = [(0, 4, 7), (0, 3, 7), (0, 4, 7, 10), (0, 3, 7, 10), (0, 4, 7, 11), (0, 5, 7)][
            gen.integers(0, 6)
        ]
        notes = [root * 2.0 ** (s / 12.0) for s in shape]
        n_harm = int(gen.integers(2, 7))
        partials = [(f * k, 1.0 / k**1.2) for f in notes for k in range(1, n_harm + 1)]
        partials = [(f, a) for f, a in partials if f < 3800.0]
        loud = [f for f, a in partials if a >= 0.1]
        if not has_dtmf_pair(loud):
            break
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    for f, a in partials:
        out += a * np.sin(2.0 * np.pi * f * t + gen.uniform(0, 2 * np.pi))
    env = _envelope(n, int(gen.integers(40, 400)), int(gen.integers(200, 1600)))
    return f"chord/{root:.0f}Hz/{len(notes)}notes/{n_harm}harm", out * env


def _sweep(gen: np.random.Generator, n: int, fast: bool) -> tuple[str, Signal]:
    lo, hi = gen.uniform(300.0, 600.0), gen.uniform(1800.0, 3400.0)
    if gen.integers(0, 2):
        lo, hi = hi, lo
    t = np.arange(n) / SAMPLE_RATE
    dur = n / SAMPLE_RATE
    # exponential sweep; fast sweeps go back and forth several times
    reps = int(gen.integers(3, 9)) if fast else 1
    frac = (t * reps / dur) % 1.0
    frac = np.where((np.floor(t * reps / dur) % 2) == 1, 1.0 - frac, frac) if fast else frac
    freq = lo * (hi / lo) ** frac
    phase = 2.0 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    out = np.sin(phase)
    # a weak second harmonic where it cannot form a key's pair with the fundamental
    if gen.integers(0, 2):
        ok = ~(_near(freq, ROW_FREQS, 0.08) & _near(2 * freq, COL_FREQS, 0.08))
        out += 0.3 * np.sin(2 * phase) * ok * (2 * freq < 3800)
    kind = "fast" if fast else "slow"
    return f"sweep/{kind}/{lo:.0f}-{hi:.0f}Hz", out * _envelope(n, 80, 80)


def _whistle(gen: np.random.Generator, n: int) -> tuple[str, Signal]:
    base = float(gen.choice(np.asarray(ROW_FREQS + COL_FREQS)))
    centre = base * (1.0 + gen.uniform(-0.06, 0.06))
    rate, depth = gen.uniform(4.0, 7.0), gen.uniform(0.005, 0.03)
    t = np.arange(n) / SAMPLE_RATE
    freq = centre * (1.0 + depth * np.sin(2 * np.pi * rate * t + gen.uniform(0, 2 * np.pi)))
    phase = 2.0 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    out = np.sin(phase) + 0.02 * gen.standard_normal(n)  # breathy
    return f"whistle/{centre:.0f}Hz/vib{rate:.1f}Hz", out * _envelope(n, 200, 400)


def music_segments(minutes: float = 3.0, seed: int = 0) -> Iterator[tuple[str, Signal]]:
    """Labelled music-like segments (1-4 s each) totalling ``minutes``: chords of 3-4 notes
    with harmonics, slow and fast sweeps across the DTMF band, whistles with vibrato near DTMF
    frequencies. Levels -8..-25 dBm0 (mean power). No segment contains a two-tone pair within
    ±4 % of a key's frequencies."""
    gen = as_rng(seed)
    total = int(minutes * 60 * SAMPLE_RATE)
    made = 0
    while made < total:
        n = min(int(gen.uniform(1.0, 4.0) * SAMPLE_RATE), total - made)
        kind = gen.integers(0, 4)
        if kind == 0:
            name, sig = _chord(gen, n)
        elif kind == 1:
            name, sig = _sweep(gen, n, fast=False)
        elif kind == 2:
            name, sig = _sweep(gen, n, fast=True)
        else:
            name, sig = _whistle(gen, n)
        level = gen.uniform(-25.0, -8.0)
        power = float(np.mean(sig * sig)) or 1.0
        target = dbm0_to_amplitude(level) ** 2 / 2.0
        yield f"{name}/{level:.0f}dBm0", clip16(sig * np.sqrt(target / power))
        made += n


def music_like(minutes: float = 3.0, seed: int = 0) -> Signal:
    """``music_segments`` joined into one signal."""
    return np.concatenate([s for _, s in music_segments(minutes, seed)])


# --------------------------------------------------------------------------------------------
# Key presses over speech


def mix_presses_into_speech(
    speech: npt.ArrayLike,
    digits: str,
    level_dbm0: tuple[float, float] = (-25.0, -4.0),
    rng: RngLike = 0,
    *,
    duration_ms: tuple[float, float] = (50.0, 100.0),
    twist_db: tuple[float, float] = (0.0, 4.0),
    offset: float = 0.01,
    min_gap_ms: float = 200.0,
) -> tuple[Signal, list[Press]]:
    """Key presses added on top of ``speech`` (which goes on underneath), spread over it at
    random non-overlapping places at least ``min_gap_ms`` apart. Level, twist, duration and
    frequency offsets (±``offset``) are drawn per press. Returns (mixed, presses), clipped to
    the 16-bit range."""
    gen = as_rng(rng)
    out = np.asarray(speech, dtype=np.float64).copy()
    k = len(digits)
    durs = [ms_to_samples(gen.uniform(*duration_ms)) for _ in range(k)]
    gap = ms_to_samples(min_gap_ms)
    slack = len(out) - sum(durs) - gap * (k + 1)
    if slack < 0:
        raise ValueError(f"speech too short for {k} presses")
    # spread: sorted random cut points of the slack
    cuts = np.sort(gen.integers(0, slack + 1, k))
    presses: list[Press] = []
    pos = gap
    prev_cut = 0
    for digit, n, cut in zip(digits, durs, cuts, strict=True):
        pos += int(cut - prev_cut)
        prev_cut = int(cut)
        level = gen.uniform(*level_dbm0)
        tw = gen.uniform(*twist_db)
        ro, co = gen.uniform(-offset, offset, 2)
        ph = gen.uniform(0.0, 2.0 * np.pi, 2)
        out[pos : pos + n] += dtmf_burst(
            digit,
            n,
            level,
            twist_db=tw,
            row_offset=float(ro),
            col_offset=float(co),
            phases=(float(ph[0]), float(ph[1])),
        )
        presses.append(Press(digit, pos, pos + n))
        pos += n + gap
    return clip16(out), presses
