"""ITU-T G.711 µ-law and A-law, as lookup tables over numpy arrays.

Bit-exact with the reference algorithm in Sun's public-domain ``g711.c`` that CPython's
``audioop`` ships (``lin2ulaw``/``ulaw2lin``/``lin2alaw``/``alaw2lin`` at width 2): µ-law
works on the top 14 bits of a 16-bit sample, A-law on the top 13, and both decoders return
16-bit values. The tables are built once, vectorised, at import; coding a frame is then a
single fancy-indexing pass, which is what lets one numpy call serve a batch of streams.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]

Pcm = npt.NDArray[np.int16]
Codes = npt.NDArray[np.uint8]

# Upper bound of each of the eight segments (chords), in the scaled magnitude domain.
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # 14-bit magnitude ceiling of the reference coder


def _all_int16() -> npt.NDArray[np.int32]:
    # Ordered so that position i holds the sample whose uint16 view equals i: the encode
    # tables can then be indexed with ``pcm.view(np.uint16)`` and no sign handling.
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> Codes:
    pcm = _all_int16() >> 2
    negative = pcm < 0
    mag = np.minimum(np.where(negative, -pcm, pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag, side="left").astype(np.int32)
    # The clipped magnitude plus bias lands one past segment 7; the reference then emits
    # the loudest code (0x7F before the sign mask), not a wrapped segment number.
    uval = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> (seg + 1)) & 0xF))
    mask = np.where(negative, 0x7F, 0xFF)
    return (uval ^ mask).astype(np.uint8)


def _build_ulaw_decode() -> Pcm:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> Codes:
    pcm = _all_int16() >> 3
    negative = pcm < 0
    # One's-complement magnitude: A-law has no code for -0, so -1 maps beside +0.
    mag = np.where(negative, -pcm - 1, pcm)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left").astype(np.int32)
    quant = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F
    aval = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | quant)
    mask = np.where(negative, 0x55, 0xD5)
    return (aval ^ mask).astype(np.uint8)


def _build_alaw_decode() -> Pcm:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_ENCODE = _build_ulaw_encode()
_ULAW_DECODE = _build_ulaw_decode()
_ALAW_ENCODE = _build_alaw_encode()
_ALAW_DECODE = _build_alaw_decode()
for _table in (_ULAW_ENCODE, _ULAW_DECODE, _ALAW_ENCODE, _ALAW_DECODE):
    _table.flags.writeable = False  # shared by every caller: a stray write would corrupt all calls


def _as_int16(pcm: npt.ArrayLike) -> Pcm:
    arr = np.asarray(pcm)
    if arr.dtype == np.int16:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.rint(arr)
    # Clip before the cast: a cast alone would wrap a loud sample around to the other sign.
    out: Pcm = np.clip(arr, -32768, 32767).astype(np.int16)
    return out


def _as_codes(codes: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    if isinstance(codes, bytes | bytearray | memoryview):
        return np.frombuffer(codes, dtype=np.uint8)
    arr = np.asarray(codes)
    if arr.dtype == np.uint8:
        return arr
    if np.any((arr < 0) | (arr > 255)):
        raise ValueError("G.711 codes must be in 0..255")
    return arr.astype(np.uint8)


def ulaw_encode(pcm: npt.ArrayLike) -> Codes:
    """16-bit linear PCM (any shape; floats are rounded and clipped) to µ-law codes."""
    return _ULAW_ENCODE[_as_int16(pcm).view(np.uint16)]


def ulaw_decode(codes: npt.ArrayLike) -> Pcm:
    """µ-law codes (array or ``bytes`` payload) to 16-bit linear PCM."""
    return _ULAW_DECODE[_as_codes(codes)]


def alaw_encode(pcm: npt.ArrayLike) -> Codes:
    """16-bit linear PCM (any shape; floats are rounded and clipped) to A-law codes."""
    return _ALAW_ENCODE[_as_int16(pcm).view(np.uint16)]


def alaw_decode(codes: npt.ArrayLike) -> Pcm:
    """A-law codes (array or ``bytes`` payload) to 16-bit linear PCM."""
    return _ALAW_DECODE[_as_codes(codes)]
