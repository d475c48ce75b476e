"""The masker: zero leak on every battery case, speech left alone, clean alignment."""

from __future__ import annotations

import numpy as np
import pytest

from dtmfmask.detector import detect_signal
from dtmfmask.events import DigitStarted
from dtmfmask.masker import MaskConfig, MaskingEngine, mask_signal
from dtmfmask.tones import DIGITS, dtmf_tone
from tests.dtmfmask.engine_helpers import digits, mask_many
from tests.leakdecoder import decode, leaks
from tests.signals import Case, mix_presses_into_speech, q24_battery

CASES = list(q24_battery(ci_sized=True))


@pytest.fixture(scope="module")
def masked_battery() -> dict[str, np.ndarray]:
    outs, _ = mask_many([c.signal for c in CASES])
    return {c.name: out for c, out in zip(CASES, outs, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_zero_leak(case: Case, masked_battery: dict[str, np.ndarray]) -> None:
    """Whatever the case (in spec, off spec, heavy noise), the adversarial decoder recovers
    no key from the masked output, and the Q.24 detector counts none."""
    out = masked_battery[case.name]
    assert decode(out) == []
    assert digits(detect_signal(out)) == ""


def test_masked_back_to_the_first_sample() -> None:
    """Every tone that must be masked is silent from its first sample to its last, with the
    default look-ahead, fed in 5 ms frames (so nothing but the look-ahead lets the masker see
    ahead), in every battery case including the report-only heavy-noise ones."""
    cases = [c for c in CASES if c.must_mask]
    outs, _ = mask_many([c.signal for c in cases], MaskConfig(style="silence"), frame=40)
    uncovered = {
        c.name: sum(int(np.count_nonzero(out[p.start : p.end])) for p in c.presses)
        for c, out in zip(cases, outs, strict=True)
    }
    assert {k: v for k, v in uncovered.items() if v} == {}


def test_the_leak_test_can_fail() -> None:
    """Masking that starts late lets the start of keys through, and the decoder says so:
    with 5 ms frames and no look-ahead, keys in 9 dB S/N are found too late."""
    cases = [c for c in CASES if c.group == "noise" and c.name.startswith("noise/9dB")]
    outs, _ = mask_many([c.signal for c in cases], MaskConfig(lookahead_ms=0.0), frame=40)
    assert all(decode(out) for out in outs)


def test_unmasked_audio_is_bit_exact_and_time_aligned() -> None:
    rng = np.random.default_rng(3)
    speechish = rng.normal(0, 2000, 16000)
    x = np.concatenate([speechish, dtmf_tone("3", 480), speechish])
    x = np.clip(np.rint(x), -32768, 32767)
    out, events = mask_signal(x)
    assert digits(events) == "3"
    assert out.shape == x.shape and out.dtype == np.int16
    changed = np.flatnonzero(out != x)
    # only the key press (plus guard and fades) changed; everything else is sample-exact
    assert changed.min() >= 16000 - 120 and changed.max() < 16000 + 480 + 120


@pytest.mark.parametrize("style", ["tone", "silence", "noise"])
def test_styles(style: str) -> None:
    x = np.concatenate([np.zeros(800), dtmf_tone("0", 800, -6), np.zeros(800)])
    out, _ = mask_signal(x, MaskConfig(style=style))  # type: ignore[arg-type]
    inside = out[800:1600].astype(np.float64)
    rms = np.sqrt(np.mean(inside**2))
    if style == "silence":
        assert rms == 0
    elif style == "noise":
        assert 20 < rms < 80  # about -50 dBm0 (rms 51)
    else:
        spectrum = np.abs(np.fft.rfft(inside))
        assert abs(np.argmax(spectrum) * 8000 / inside.size - 500) < 15
    assert decode(out) == []


def test_every_key_gets_the_same_masking_tone() -> None:
    outs, _ = mask_many([dtmf_tone(d, 800, -8) for d in DIGITS])
    core = np.array([o[200:600].astype(np.float64) for o in outs])
    # the same flat tone whatever the key: all rows agree up to the tone's phase
    powers = np.abs(np.fft.rfft(core, axis=1))
    assert np.allclose(powers, powers[0], rtol=0.05, atol=50.0)


def test_forced_mask_for_rfc4733_events() -> None:
    eng = MaskingEngine(MaskConfig(style="silence"))
    sid = eng.add_stream()
    x = np.full((1, 160), 1000, dtype=np.int16)
    outs = []
    for i in range(20):
        if i == 5:
            eng.force_mask(sid, 5 * 160)  # an event started at this frame, still going
        if i == 10:
            eng.release_mask(sid, 10 * 160)
        out, _ = eng.process([sid], x)
        outs.append(out[0])
    y = np.concatenate(outs)[eng.lookahead :]
    assert (y[5 * 160 : 10 * 160] == 0).all()
    assert (y[: 5 * 160 - 40] == 1000).all() and (y[10 * 160 + 40 : 18 * 160] == 1000).all()


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="lookahead_ms"):
        MaskConfig(lookahead_ms=-1)
    with pytest.raises(ValueError, match="style"):
        MaskConfig(style="loud")  # type: ignore[arg-type]


def test_speech_passes_unchanged(talkoff_speech: np.ndarray) -> None:
    """Talk-off speech through the masker: the share of samples it alters is measured and
    kept small (aim: under 0.1 %; the bound here guards against regressions)."""
    chunks = np.array_split(talkoff_speech, 60)
    outs, events = mask_many(chunks)
    changed = sum(int(np.count_nonzero(o != c)) for o, c in zip(outs, chunks, strict=True))
    share = changed / talkoff_speech.size
    print(f"masked share of speech samples: {share * 100:.3f} %")
    assert share < 0.004
    assert not any(isinstance(e, DigitStarted) for ev in events for e in ev)


def test_keys_over_speech_do_not_leak(talkoff_speech: np.ndarray) -> None:
    """Keys over speech that goes on underneath: no key at least 6 dB above the speech under
    it leaks. (Keys at or below the level of simultaneous speech can trip the detector too
    late; how many of those the decoder reads is printed, not asserted.)"""
    signals, truths, speeches = [], [], []
    for i in range(24):
        speech = talkoff_speech[i * 160_000 : (i + 1) * 160_000].astype(np.float64)
        mixed, presses = mix_presses_into_speech(speech, "0123456789*#ABCD", rng=200 + i)
        signals.append(mixed)
        truths.append(presses)
        speeches.append(speech)
    outs, _ = mask_many(signals)
    clear_leaks, buried_leaks, n_clear = [], [], 0
    for out, presses, speech, mixed in zip(outs, truths, speeches, signals, strict=True):
        found = leaks(out, presses, tolerance_ms=0.0)
        for p in presses:
            key = mixed[p.start : p.end] - speech[p.start : p.end]
            clear = np.mean(key**2) >= 4.0 * np.mean(speech[p.start : p.end] ** 2)
            n_clear += clear
            mine = [d for d in found if d.start < p.end and d.end > p.start]
            (clear_leaks if clear else buried_leaks).extend(mine)
    print(f"keys leaked: {len(clear_leaks)} clear, {len(buried_leaks)} buried in speech")
    assert n_clear >= 200
    assert clear_leaks == []


def test_masking_switched_per_stream() -> None:
    """``mask: during_payment``: a stream with masking off lets keys through untouched (and
    still reports them); masking switched on while a key is under way covers it from the
    samples still in the look-ahead; another stream in the same batch is masked throughout."""
    eng = MaskingEngine(MaskConfig(style="silence"))
    off, on = eng.add_stream(), eng.add_stream()
    eng.set_masking(off, False, settle_samples=0)
    key = np.concatenate([np.zeros(800), dtmf_tone("5", 800, -6), np.zeros(1600)])
    frames = key.reshape(-1, 160)
    outs: dict[int, list[np.ndarray]] = {off: [], on: []}
    seen = ""
    for i, frame in enumerate(frames):
        if i == 7:  # 2 frames (40 ms) into the tone, capture starts
            eng.set_masking(off, True)
        out, events = eng.process([off, on], np.stack([frame, frame]))
        outs[off].append(out[0])
        outs[on].append(out[1])
        seen += digits([e for e in events if e.stream == off])
    y_off = np.concatenate(outs[off])[eng.lookahead :]
    y_on = np.concatenate(outs[on])[eng.lookahead :]
    assert seen == "5"  # detected and reported while unmasked
    assert decode(y_on) == []
    assert np.count_nonzero(y_on[800:1600]) == 0
    # before the switch the key went through as it was; after it, silence
    switch_out = 7 * 160 - eng.lookahead  # output position when masking came on
    assert np.array_equal(y_off[800:switch_out], np.rint(key[800:switch_out]))
    assert np.count_nonzero(y_off[switch_out:1600]) == 0


def test_masking_goes_off_only_once_the_last_key_is_over() -> None:
    """The card's last key completes the payment at its start; capture stops and masking is
    switched off while the key still sounds. Nothing of it may reach the agent: masking
    stays on until the settle time has passed and no key is being masked."""
    eng = MaskingEngine(MaskConfig(style="silence"))
    sid = eng.add_stream()
    x = np.concatenate([np.zeros(480), dtmf_tone("9", 2400, -6), np.zeros(9600)])
    out = []
    for i, frame in enumerate(x.reshape(-1, 160)):
        if i == 4:  # 80 ms into the 300 ms key
            eng.set_masking(sid, False, settle_samples=800)
        out.append(eng.process([sid], frame[None, :])[0][0])
    y = np.concatenate(out)[eng.lookahead :]
    assert decode(y) == []
    assert np.count_nonzero(y[480:2880]) == 0
    # and it did go off afterwards: a later key passes
    later, _ = eng.process([sid], dtmf_tone("1", 1600, -6).reshape(1, -1))
    assert np.count_nonzero(later) > 1000
