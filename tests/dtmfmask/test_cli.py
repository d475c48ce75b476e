"""The dtmfmask command: run as ``python -m dtmfmask`` in a subprocess, plus in-process units."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from dtmfmask import cli
from dtmfmask.events import DigitEnded, DigitStarted
from dtmfmask.tones import dtmf_tone
from dtmfmask.wav import read_wav, write_wav

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "card_call.wav"
# The bundled example's ground truth (printed by examples/make_example.py): test PAN, expiry, CVV.
EXAMPLE_DIGITS = "4111111111111111" + "1229" + "123"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "dtmfmask", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dtmfmask: error: ")
    for text in expected:
        assert text in lines[0]
    assert result.stdout == ""


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def wav_bytes(tag=1, channels=1, rate=8000, bits=16, data=b"\0\0" * 800) -> bytes:
    block = channels * max(bits // 8, 1)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + chunk(b"fmt ", fmt) + chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def truncated() -> bytes:
    return wav_bytes(data=b"\1\0" * 4000)[:-3000]


MALFORMED = {
    "stereo": (wav_bytes(channels=2), "2 channels"),
    "44.1 kHz": (wav_bytes(rate=44100), "44100 Hz"),
    "8-bit": (wav_bytes(bits=8, data=b"\x80" * 800), "8-bit PCM"),
    "not a WAV": (b"%PDF-1.4\n" + bytes(200), "not a WAV file"),
    "truncated": (truncated(), "3000 missing"),
    "empty": (wav_bytes(data=b""), "empty"),
}


@pytest.fixture(scope="module")
def keypad_wavs(tmp_path_factory) -> dict[str, Path]:
    """Two seconds with the keys 5, 0, # in each encoding."""
    x = np.zeros(16000)
    for i, d in enumerate("50#"):
        x[2000 + i * 2400 : 2000 + i * 2400 + 640] += dtmf_tone(d, 640, -9.0)
    folder = tmp_path_factory.mktemp("keypad")
    paths = {}
    for encoding in ("pcm16", "ulaw", "alaw"):
        paths[encoding] = folder / f"keys_{encoding}.wav"
        write_wav(paths[encoding], x, encoding)
    return paths


# --- errors: one line on stderr, exit status 2 ----------------------------------------------


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_input_to_detect(tmp_path: Path, name):
    data, expected = MALFORMED[name]
    path = tmp_path / "in.wav"
    path.write_bytes(data)
    assert_one_line_error(run("detect", path), str(path), expected)


@pytest.mark.parametrize("name", ["stereo", "truncated"])
def test_malformed_input_to_mask_writes_nothing(tmp_path: Path, name):
    data, expected = MALFORMED[name]
    path = tmp_path / "in.wav"
    path.write_bytes(data)
    out = tmp_path / "out.wav"
    assert_one_line_error(run("mask", path, out), expected)
    assert not out.exists()


def test_missing_input(tmp_path: Path):
    assert_one_line_error(run("detect", tmp_path / "nope.wav"), "no such file")


def test_directory_as_input(tmp_path: Path):
    assert_one_line_error(run("detect", tmp_path), "is a directory")


def test_unwritable_output(tmp_path: Path, keypad_wavs):
    out = tmp_path / "no" / "such" / "dir" / "out.wav"
    assert_one_line_error(run("mask", keypad_wavs["pcm16"], out), "cannot write", str(out))


def test_unwritable_plot(tmp_path: Path, keypad_wavs):
    result = run("mask", keypad_wavs["pcm16"], tmp_path / "out.wav", "--plot", tmp_path)
    assert_one_line_error(result, "cannot write", "is a directory")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--lookahead-ms", "-5", "--lookahead-ms"),
        ("--lookahead-ms", "nan", "--lookahead-ms"),
        ("--lookahead-ms", "ten", "not a number"),
        ("--lookahead-ms", "100000", "lookahead"),  # the engine's own limit
        ("--style", "beep", "invalid choice"),
    ],
)
def test_bad_option_values(tmp_path: Path, keypad_wavs, option, value, expected):
    out = tmp_path / "out.wav"
    assert_one_line_error(run("mask", keypad_wavs["pcm16"], out, option, value), expected)
    assert not out.exists()


def test_usage_errors_are_one_line_too():
    assert_one_line_error(run(), "required")
    assert_one_line_error(run("frobnicate"), "invalid choice")


# --- detect and mask ------------------------------------------------------------------------


def test_detect_on_the_bundled_example_finds_the_card_digits():
    result = run("detect", EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    presses = json_lines(result.stdout)
    assert "".join(str(p["digit"]) for p in presses) == EXAMPLE_DIGITS
    for p in presses:
        assert set(p) == {"digit", "start_ms", "end_ms", "source"}
        assert p["source"] == "inband"
        assert 40 <= float(p["end_ms"]) - float(p["start_ms"]) <= 160  # type: ignore[arg-type]
    starts = [float(p["start_ms"]) for p in presses]  # type: ignore[arg-type]
    assert starts == sorted(starts)


@pytest.mark.parametrize("encoding", ["pcm16", "ulaw", "alaw"])
def test_mask_keeps_length_encoding_and_rate(tmp_path: Path, keypad_wavs, encoding):
    out = tmp_path / "out.wav"
    result = run("mask", keypad_wavs[encoding], out)
    assert result.returncode == 0, result.stderr
    before, after = read_wav(keypad_wavs[encoding]), read_wav(out)
    assert after.encoding == encoding
    assert after.sample_rate == 8000
    assert len(after.samples) == len(before.samples)
    # Digits are redacted by default; the timing is still reported.
    presses = json_lines(result.stdout)
    assert [p["digit"] for p in presses] == ["*", "*", "*"]
    if encoding == "pcm16":  # the masked file holds no key press any more
        assert run("detect", out).stdout == ""


def test_mask_on_the_example_with_plot_and_digits(tmp_path: Path):
    out, plot = tmp_path / "masked.wav", tmp_path / "before_after.png"
    result = run("mask", EXAMPLE, out, "--plot", plot, "--show-digits", "--style", "silence")
    assert result.returncode == 0, result.stderr
    presses = json_lines(result.stdout)
    assert "".join(str(p["digit"]) for p in presses) == EXAMPLE_DIGITS
    assert len(read_wav(out).samples) == len(read_wav(EXAMPLE).samples)
    assert run("detect", out).stdout == ""

    png = plot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", png[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", png[16:29])
    assert (depth, color) == (8, 2)
    assert 400 <= width <= 1700 and 200 <= height <= 1200
    assert struct.unpack(">I", png[29:33])[0] == zlib.crc32(png[12:29])
    idat = png[33:]
    size, kind = struct.unpack(">I4s", idat[:8])
    assert kind == b"IDAT"
    assert len(zlib.decompress(idat[8 : 8 + size])) == height * (1 + 3 * width)
    assert png.endswith(b"IEND\xaeB`\x82")


def test_help_documents_the_digit_output(capsys):
    assert cli.main(["--help"]) == 0
    assert cli.main(["mask", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("detect", "mask", "--lookahead-ms", "--style", "--plot", "--show-digits", "JSON"):
        assert word in text


# --- units, with fake events -------------------------------------------------------------------


def test_key_presses_pairs_events_and_closes_open_presses():
    events = [
        DigitStarted(0, "7", 800),
        DigitStarted(0, "3", 8000),
        DigitEnded(0, "7", 800, 1200),
        DigitStarted(0, "#", 16000),
        DigitEnded(0, "3", 8000, 8400),
    ]
    presses = cli.key_presses(events, n_samples=16400, sample_rate=8000)
    assert presses == [
        {"digit": "7", "start_ms": 100.0, "end_ms": 150.0, "source": "inband"},
        {"digit": "3", "start_ms": 1000.0, "end_ms": 1050.0, "source": "inband"},
        {"digit": "#", "start_ms": 2000.0, "end_ms": 2050.0, "source": "inband"},
    ]


def test_mask_command_with_a_fake_engine(tmp_path: Path, monkeypatch, capsys, keypad_wavs):
    import dtmfmask.masker

    seen = {}

    def fake_mask_signal(samples, config=None):
        seen["config"] = config
        return np.zeros(len(samples), dtype=np.int16), [DigitEnded(0, "9", 80, 480)]

    monkeypatch.setattr(dtmfmask.masker, "mask_signal", fake_mask_signal)
    out = tmp_path / "out.wav"
    status = cli.main(["mask", str(keypad_wavs["alaw"]), str(out), "--lookahead-ms", "45"])
    assert status == 0
    assert seen["config"].lookahead_ms == 45.0
    assert capsys.readouterr().out == (
        '{"digit": "*", "start_ms": 10.0, "end_ms": 60.0, "source": "inband"}\n'
    )
    written = read_wav(out)
    assert written.encoding == "alaw"
    assert (np.abs(written.samples) <= 8).all()  # A-law has no zero: silence decodes to ±8
