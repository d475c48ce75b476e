"""The demo: mask the bundled recording and show that the masked copy leaks no key.

Run with ``scripts/demo`` (or ``.venv/bin/python -m examples.demo``). It reads
``examples/card_call.wav`` (a caller typing a test card on the keypad over some speech),
detects the key presses, writes the masked copy and a before/after spectrogram under
``artifacts/``, then runs the project's adversarial decoder (``tests/leakdecoder.py``) over
both files. Exit status 0 means the masked file gave the decoder nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from dtmfmask.cli import key_presses
from dtmfmask.detector import detect_signal
from dtmfmask.masker import MaskConfig, mask_signal
from dtmfmask.spectrogram import write_spectrogram_png
from dtmfmask.tones import SAMPLE_RATE
from dtmfmask.wav import read_wav, write_wav
from tests.leakdecoder import decode

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recording", nargs="?", default=str(ROOT / "examples" / "card_call.wav"))
    ap.add_argument("--out", default=str(ROOT / "artifacts"))
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    audio = read_wav(args.recording)
    x = audio.samples
    print(f"input    {args.recording}: {x.size / SAMPLE_RATE:.1f} s, {audio.encoding}")

    t0 = time.process_time()
    presses = key_presses(detect_signal(x), x.size, SAMPLE_RATE)
    t_detect = time.process_time() - t0
    digits = "".join(p["digit"] for p in presses)
    print(f"detected {len(presses)} key presses in {t_detect * 1000:.0f} ms CPU: {digits}")
    for p in presses[:3]:
        print(f"         e.g. {p}")

    cfg = MaskConfig()
    t0 = time.process_time()
    masked, _ = mask_signal(x, cfg)
    t_mask = time.process_time() - t0
    masked_path = out_dir / (Path(args.recording).stem + ".masked.wav")
    plot_path = out_dir / (Path(args.recording).stem + ".png")
    write_wav(masked_path, masked, audio.encoding)
    write_spectrogram_png(plot_path, x, masked)
    print(
        f"masked   {masked_path} (look-ahead {cfg.lookahead_ms:g} ms, style {cfg.style}, "
        f"{x.size / SAMPLE_RATE / max(t_mask, 1e-9):.0f}x real time); spectrogram {plot_path}"
    )

    # What an attacker could read: the adversarial decoder on the input and on the output
    # as written to disk (after G.711 coding, as the agent would receive it).
    found_in = decode(x)
    found_out = decode(read_wav(masked_path).samples)
    counted_out = detect_signal(read_wav(masked_path).samples)
    print(f"leak     adversarial decoder finds {len(found_in)} key detections in the input,")
    print(
        f"         {len(found_out)} in the masked file; the Q.24 detector finds {len(counted_out)}"
    )

    inside = np.zeros(x.size, dtype=bool)
    for p in presses:
        a = int(p["start_ms"] * SAMPLE_RATE / 1000)
        b = int(p["end_ms"] * SAMPLE_RATE / 1000)
        inside[max(a - 160, 0) : b + 160] = True
    changed = masked != x
    outside = changed & ~inside
    print(
        f"speech   {100.0 * outside.sum() / max((~inside).sum(), 1):.3f} % of samples outside "
        "key presses were altered"
    )
    if found_out or counted_out:
        print("LEAK: the masked file still holds key presses", file=sys.stderr)
        return 1
    print("ok       the masked file leaks no key press")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
