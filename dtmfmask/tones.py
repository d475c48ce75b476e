"""DTMF frequencies, keypad layout, dBm0 levels and a clean DTMF tone generator.

Levels follow ITU-T G.711: a full-scale sine (peak 32767 in 16-bit linear PCM) is +3.14 dBm0.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000

ROW_FREQS: tuple[float, ...] = (697.0, 770.0, 852.0, 941.0)
COL_FREQS: tuple[float, ...] = (1209.0, 1336.0, 1477.0, 1633.0)

# KEYPAD[row][col]
KEYPAD: tuple[str, ...] = ("123A", "456B", "789C", "*0#D")
DIGITS = "0123456789*#ABCD"

FULL_SCALE = 32767.0
FULL_SCALE_DBM0 = 3.14


def key_position(digit: str) -> tuple[int, int]:
    """Return (row, col) of a key; raises ValueError for anything not on the keypad."""
    for r, row in enumerate(KEYPAD):
        c = row.find(digit)
        if c >= 0 and len(digit) == 1:
            return r, c
    raise ValueError(f"not a DTMF key: {digit!r}")


def key_freqs(digit: str) -> tuple[float, float]:
    r, c = key_position(digit)
    return ROW_FREQS[r], COL_FREQS[c]


def dbm0_to_amplitude(level_dbm0: float) -> float:
    """Peak amplitude (16-bit linear units) of a sine at ``level_dbm0``."""
    return float(FULL_SCALE * 10.0 ** ((level_dbm0 - FULL_SCALE_DBM0) / 20.0))


def amplitude_to_dbm0(amplitude: float) -> float:
    return float(FULL_SCALE_DBM0 + 20.0 * np.log10(max(amplitude, 1e-12) / FULL_SCALE))


def power_to_dbm0(mean_square: float) -> float:
    """Level of a signal whose mean square (16-bit linear units) is ``mean_square``."""
    return amplitude_to_dbm0(float(np.sqrt(2.0 * max(mean_square, 1e-24))))


def dtmf_tone(
    digit: str,
    n_samples: int,
    level_dbm0: float = -10.0,
    *,
    twist_db: float = 0.0,
    row_offset: float = 0.0,
    col_offset: float = 0.0,
    sample_rate: int = SAMPLE_RATE,
) -> npt.NDArray[np.float64]:
    """A DTMF key as float samples in 16-bit linear units.

    ``level_dbm0`` is the level of the low-group (row) tone; ``twist_db`` is how much weaker
    the high-group tone is (normal twist positive, reverse twist negative). Offsets are
    fractional (0.015 = +1.5 %).
    """
    f_row, f_col = key_freqs(digit)
    f_row *= 1.0 + row_offset
    f_col *= 1.0 + col_offset
    n = np.arange(n_samples, dtype=np.float64)
    a_row = dbm0_to_amplitude(level_dbm0)
    a_col = dbm0_to_amplitude(level_dbm0 - twist_db)
    w = 2.0 * np.pi / sample_rate
    out: npt.NDArray[np.float64] = a_row * np.sin(w * f_row * n) + a_col * np.sin(w * f_col * n)
    return out
