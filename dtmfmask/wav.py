"""WAV files for the CLI: 8 kHz mono, 16-bit linear PCM, G.711 µ-law or A-law.

The stdlib ``wave`` module reads only linear PCM, so the RIFF chunks are parsed here with
``struct``: ``fmt `` (format tags 1 PCM, 6 A-law, 7 µ-law, and WAVE_FORMAT_EXTENSIBLE
wrapping one of those), ``fact`` (ignored on read, written for G.711), ``data``; anything
else is skipped, honouring the pad byte after odd-sized chunks.

``parse_wav`` / ``encode_wav`` work on bytes; ``read_wav`` / ``write_wav`` are the thin
file wrappers around them. Every refusal is a :class:`WavError` whose message is one line
naming what is wrong with the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from dtmfmask import g711

Encoding = Literal["pcm16", "ulaw", "alaw"]
ENCODINGS: tuple[Encoding, ...] = get_args(Encoding)

SAMPLE_RATE = 8000

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_ALAW = 0x0006
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

_TAG_NAMES = {
    0x0001: "PCM",
    0x0002: "MS ADPCM",
    0x0003: "IEEE float",
    0x0006: "A-law",
    0x0007: "µ-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
}

# A data chunk size some streaming writers leave in place when they cannot seek back.
_UNKNOWN_SIZE = 0xFFFFFFFF


class WavError(ValueError):
    """The file is not a WAV dtmfmask can use; the message says why, in one line."""


@dataclass(frozen=True)
class WavAudio:
    """Decoded audio: int16 samples (linear), the file's encoding and its sample rate."""

    samples: npt.NDArray[np.int16]
    encoding: Encoding
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class _Format:
    tag: int
    channels: int
    sample_rate: int
    block_align: int
    bits: int


def _tag_name(tag: int) -> str:
    name = _TAG_NAMES.get(tag)
    return f"format tag {tag} ({name})" if name else f"format tag {tag}"


def _parse_fmt(body: bytes) -> _Format:
    if len(body) < 16:
        raise WavError(f"fmt chunk is {len(body)} bytes, needs at least 16")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        # cbSize(2) validBits(2) channelMask(4) then a GUID whose first 2 bytes are the tag.
        if len(body) < 40:
            raise WavError(f"WAVE_FORMAT_EXTENSIBLE fmt chunk is {len(body)} bytes, needs 40")
        (tag,) = struct.unpack_from("<H", body, 24)
    return _Format(tag, channels, rate, block_align, bits)


def _encoding_of(fmt: _Format) -> Encoding:
    if fmt.channels != 1:
        kind = {0: "", 2: " (stereo)"}.get(fmt.channels, " (multichannel)")
        raise WavError(f"{fmt.channels} channels{kind}: dtmfmask needs {SAMPLE_RATE} Hz mono")
    if fmt.sample_rate != SAMPLE_RATE:
        raise WavError(f"{fmt.sample_rate} Hz: dtmfmask needs {SAMPLE_RATE} Hz mono")
    if fmt.tag == WAVE_FORMAT_PCM:
        if fmt.bits != 16:
            raise WavError(f"{fmt.bits}-bit PCM: dtmfmask reads 16-bit PCM, µ-law or A-law")
        return "pcm16"
    if fmt.tag in (WAVE_FORMAT_MULAW, WAVE_FORMAT_ALAW):
        if fmt.bits != 8:
            raise WavError(f"{fmt.bits}-bit {_TAG_NAMES[fmt.tag]}: G.711 is 8 bits a sample")
        return "ulaw" if fmt.tag == WAVE_FORMAT_MULAW else "alaw"
    raise WavError(f"unsupported {_tag_name(fmt.tag)}: dtmfmask reads 16-bit PCM, µ-law or A-law")


def parse_wav(data: bytes) -> WavAudio:
    """Decode a whole WAV file held in memory."""
    if not data:
        raise WavError("empty file (0 bytes)")
    if len(data) < 12 or data[0:4] != b"RIFF" or data[8:12] != b"WAVE":
        if data[0:4] == b"RIFX":
            raise WavError("big-endian RIFX file: dtmfmask reads little-endian RIFF/WAVE")
        raise WavError("not a WAV file (no RIFF/WAVE header)")
    fmt: _Format | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body_start = pos + 8
        available = len(data) - body_start
        if chunk_id == b"fmt ":
            if size > available:
                raise WavError(f"truncated: fmt chunk declares {size} bytes, {available} present")
            fmt = _parse_fmt(data[body_start : body_start + size])
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError("data chunk comes before any fmt chunk")
            encoding = _encoding_of(fmt)
            if size == _UNKNOWN_SIZE:
                size = available
            elif size > available:
                raise WavError(
                    f"truncated: data chunk declares {size} bytes but only {available} are"
                    f" present ({size - available} missing)"
                )
            return _decode(data[body_start : body_start + size], encoding)
        pos = body_start + size + (size & 1)
    if fmt is None:
        raise WavError("no fmt chunk: not a usable WAV file")
    raise WavError("no data chunk: the file holds no audio")


def _decode(payload: bytes, encoding: Encoding) -> WavAudio:
    if not payload:
        raise WavError("empty: the data chunk holds no samples")
    samples: npt.NDArray[np.int16]
    if encoding == "pcm16":
        if len(payload) % 2:
            raise WavError(f"truncated: 16-bit data chunk has an odd length ({len(payload)} bytes)")
        samples = np.frombuffer(payload, dtype="<i2").astype(np.int16)
    else:
        codes = np.frombuffer(payload, dtype=np.uint8)
        decode = g711.ulaw_decode if encoding == "ulaw" else g711.alaw_decode
        samples = np.asarray(decode(codes), dtype=np.int16)
    return WavAudio(samples, encoding, SAMPLE_RATE)


def to_int16(samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """Samples in 16-bit linear units (int or float) to int16, rounding and clipping."""
    arr: npt.NDArray[Any] = np.asarray(samples)
    if arr.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.rint(arr)
    out: npt.NDArray[np.int16] = np.clip(arr, -32768, 32767).astype(np.int16)
    return out


def encode_wav(
    samples: npt.ArrayLike, encoding: Encoding = "pcm16", sample_rate: int = SAMPLE_RATE
) -> bytes:
    """A complete WAV file (bytes) holding ``samples`` in ``encoding``."""
    pcm = to_int16(samples)
    n = len(pcm)
    if encoding == "pcm16":
        payload = pcm.astype("<i2").tobytes()
        fmt_body = struct.pack("<HHIIHH", WAVE_FORMAT_PCM, 1, sample_rate, 2 * sample_rate, 2, 16)
        fact = b""
    elif encoding in ("ulaw", "alaw"):
        encode = g711.ulaw_encode if encoding == "ulaw" else g711.alaw_encode
        payload = np.asarray(encode(pcm), dtype=np.uint8).tobytes()
        tag = WAVE_FORMAT_MULAW if encoding == "ulaw" else WAVE_FORMAT_ALAW
        # Non-PCM formats carry cbSize (0 here) in fmt and a fact chunk with the frame count.
        fmt_body = struct.pack("<HHIIHHH", tag, 1, sample_rate, sample_rate, 1, 8, 0)
        fact = b"fact" + struct.pack("<II", 4, n)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    chunks = (
        b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
        + fact
        + b"data" + struct.pack("<I", len(payload)) + payload
        + (b"\x00" if len(payload) & 1 else b"")
    )  # fmt: skip
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def read_wav(path: str | PathLike[str]) -> WavAudio:
    """Read an 8 kHz mono WAV (16-bit PCM, µ-law or A-law). OSError if unreadable."""
    return parse_wav(Path(path).read_bytes())


def write_wav(
    path: str | PathLike[str],
    samples: npt.ArrayLike,
    encoding: Encoding = "pcm16",
    sample_rate: int = SAMPLE_RATE,
) -> None:
    """Write ``samples`` (16-bit linear units) as a mono WAV in ``encoding``."""
    Path(path).write_bytes(encode_wav(samples, encoding, sample_rate))
