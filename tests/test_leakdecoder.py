"""The leak decoder finds every key a masker could let through, and nothing else."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dtmfmask.tones import DIGITS
from tests import leakdecoder
from tests.leakdecoder import Detection, any_detection, decode, leaks
from tests.signals import (
    KeySpec,
    Press,
    add_white_noise,
    build_sequence,
    dtmf_power,
    g711_roundtrip,
    mix_presses_into_speech,
    ms_to_samples,
    sine,
)
from tests.speech import SpeechUnavailable, talkoff_corpus


def _hits(found: list[Detection], presses: list[Press]) -> list[bool]:
    return [any(d.start < p.end and d.end > p.start for d in found) for p in presses]


def _missed(signal: np.ndarray, presses: list[Press], specs: list[KeySpec]) -> list[KeySpec]:
    found = decode(signal)
    return [s for s, hit in zip(specs, _hits(found, presses), strict=True) if not hit]


# The conditions the decoder must cover, one corner at a time, every key, 10 ms tones.
CORNERS = [
    {"level_dbm0": -3.0},
    {"level_dbm0": -50.0},
    {"row_offset": 0.05},
    {"row_offset": -0.05},
    {"col_offset": 0.05},
    {"col_offset": -0.05},
    {"row_offset": 0.05, "col_offset": -0.05},
    {"twist_db": 10.0},
    {"twist_db": -10.0, "level_dbm0": -20.0},
    {"twist_db": 10.0, "level_dbm0": -40.0, "row_offset": 0.03},
]


@pytest.mark.parametrize("on_ms", [10.0, 40.0])
def test_detects_every_clean_key_of_10_ms_and_longer(on_ms: float) -> None:
    specs = [
        KeySpec(d, on_ms=on_ms, off_ms=60.0, **corner)  # type: ignore[arg-type]
        for corner in CORNERS
        for d in DIGITS
    ]
    signal, presses = build_sequence(specs, rng=1)
    assert _missed(signal, presses, specs) == []


@pytest.mark.parametrize("law", ["linear", "ulaw", "alaw"])
def test_detects_keys_in_15_db_noise(law: str) -> None:
    keys = DIGITS * 2
    signal, presses = build_sequence(keys, on_ms=10.0, off_ms=60.0, level_dbm0=-20.0, rng=2)
    noisy = g711_roundtrip(add_white_noise(signal, 15.0, dtmf_power(-20.0), rng=3), law)
    assert all(_hits(decode(noisy), presses))


def test_both_methods_see_ordinary_keys() -> None:
    signal, presses = build_sequence(DIGITS, on_ms=40.0, rng=4)
    found = decode(signal)
    for method in leakdecoder.METHODS:
        mine = [d for d in found if d.method == method]
        assert all(_hits(mine, presses)), method
        assert {d.digit for d in mine} == set(DIGITS)


def test_silence_and_white_noise_give_nothing() -> None:
    assert any_detection(np.zeros(8000)) == []
    for level in (-3.0, -20.0, -40.0, -60.0):
        power = (10 ** ((level - 3.14) / 20) * 32767) ** 2 / 2
        noise = add_white_noise(np.zeros(8000 * 2), 0.0, power, rng=int(-level))
        assert any_detection(noise) == [], level


@pytest.mark.parametrize("level", [-3.0, -25.0, -45.0])
def test_single_tones_anywhere_in_band_give_nothing(level: float) -> None:
    # steady tones 300-3400 Hz, each starting and stopping abruptly
    parts = []
    for i, f in enumerate(np.arange(300.0, 3400.1, 10.0)):
        parts += [sine(480, float(f), level, phase=0.37 * i), np.zeros(120)]
    assert any_detection(g711_roundtrip(np.concatenate(parts), "linear")) == []


def _crossfaded(n: int, freq: float, level: float, fade: int, phase: float) -> np.ndarray:
    tone = sine(n, freq, level, phase)
    ramp = np.linspace(0.0, 1.0, fade)
    tone[:fade] *= ramp
    tone[-fade:] *= ramp[::-1]
    return tone


@pytest.mark.parametrize("freq", [450.0, 500.0, 550.0])
def test_masking_tone_starting_stopping_or_crossfaded_gives_nothing(freq: float) -> None:
    parts = []
    for level in (-3.0, -10.0, -20.0, -35.0):
        for phase in np.linspace(0.0, 2.0 * np.pi, 12, endpoint=False):
            n = 160 + int(phase * 13)
            parts += [np.zeros(90), sine(n, freq, level, phase)]  # abrupt
            parts += [np.zeros(70), _crossfaded(n + 40, freq, level, 16, phase)]  # 2 ms fades
    signal = np.concatenate(parts)
    for law in ("linear", "ulaw", "alaw"):
        assert any_detection(g711_roundtrip(signal, law)) == [], law


def _masked_copy(signal: np.ndarray, presses: list[Press], keep: str) -> np.ndarray:
    """Each press replaced by a flat 500 Hz tone at its level, except its first or last 10 ms
    (``keep`` "head"/"tail"); "none" replaces it all, from 3 ms before to 3 ms after, with
    2 ms crossfades inside that padding."""
    out = signal.copy()
    pad, fade, ten = ms_to_samples(3.0), ms_to_samples(2.0), ms_to_samples(10.0)
    for p in presses:
        level = -10.0
        if keep == "head":
            out[p.start + ten : p.end] = sine(p.end - p.start - ten, 500.0, level)
        elif keep == "tail":
            out[p.start : p.end - ten] = sine(p.end - p.start - ten, 500.0, level)
        else:
            a, b = p.start - pad, p.end + pad
            tone = sine(b - a, 500.0, level)
            w = np.ones(b - a)
            w[:fade] = np.linspace(0.0, 1.0, fade)
            w[-fade:] = np.linspace(1.0, 0.0, fade)
            out[a:b] = out[a:b] * (1.0 - w) + tone * w
    return out


@pytest.mark.parametrize("keep", ["head", "tail"])
@pytest.mark.parametrize("level", [-5.0, -20.0, -35.0])
def test_catches_10_ms_left_at_either_end_of_a_masked_key(keep: str, level: float) -> None:
    signal, presses = build_sequence(DIGITS, on_ms=60.0, off_ms=60.0, level_dbm0=level, rng=5)
    masked = _masked_copy(signal, presses, keep)
    assert all(_hits(decode(masked), presses))


@pytest.mark.parametrize("level", [-5.0, -20.0, -35.0])
def test_fully_masked_keys_give_nothing(level: float) -> None:
    signal, presses = build_sequence(DIGITS, on_ms=60.0, off_ms=60.0, level_dbm0=level, rng=6)
    masked = _masked_copy(signal, presses, "none")
    for law in ("linear", "ulaw"):
        assert any_detection(g711_roundtrip(masked, law)) == [], law


def test_leaks_reports_only_detections_over_true_presses() -> None:
    signal, presses = build_sequence("123", on_ms=50.0, off_ms=200.0, rng=7)
    decoy, _ = build_sequence("9", on_ms=50.0, off_ms=0.0, lead_ms=0.0, rng=8)
    signal[-len(decoy) - 100 : -100] += decoy  # a key that is not in ``presses``
    found = leaks(signal, presses, tolerance_ms=5.0)
    assert sorted({d.digit for d in found}) == ["1", "2", "3"]
    # a masker's delay moves the presses
    delayed = np.concatenate([np.zeros(160), signal])
    assert {d.digit for d in leaks(delayed, presses, 5.0, delay=160)} == {"1", "2", "3"}


def test_prefilter_drops_no_vote_on_keys() -> None:
    """The cheap candidate filter in the LS method must not lose any vote on real keys."""
    specs = [KeySpec(d, on_ms=12.0, **c) for c in CORNERS for d in DIGITS[::3]]  # type: ignore[arg-type]
    signal, _ = build_sequence(specs, rng=9)
    signal = add_white_noise(signal, 15.0, dtmf_power(-10.0), rng=10)
    with_filter = leakdecoder.lsq_votes(signal).key
    try:
        leakdecoder.LSQ_PREFILTER = 0.0
        without = leakdecoder.lsq_votes(signal).key
    finally:
        leakdecoder.LSQ_PREFILTER = 0.5
    assert np.array_equal(with_filter, without)


# --------------------------------------------------------------------------------------------
# On speech (needs espeak-ng)


@pytest.fixture(scope="module")
def speech_minute() -> np.ndarray:
    try:
        return talkoff_corpus(1.0, seed=11).astype(np.float64)
    except SpeechUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def test_finds_keys_over_speech(speech_minute: np.ndarray) -> None:
    """Keys at least 3 dB above the speech under them are all found (quieter ones may be
    buried; the masker still has to hide them, but no decoder sees them either)."""
    mixed, presses = mix_presses_into_speech(speech_minute, "0123456789*#" * 3, rng=12)
    found = leaks(mixed, presses, tolerance_ms=0.0)
    audible = []
    for p in presses:
        key = mixed[p.start : p.end] - speech_minute[p.start : p.end]
        under = speech_minute[p.start : p.end]
        audible.append(np.mean(key**2) >= 2.0 * np.mean(under**2))
    hits = _hits(found, presses)
    assert sum(audible) >= 10
    assert all(h for h, a in zip(hits, audible, strict=True) if a)


def test_masked_keys_over_speech_do_not_leak(speech_minute: np.ndarray) -> None:
    mixed, presses = mix_presses_into_speech(speech_minute, "0123456789*#" * 2, rng=13)
    masked = _masked_copy(mixed, presses, "none")
    assert leaks(masked, presses, tolerance_ms=0.0) == []
