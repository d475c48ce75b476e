"""Hold audio: a soft chime, phase continuous however it is read, with nothing like DTMF."""

from __future__ import annotations

import numpy as np
import pytest

from dtmfmask.detector import detect_signal
from dtmfmask.events import DigitStarted
from dtmfmask.g711 import ulaw_decode, ulaw_encode
from dtmfmask.tones import amplitude_to_dbm0
from sipproxy.holdaudio import HoldAudio, HoldPattern, hold_loop
from tests.leakdecoder import decode as leak_decode
from tests.sipproxy.media_helpers import tone_power


def test_reads_are_phase_continuous_whatever_the_frame_size() -> None:
    whole = HoldAudio().read(8000 * 5)
    for sizes in ([160], [80, 240], [333], [17000]):
        audio = HoldAudio()
        parts = []
        total = 0
        i = 0
        while total < whole.size:
            n = min(sizes[i % len(sizes)], whole.size - total)
            parts.append(audio.read(n))
            total += n
            i += 1
        assert np.array_equal(np.concatenate(parts), whole)


def test_the_loop_starts_and_ends_in_silence_and_is_soft() -> None:
    loop = hold_loop()
    assert loop.size == 16000 and loop[0] == 0 and loop[-1] == 0
    assert not loop.flags.writeable
    peak = amplitude_to_dbm0(float(np.abs(loop).max()))
    assert -25.0 < peak < -23.0
    # no click at the seam: steps between samples stay small everywhere, the seam included
    seam = np.concatenate([loop, loop[:100]]).astype(np.int32)
    assert np.abs(np.diff(seam)).max() < 0.5 * np.abs(loop).max()


def test_two_notes_and_nothing_a_dtmf_detector_takes_for_a_key() -> None:
    pcm = HoldAudio().read(8000 * 10)
    x = pcm.astype(np.float64)
    assert tone_power(x, 440.0) > 0.3 and tone_power(x, 550.0) > 0.3
    assert tone_power(x, 440.0) + tone_power(x, 550.0) > 0.95
    coded = ulaw_decode(ulaw_encode(pcm))  # as the caller gets it
    for signal in (pcm, coded, np.clip(pcm.astype(np.int32) * 20, -32768, 32767)):
        assert leak_decode(signal) == []
        assert [e for e in detect_signal(signal) if isinstance(e, DigitStarted)] == []


def test_patterns_near_dtmf_are_refused() -> None:
    with pytest.raises(ValueError, match="hold notes"):
        HoldPattern(notes_hz=(440.0, 700.0))
    with pytest.raises(ValueError, match="level"):
        HoldPattern(level_dbm0=0.0)
    with pytest.raises(ValueError, match="cycle_s"):
        HoldPattern(cycle_s=1.0)
    with pytest.raises(ValueError, match="non-empty"):
        HoldAudio.from_samples([])


def test_a_recording_loops() -> None:
    audio = HoldAudio.from_samples(np.arange(10) * 100)
    assert audio.read(25).tolist() == [(i % 10) * 100 for i in range(25)]
    assert audio.position == 5
