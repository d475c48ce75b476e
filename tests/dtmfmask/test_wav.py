"""dtmfmask.wav: RIFF parsing and writing for 8 kHz mono PCM16, µ-law and A-law."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dtmfmask import g711
from dtmfmask.wav import (
    ENCODINGS,
    WavError,
    encode_wav,
    parse_wav,
    read_wav,
    to_int16,
    write_wav,
)

# --- building arbitrary RIFF files -------------------------------------------------------------


def chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def fmt_body(tag=1, channels=1, rate=8000, bits=16, extra=b""):
    block = channels * max(bits // 8, 1)
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits) + extra


def riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm_bytes(n: int = 80) -> bytes:
    return np.arange(n, dtype="<i2").tobytes()


# --- round trips --------------------------------------------------------------------------------

int16_arrays = hnp.arrays(np.int16, st.integers(1, 400))


@settings(max_examples=60, deadline=None)
@given(int16_arrays)
def test_pcm16_round_trip_is_exact(samples):
    audio = parse_wav(encode_wav(samples, "pcm16"))
    assert audio.encoding == "pcm16"
    assert audio.sample_rate == 8000
    assert audio.samples.dtype == np.int16
    np.testing.assert_array_equal(audio.samples, samples)


@settings(max_examples=60, deadline=None)
@given(int16_arrays, st.sampled_from(["ulaw", "alaw"]))
def test_g711_round_trip_equals_the_codec(samples, encoding):
    audio = parse_wav(encode_wav(samples, encoding))
    encode = g711.ulaw_encode if encoding == "ulaw" else g711.alaw_encode
    decode = g711.ulaw_decode if encoding == "ulaw" else g711.alaw_decode
    assert audio.encoding == encoding
    np.testing.assert_array_equal(audio.samples, decode(encode(samples)))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_g711_code_survives_a_file_round_trip(tmp_path: Path, encoding):
    decode = g711.alaw_decode if encoding == "alaw" else g711.ulaw_decode
    values = decode(np.arange(256, dtype=np.uint8))  # exactly representable in any encoding
    path = tmp_path / f"x_{encoding}.wav"
    write_wav(path, values, encoding)
    audio = read_wav(path)
    assert audio.encoding == encoding
    np.testing.assert_array_equal(audio.samples, values)


@pytest.mark.parametrize(("encoding", "tag"), [("ulaw", 7), ("alaw", 6)])
def test_g711_files_have_cbsize_and_a_fact_chunk(encoding, tag):
    data = encode_wav(np.zeros(123, dtype=np.int16), encoding)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    assert data[12:16] == b"fmt " and struct.unpack_from("<I", data, 16)[0] == 18
    assert struct.unpack_from("<HHIIHHH", data, 20) == (tag, 1, 8000, 8000, 1, 8, 0)
    assert data[38:42] == b"fact" and struct.unpack_from("<II", data, 42) == (4, 123)
    assert data[50:54] == b"data" and struct.unpack_from("<I", data, 54)[0] == 123
    # 123 data bytes are odd: one pad byte follows, and the RIFF size covers it.
    assert len(data) == 58 + 123 + 1


def test_pcm16_file_is_readable_by_the_stdlib(tmp_path: Path):
    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    path = tmp_path / "x.wav"
    write_wav(path, samples)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        got = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    np.testing.assert_array_equal(got, samples)


def test_reads_a_stdlib_written_pcm16_file(tmp_path: Path):
    path = tmp_path / "x.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm_bytes(100))
    np.testing.assert_array_equal(read_wav(path).samples, np.arange(100))


def test_float_samples_are_rounded_and_clipped():
    got = to_int16(np.array([0.4, 0.6, -0.6, 1e6, -1e6]))
    np.testing.assert_array_equal(got, [0, 1, -1, 32767, -32768])
    with pytest.raises(ValueError, match="mono"):
        to_int16(np.zeros((2, 10)))


def test_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="unknown encoding"):
        encode_wav(np.zeros(4), "gsm")  # type: ignore[arg-type]


# --- tolerated variations -----------------------------------------------------------------------


def test_unknown_and_odd_sized_chunks_are_skipped():
    data = riff(
        chunk(b"JUNK", b"abc"),  # odd size: a pad byte follows
        chunk(b"fmt ", fmt_body()),
        chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00test\x00"),
        chunk(b"data", pcm_bytes(10)),
        chunk(b"id3 ", b"x"),
    )
    np.testing.assert_array_equal(parse_wav(data).samples, np.arange(10))


def test_wave_format_extensible_with_pcm_subformat():
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    extra = struct.pack("<HHI", 22, 16, 4) + struct.pack("<H", 1) + guid_tail
    data = riff(chunk(b"fmt ", fmt_body(tag=0xFFFE, extra=extra)), chunk(b"data", pcm_bytes(8)))
    audio = parse_wav(data)
    assert audio.encoding == "pcm16"
    np.testing.assert_array_equal(audio.samples, np.arange(8))


def test_streaming_placeholder_size_reads_to_end_of_file():
    payload = pcm_bytes(20)
    data = riff(chunk(b"fmt ", fmt_body())) + b"data" + struct.pack("<I", 0xFFFFFFFF) + payload
    np.testing.assert_array_equal(parse_wav(data).samples, np.arange(20))


# --- refusals: one line each, naming the problem ------------------------------------------------

BAD_FILES = {
    "not RIFF": (b"ID3\x03" + bytes(100), "not a WAV file"),
    "zero bytes": (b"", "empty file"),
    "RIFX": (b"RIFX" + bytes(4) + b"WAVE", "big-endian"),
    "stereo": (
        riff(chunk(b"fmt ", fmt_body(channels=2)), chunk(b"data", pcm_bytes())),
        "2 channels (stereo)",
    ),
    "44.1 kHz": (
        riff(chunk(b"fmt ", fmt_body(rate=44100)), chunk(b"data", pcm_bytes())),
        "44100 Hz: dtmfmask needs 8000 Hz mono",
    ),
    "8-bit PCM": (riff(chunk(b"fmt ", fmt_body(bits=8)), chunk(b"data", bytes(80))), "8-bit PCM"),
    "24-bit PCM": (
        riff(chunk(b"fmt ", fmt_body(bits=24)), chunk(b"data", bytes(90))),
        "24-bit PCM",
    ),
    "float": (
        riff(chunk(b"fmt ", fmt_body(tag=3, bits=32)), chunk(b"data", bytes(80))),
        "unsupported format tag 3 (IEEE float)",
    ),
    "16-bit µ-law": (
        riff(chunk(b"fmt ", fmt_body(tag=7, bits=16)), chunk(b"data", bytes(80))),
        "16-bit µ-law",
    ),
    "empty data": (riff(chunk(b"fmt ", fmt_body()), chunk(b"data", b"")), "empty"),
    "no data chunk": (riff(chunk(b"fmt ", fmt_body())), "no data chunk"),
    "no fmt chunk": (riff(chunk(b"LIST", b"abcd")), "no fmt chunk"),
    "data before fmt": (riff(chunk(b"data", pcm_bytes()), chunk(b"fmt ", fmt_body())), "before"),
    "short fmt": (
        riff(chunk(b"fmt ", b"\x01\x00\x01\x00"), chunk(b"data", pcm_bytes())),
        "fmt chunk is 4 bytes",
    ),
    "odd PCM data": (riff(chunk(b"fmt ", fmt_body()), chunk(b"data", bytes(81))), "odd length"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_raise_one_line_wav_error(name):
    data, expected = BAD_FILES[name]
    with pytest.raises(WavError) as info:
        parse_wav(data)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_truncated_data_says_how_many_bytes_are_missing():
    full = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", pcm_bytes(1000)))
    with pytest.raises(WavError, match=r"declares 2000 bytes but only 1500 .*\(500 missing\)"):
        parse_wav(full[:-500])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 300))
def test_garbage_and_truncation_only_ever_raise_wav_error(junk, cut):
    good = encode_wav(np.arange(100, dtype=np.int16), "ulaw")
    for data in (junk, b"RIFF" + junk, good[:cut], good[:cut] + junk):
        try:
            audio = parse_wav(data)
        except WavError as exc:
            assert "\n" not in str(exc)
        else:
            assert audio.samples.dtype == np.int16
