"""The test-signal builders put in exactly what they say."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dtmfmask.tones import DIGITS, amplitude_to_dbm0
from tests.signals import (
    LAWS,
    Press,
    add_white_noise,
    build_sequence,
    dtmf_power,
    g711_roundtrip,
    has_dtmf_pair,
    mix_presses_into_speech,
    music_segments,
    q24_battery,
    reference_alaw_decode,
    reference_alaw_encode,
    reference_ulaw_decode,
    reference_ulaw_encode,
)


def _peak_freq(x: np.ndarray, lo: float, hi: float) -> float:
    n = 1 << 16
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    f = np.fft.rfftfreq(n, 1 / 8000)
    band = (f >= lo) & (f <= hi)
    return float(f[band][np.argmax(spec[band])])


def test_sequence_timing_and_ground_truth() -> None:
    signal, presses = build_sequence("12#", on_ms=40, off_ms=60, lead_ms=20, rng=1)
    assert presses == [Press("1", 160, 480), Press("2", 960, 1280), Press("#", 1760, 2080)]
    assert len(signal) == 160 + 3 * 800
    on = np.zeros(len(signal), bool)
    for p in presses:
        on[p.start : p.end] = True
    assert np.all(signal[~on] == 0.0)
    assert np.all(np.abs(signal[on]) > 0.0)


def test_sequence_is_deterministic_and_phases_are_random() -> None:
    a, _ = build_sequence("55", rng=3)
    b, _ = build_sequence("55", rng=3)
    assert np.array_equal(a, b)
    assert not np.allclose(a[320:720], a[1120:1520])  # same key, other phases


def test_level_twist_and_offsets() -> None:
    signal, (p,) = build_sequence(
        "9", on_ms=500, level_dbm0=-20, twist_db=6, row_offset=0.02, col_offset=-0.03, rng=2
    )
    x = signal[p.start : p.end]
    assert _peak_freq(x, 600, 1000) == pytest.approx(852 * 1.02, abs=2)
    assert _peak_freq(x, 1100, 1800) == pytest.approx(1477 * 0.97, abs=2)
    assert np.mean(x**2) == pytest.approx(dtmf_power(-20, 6), rel=0.01)
    assert amplitude_to_dbm0(np.sqrt(2 * dtmf_power(-20, 0) / 2)) == pytest.approx(-20, abs=0.01)


def test_white_noise_snr() -> None:
    signal, presses = build_sequence(DIGITS, level_dbm0=-10, rng=4)
    noisy = add_white_noise(signal, 15.0, rng=5, presses=presses)
    noise = noisy - signal
    snr = 10 * np.log10(dtmf_power(-10) / np.mean(noise**2))
    assert snr == pytest.approx(15.0, abs=0.1)
    assert np.array_equal(noisy, add_white_noise(signal, 15.0, rng=5, presses=presses))


def test_reference_g711_matches_dtmfmask_g711() -> None:
    g711 = pytest.importorskip("dtmfmask.g711")
    x = np.arange(-32768, 32768).astype(np.int16)
    assert np.array_equal(g711.ulaw_encode(x), reference_ulaw_encode(x))
    assert np.array_equal(g711.alaw_encode(x), reference_alaw_encode(x))
    codes = np.arange(256).astype(np.uint8)
    assert np.array_equal(g711.ulaw_decode(codes), reference_ulaw_decode(codes))
    assert np.array_equal(g711.alaw_decode(codes), reference_alaw_decode(codes))


@pytest.mark.parametrize("law", LAWS)
def test_g711_roundtrip_keeps_the_signal(law: str) -> None:
    signal, _ = build_sequence("5", level_dbm0=-10, rng=6)
    out = g711_roundtrip(signal, law)
    err = out - signal
    assert np.mean(err**2) < np.mean(signal**2) * 10 ** (-30 / 10)


def test_ci_battery_is_small_labelled_and_consistent() -> None:
    cases = list(q24_battery(ci_sized=True))
    assert len({c.name for c in cases}) == len(cases)
    assert sum(len(c.signal) for c in cases) / 8000 < 120  # seconds of audio
    assert {c.law for c in cases} == set(LAWS)
    by_group = {c.group for c in cases}
    assert by_group == {"keys", "offset", "twist", "level", "duration", "gap", "noise"}
    for c in cases:
        assert np.max(np.abs(c.signal)) <= 32768
        if c.expected:
            assert c.expected == "".join(p.digit for p in c.presses)
        if c.report_only:
            assert c.group == "noise"
    names = {c.name: c for c in cases}
    assert names["level/-50dBm0/5/linear"].expects_nothing
    assert names["level/-36dBm0/5/linear"].expected == "5"
    assert names["duration/25ms/8/ulaw"].expected is None
    assert names["duration/25ms/8/ulaw"].must_mask
    assert not names["duration/19ms/8/alaw"].must_mask
    assert names["gap/40ms/00/linear"].expected == "00"


def test_full_battery_covers_every_row_and_column() -> None:
    offsets = [c for c in q24_battery(laws=("linear",)) if c.group == "offset"]
    assert len(offsets) == 8 * 6 * 4


def test_music_never_holds_a_key_pair() -> None:
    assert has_dtmf_pair([697.0, 1209.0])
    assert has_dtmf_pair([697.0 * 1.035, 1209.0 * 0.965, 440.0])
    assert not has_dtmf_pair([697.0, 440.0, 1100.0])
    segs = list(music_segments(0.5, seed=1))
    total = sum(len(s) for _, s in segs)
    assert total == 30 * 8000
    kinds = {name.split("/")[0] for name, _ in segs}
    assert kinds == {"chord", "sweep", "whistle"}
    a = np.concatenate([s for _, s in music_segments(0.2, seed=2)])
    b = np.concatenate([s for _, s in music_segments(0.2, seed=2)])
    assert np.array_equal(a, b)


def test_mixing_into_speech_keeps_speech_underneath() -> None:
    speech = np.random.default_rng(0).normal(0, 300, 8000 * 10)
    mixed, presses = mix_presses_into_speech(speech, "0123456789", rng=7)
    assert [p.digit for p in presses] == list("0123456789")
    for a, b in itertools.pairwise(presses):
        assert b.start - a.end >= 1600
    for p in presses:
        assert 400 <= p.end - p.start <= 800
    on = np.zeros(len(speech), bool)
    for p in presses:
        on[p.start : p.end] = True
    assert np.allclose(mixed[~on], np.rint(speech[~on]))
    key = mixed[on] - speech[on]
    assert np.sqrt(np.mean(key**2)) > 100  # the key is really there
