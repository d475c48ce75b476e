"""Shared fixtures: the talk-off speech corpus (espeak-ng) and music-like signals."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt
import pytest

from tests.signals import music_like
from tests.speech import SpeechUnavailable, talkoff_corpus

TALKOFF_MINUTES = 30.0


def _speech(minutes: float) -> npt.NDArray[np.int16]:
    try:
        return talkoff_corpus(minutes)
    except SpeechUnavailable as exc:
        if os.environ.get("CI"):
            raise  # CI installs espeak-ng: its absence there is a failure, not a skip
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def talkoff_speech() -> npt.NDArray[np.int16]:
    """30 minutes of varied espeak-ng speech at telephone levels, no key presses in it."""
    return _speech(TALKOFF_MINUTES)


@pytest.fixture(scope="session")
def music() -> npt.NDArray[np.float64]:
    """Several minutes of chords, sweeps and whistles near the DTMF frequencies."""
    return music_like(minutes=4.0)


# CI: the same examples every run (a red CI must be reproducible), and no per-example
# deadline (two cores shared with the rest of the suite make timings noisy).
try:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    settings.register_profile("dev", deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass
