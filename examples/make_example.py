"""Build examples/card_call.wav: the caller's side of a card payment call.

About 29 s of 8 kHz G.711 µ-law: espeak-ng speech (resampled from 22.05 kHz with a
windowed-sinc anti-alias filter), then a card typed on the keypad as DTMF: the 16-digit
test PAN 4111111111111111, a pause, the expiry 1229, a pause, the CVV 123. Key presses are
at -6..-12 dBm0 (low group), 60-120 ms on and 80-200 ms off (longer between groups of
four), with a little twist and frequency error; someone talks in the background under part
of the card number, and there is faint line noise throughout. Everything random is seeded.

The ground truth (digits and their times) is printed here and nowhere else.

    python examples/make_example.py [--out examples/card_call.wav] [--seed 1229]

Needs espeak-ng (Debian package espeak-ng) on PATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dtmfmask.tones import SAMPLE_RATE, dtmf_tone, power_to_dbm0
from dtmfmask.wav import write_wav

Signal = npt.NDArray[np.float64]

PAN = "4111111111111111"  # the well-known Visa test number
EXPIRY = "1229"
CVV = "123"

SPEECH_LEVEL_DBM0 = -20.0  # active speech level of the caller
BACKGROUND_LEVEL_DBM0 = -33.0  # someone talking across the room
NOISE_LEVEL_DBM0 = -62.0  # line noise


def espeak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> Signal:
    """Speak ``text`` with espeak-ng and return it at 8 kHz (float, 16-bit units)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
            check=True,
            capture_output=True,
        )
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise RuntimeError("espeak-ng wrote something other than 16-bit mono")
            rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    return resample(raw, rate, SAMPLE_RATE)


def resample(x: Signal, rate_in: int, rate_out: int, half_width: int = 64) -> Signal:
    """Band-limited resampling: Blackman-windowed sinc, cut-off at 0.45 * rate_out.

    ``half_width`` is in input samples; the filter's stop band starts below the output
    Nyquist frequency, so nothing above 4 kHz folds back into the telephone band.
    """
    cutoff = 0.45 * rate_out / rate_in  # cycles per input sample
    n_out = int(len(x) * rate_out / rate_in)
    padded = np.concatenate([np.zeros(half_width), x, np.zeros(half_width + 1)])
    out = np.empty(n_out)
    k = np.arange(-half_width + 1, half_width + 1)
    for start in range(0, n_out, 4096):
        n = np.arange(start, min(n_out, start + 4096))
        t = n * rate_in / rate_out  # position in input samples
        base = np.floor(t).astype(np.int64)
        idx = base[:, None] + k[None, :]
        tau = t[:, None] - idx  # distance from each tap, in input samples
        window = (
            0.42
            + 0.5 * np.cos(np.pi * tau / half_width)
            + 0.08 * np.cos(2 * np.pi * tau / half_width)
        )
        h = 2 * cutoff * np.sinc(2 * cutoff * tau) * window
        out[n] = (padded[idx + half_width] * h).sum(axis=1)
    return out


def set_level(x: Signal, level_dbm0: float) -> Signal:
    """Scale ``x`` so its active part (samples above -30 dB of peak) is at ``level_dbm0``."""
    active = x[np.abs(x) > np.abs(x).max() * 10 ** (-30 / 20)]
    gain = 10 ** ((level_dbm0 - power_to_dbm0(float(np.mean(active**2)))) / 20)
    return x * gain


def key_press(digit: str, n: int, level: float, twist: float, rng: np.random.Generator) -> Signal:
    """One DTMF key: a tone with a slight frequency error and 2 ms raised-cosine edges."""
    tone = dtmf_tone(
        digit,
        n,
        level,
        twist_db=twist,
        row_offset=rng.uniform(-0.006, 0.006),
        col_offset=rng.uniform(-0.006, 0.006),
    )
    ramp = int(0.002 * SAMPLE_RATE)
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    tone[:ramp] *= edge
    tone[-ramp:] *= edge[::-1]
    return tone


def build(seed: int) -> tuple[Signal, list[tuple[str, int, int, float, float]]]:
    rng = np.random.default_rng(seed)
    parts: list[Signal] = []
    truth: list[tuple[str, int, int, float, float]] = []

    def pos() -> int:  # samples so far
        return sum(len(p) for p in parts)

    def gap(seconds: float) -> None:
        parts.append(np.zeros(int(seconds * SAMPLE_RATE)))

    def say(text: str, speed: int = 160) -> None:
        parts.append(set_level(espeak(text, speed=speed), SPEECH_LEVEL_DBM0))

    def type_digits(digits: str, group: int = 0) -> None:
        for i, d in enumerate(digits):
            if i and group and i % group == 0:
                gap(rng.uniform(0.35, 0.6))  # finding the next group on the card
            on = int(rng.uniform(0.060, 0.120) * SAMPLE_RATE)
            level = rng.uniform(-12.0, -6.0)
            twist = rng.uniform(-2.5, 2.0)
            start = pos()
            parts.append(key_press(d, on, level, twist, rng))
            truth.append((d, start, start + on, level, twist))
            gap(rng.uniform(0.080, 0.200))

    gap(0.4)
    say("Hello? Yes, hi. I'd like to pay the balance on my account, please.")
    gap(1.0)  # the agent explains the secure payment
    say("Okay, no problem. I'll type the card number in now.")
    gap(0.7)
    talk_at = pos() + int(1.2 * SAMPLE_RATE)  # background talk starts under the 5th key
    type_digits(PAN, group=4)
    gap(1.2)
    say("And the expiry date?", speed=170)
    gap(0.6)
    type_digits(EXPIRY)
    gap(1.0)
    say("Then the three numbers on the back.", speed=165)
    gap(0.5)
    type_digits(CVV)
    gap(0.9)
    say("Done. Did that go through all right?")
    gap(0.5)

    x = np.concatenate(parts)
    # Someone across the room, under the middle of the card number.
    talk = set_level(
        espeak("Can you turn that down please? I am on the phone.", voice="en-gb+f3", speed=150),
        BACKGROUND_LEVEL_DBM0,
    )
    end = min(len(x), talk_at + len(talk))
    x[talk_at:end] += talk[: end - talk_at]
    # Line noise: white noise through a gentle low-pass, at a fixed level.
    noise = rng.normal(0.0, 1.0, len(x))
    noise = np.convolve(noise, np.ones(3) / 3, mode="same")
    x += set_level(noise, NOISE_LEVEL_DBM0)
    return x, truth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("card_call.wav")))
    parser.add_argument("--seed", type=int, default=1229)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        print("make_example: espeak-ng not found (apt-get install espeak-ng)", file=sys.stderr)
        return 1
    x, truth = build(args.seed)
    peak = float(np.abs(x).max())
    if peak > 32767:
        raise SystemExit(f"make_example: clipping (peak {peak:.0f}); lower the levels")
    write_wav(args.out, x, "ulaw")
    print(f"wrote {args.out}: {len(x) / SAMPLE_RATE:.2f} s, 8 kHz µ-law, {len(truth)} key presses")
    print(f"ground truth: {PAN} {EXPIRY} {CVV}")
    print("digit  start_ms    end_ms  level_dBm0  twist_dB")
    for d, start, stop, level, twist in truth:
        ms = 1000 / SAMPLE_RATE
        print(f"{d:>5} {start * ms:9.1f} {stop * ms:9.1f} {level:11.1f} {twist:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
