"""Before/after spectrograms as a PNG, with numpy, zlib and struct only.

``spectrogram_db`` is a short-time Fourier transform (256-point Hann window, hop 32 at
8 kHz: 31.25 Hz bins, 4 ms steps) in dB. Long recordings are squeezed to at most
``max_columns`` columns by taking the loudest frame of each group, so a 40 ms key press
stays visible however long the file is.

``render_before_after`` stacks the two spectrograms on one dB scale (the louder of the two
sets 0 dB, the floor is ``DYNAMIC_RANGE_DB`` below it) with a small colour map, the eight
DTMF frequencies marked on both edges (low group in cyan, high group in green), kHz and
seconds on the axes. ``encode_png`` writes any RGB array as a PNG file.
"""

from __future__ import annotations

import math
import struct
import zlib
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dtmfmask.tones import COL_FREQS, ROW_FREQS

NFFT = 256
HOP = 32
MAX_COLUMNS = 1600
MIN_COLUMNS = 400
DYNAMIC_RANGE_DB = 80.0

FloatArray = npt.NDArray[np.float64]
RGBImage = npt.NDArray[np.uint8]

# Colour map anchors: (position 0..1, r, g, b); dark blue-black through red to pale yellow.
_CMAP_ANCHORS = (
    (0.00, 0, 0, 4),
    (0.25, 40, 11, 84),
    (0.50, 140, 41, 129),
    (0.70, 227, 89, 51),
    (0.85, 249, 160, 20),
    (1.00, 252, 254, 164),
)

_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)
_SEPARATOR = (200, 200, 200)
_LOW_GROUP = (0, 170, 200)
_HIGH_GROUP = (0, 160, 60)

# 3x5 glyphs, one string of 15 pixels per character, row by row.
_FONT = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    "A": "010101111101101",
    "B": "110101110101110",
    "E": "111100110100111",
    "F": "111100110100100",
    "H": "101101111101101",
    "K": "101101110101101",
    "O": "111101101101111",
    "R": "110101110101101",
    "S": "011100010001110",
    "C": "011100100100011",
    "T": "111010010010010",
    "Z": "111001010100111",
    ".": "000000000000010",
    " ": "000000000000000",
}
_GLYPH_SCALE = 2
_GLYPH_W = 3 * _GLYPH_SCALE
_GLYPH_H = 5 * _GLYPH_SCALE
_GLYPH_ADVANCE = _GLYPH_W + _GLYPH_SCALE

# Layout, in pixels.
_LEFT = 44
_RIGHT = 10
_TITLE = 18
_BOTTOM = 22
_GAP = 4
_BIN_HEIGHT = 2  # each frequency bin is drawn this many pixels high


def _frame_count(n_samples: int, nfft: int, hop: int) -> int:
    return 1 + max(0, n_samples - nfft + hop - 1) // hop


def spectrogram_db(
    samples: npt.ArrayLike,
    *,
    nfft: int = NFFT,
    hop: int = HOP,
    group: int | None = None,
    max_columns: int = MAX_COLUMNS,
) -> FloatArray:
    """Power spectrogram in dB, shape ``(nfft // 2 + 1, columns)``, low frequencies first.

    Each column is the element-wise maximum over ``group`` consecutive frames; by default
    ``group`` is chosen so there are at most ``max_columns`` columns.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {x.shape}")
    frames = _frame_count(len(x), nfft, hop)
    if group is None:
        group = max(1, math.ceil(frames / max_columns))
    columns = math.ceil(frames / group)
    # Pad so every frame of every group is complete (zeros past the end).
    padded = np.zeros((columns * group - 1) * hop + nfft, dtype=np.float64)
    padded[: len(x)] = x
    window = np.hanning(nfft + 1)[:nfft]  # periodic Hann
    out = np.empty((nfft // 2 + 1, columns), dtype=np.float64)
    offsets = np.arange(nfft)
    cols_per_block = max(1, 4096 // group)
    for c0 in range(0, columns, cols_per_block):
        c1 = min(columns, c0 + cols_per_block)
        starts = np.arange(c0 * group, c1 * group) * hop
        block = padded[starts[:, None] + offsets[None, :]] * window
        power = np.abs(np.fft.rfft(block, axis=1)) ** 2
        out[:, c0:c1] = power.reshape(c1 - c0, group, -1).max(axis=1).T
    db: FloatArray = 10.0 * np.log10(out + 1e-3)
    return db


def colormap(values: FloatArray) -> RGBImage:
    """Values in 0..1 to RGB (shape ``values.shape + (3,)``)."""
    v = np.clip(values, 0.0, 1.0)
    pos = [a[0] for a in _CMAP_ANCHORS]
    rgb = np.empty((*v.shape, 3), dtype=np.uint8)
    for ch in range(3):
        level = [float(a[ch + 1]) for a in _CMAP_ANCHORS]
        rgb[..., ch] = np.rint(np.interp(v, pos, level)).astype(np.uint8)
    return rgb


def _draw_text(img: RGBImage, x: int, y: int, text: str, color: tuple[int, int, int]) -> None:
    """Draw ``text`` with its top-left corner at (x, y), clipped to the image."""
    h, w = img.shape[:2]
    for i, ch in enumerate(text.upper()):
        bits = _FONT.get(ch, _FONT[" "])
        gx = x + i * _GLYPH_ADVANCE
        for k, bit in enumerate(bits):
            if bit != "1":
                continue
            py = y + (k // 3) * _GLYPH_SCALE
            px = gx + (k % 3) * _GLYPH_SCALE
            if py >= 0 and py + _GLYPH_SCALE <= h and px >= 0 and px + _GLYPH_SCALE <= w:
                img[py : py + _GLYPH_SCALE, px : px + _GLYPH_SCALE] = color


def _text_width(text: str) -> int:
    return len(text) * _GLYPH_ADVANCE - _GLYPH_SCALE


def _time_step(duration_s: float, width_px: int) -> float:
    """A 1-2-5 tick spacing giving labels at least ~60 px apart."""
    if duration_s <= 0:
        return 1.0
    min_step = duration_s * 60.0 / max(width_px, 1)
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if step >= min_step:
            return float(step)
    return 7200.0


def render_before_after(
    before: npt.ArrayLike,
    after: npt.ArrayLike,
    sample_rate: int = 8000,
    *,
    max_columns: int = MAX_COLUMNS,
) -> RGBImage:
    """The before/after figure as an RGB array (height, width, 3)."""
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    n = max(len(b), len(a), 1)
    frames = _frame_count(n, NFFT, HOP)
    group = max(1, math.ceil(frames / max_columns))
    spec_b = spectrogram_db(b, group=group)
    spec_a = spectrogram_db(a, group=group)
    # Short recordings: widen each column so the figure stays readable.
    stretch = max(1, math.ceil(MIN_COLUMNS / max(spec_b.shape[1], spec_a.shape[1])))
    spec_b = np.repeat(spec_b, stretch, axis=1)
    spec_a = np.repeat(spec_a, stretch, axis=1)
    columns = max(spec_b.shape[1], spec_a.shape[1])
    top = max(float(spec_b.max()), float(spec_a.max()))
    floor = top - DYNAMIC_RANGE_DB

    bins = NFFT // 2 + 1
    panel_h = bins * _BIN_HEIGHT
    width = _LEFT + columns + _RIGHT
    height = 2 * (_TITLE + panel_h) + _GAP + _BOTTOM
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = _BACKGROUND
    hz_per_px = sample_rate / 2 / panel_h

    panels = (("before", spec_b), ("after", spec_a))
    for i, (title, spec) in enumerate(panels):
        y0 = i * (_TITLE + panel_h + _GAP) + _TITLE
        if i:
            img[y0 - _TITLE - _GAP // 2 - 1 : y0 - _TITLE - _GAP // 2 + 1, :] = _SEPARATOR
        _draw_text(img, _LEFT, y0 - _GLYPH_H - 4, title, _INK)
        scaled = (spec - floor) / DYNAMIC_RANGE_DB
        rgb = colormap(scaled[::-1])  # high frequencies at the top
        rgb = np.repeat(rgb, _BIN_HEIGHT, axis=0)
        img[y0 : y0 + panel_h, _LEFT : _LEFT + spec.shape[1]] = rgb
        # kHz scale on the left.
        for khz in range(0, sample_rate // 2000 + 1):
            row = y0 + panel_h - 1 - round(khz * 1000 / hz_per_px)
            row = min(max(row, y0), y0 + panel_h - 1)
            img[row, _LEFT - 4 : _LEFT] = _INK
            label = str(khz)
            ty = min(max(row - _GLYPH_H // 2, y0), y0 + panel_h - _GLYPH_H)
            _draw_text(img, _LEFT - 8 - _text_width(label), ty, label, _INK)
        _draw_text(img, 2, y0, "KHZ", _INK)
        # DTMF frequencies on both edges.
        for freqs, color in ((ROW_FREQS, _LOW_GROUP), (COL_FREQS, _HIGH_GROUP)):
            for f in freqs:
                row = y0 + panel_h - 1 - round(f / hz_per_px)
                img[row, _LEFT - 12 : _LEFT - 5] = color
                img[row, _LEFT + columns + 1 : _LEFT + columns + 8] = color

    # Seconds along the bottom.
    _draw_text(img, 2, height - _BOTTOM + 7, "SEC", _INK)
    duration = n / sample_rate
    seconds_per_col = group * HOP / sample_rate / stretch
    step = _time_step(duration, columns)
    y_axis = height - _BOTTOM
    for k in range(int(duration / step + 1e-9) + 1):
        t = k * step
        x = _LEFT + round(t / seconds_per_col)
        if x < _LEFT + columns:
            img[y_axis : y_axis + 4, x] = _INK
            label = f"{t:.1f}" if step < 1 else f"{round(t)}"
            _draw_text(img, x - _text_width(label) // 2, y_axis + 7, label, _INK)
    return img


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def encode_png(rgb: RGBImage) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (height, width, 3), rows filtered with Up (type 2)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (height, width, 3) array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    rows = rgb.reshape(height, width * 3)
    above = np.zeros_like(rows)
    above[1:] = rows[:-1]
    filtered = rows - above  # uint8 arithmetic wraps modulo 256, as PNG requires
    raw = np.hstack([np.full((height, 1), 2, dtype=np.uint8), filtered]).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def write_spectrogram_png(
    path: str | PathLike[str],
    before: npt.ArrayLike,
    after: npt.ArrayLike,
    sample_rate: int = 8000,
) -> None:
    """Write the before/after spectrogram figure of two recordings to ``path``."""
    Path(path).write_bytes(encode_png(render_before_after(before, after, sample_rate)))
