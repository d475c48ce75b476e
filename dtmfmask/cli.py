"""The ``dtmfmask`` command: find and mask DTMF key presses in WAV recordings.

This is the engine's only file-level adapter: it reads and writes WAV and PNG files, turns
every expected failure (bad file, missing file, unwritable output, bad option) into one
line ``dtmfmask: error: ...`` on stderr with exit status 2, and otherwise calls the
sans-I/O engine (``detector.detect_signal``, ``masker.mask_signal``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from dtmfmask import __version__, detector, masker
from dtmfmask.events import DigitEnded, DigitEvent, DigitStarted
from dtmfmask.wav import WavAudio, WavError, read_wav, write_wav

EXIT_OK = 0
EXIT_ERROR = 2

_DESCRIPTION = """\
Find and mask DTMF key presses in recordings: 8 kHz mono WAV files, 16-bit PCM,
G.711 µ-law or A-law."""

_EPILOG = """\
Key presses are printed one JSON object per line on stdout, e.g.
  {"digit": "5", "start_ms": 1234.5, "end_ms": 1290.0, "source": "inband"}
(times from the start of the file). Any error prints one line "dtmfmask: error: ..."
on stderr and exits with status 2."""

_MASK_EPILOG = """\
The output has the input's encoding and sample rate and exactly its length; it is
time-aligned with the input (the look-ahead delay is compensated). One JSON line per
masked key press goes to stdout, with "digit": "*" unless --show-digits is given, so
card numbers do not end up in job logs by default."""


class CliError(Exception):
    """An expected failure: its message is printed as one line, and the exit status is 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2 via CliError."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')")


def _lookahead_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds >= 0, got {text!r}")
    return value


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="dtmfmask",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )

    detect = commands.add_parser(
        "detect",
        help="print the key presses found in a recording",
        description="Print the DTMF key presses found in FILE, one JSON object per line.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    detect.add_argument("file", metavar="FILE.wav", help="8 kHz mono WAV: PCM16, µ-law or A-law")
    detect.set_defaults(run=_run_detect)

    mask = commands.add_parser(
        "mask",
        help="write a copy of a recording with every key press masked",
        description="Write OUT.wav: IN.wav with every DTMF key press replaced by the mask.",
        epilog=_MASK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mask.add_argument("input", metavar="IN.wav", help="8 kHz mono WAV: PCM16, µ-law or A-law")
    mask.add_argument("output", metavar="OUT.wav", help="masked copy, in the input's encoding")
    mask.add_argument(
        "--lookahead-ms",
        type=_lookahead_ms,
        metavar="N",
        default=masker.MaskConfig().lookahead_ms,
        help="look-ahead delay line in ms; shorter than the detector needs leaks the start"
        " of each key (default: %(default)g)",
    )
    mask.add_argument(
        "--style",
        choices=masker.MASK_STYLES,
        default=masker.MaskConfig().style,
        help="what replaces a key press: one flat tone, silence or comfort noise"
        " (default: %(default)s)",
    )
    mask.add_argument(
        "--plot", metavar="P.png", help="also write a before/after spectrogram to P.png"
    )
    mask.add_argument(
        "--show-digits",
        action="store_true",
        help='print the real digits instead of "*" in the JSON lines',
    )
    mask.set_defaults(run=_run_mask)
    return parser


# --- file access: every OSError becomes a one-line CliError -------------------------------


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file or directory"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return (exc.strerror or str(exc)).lower()


def _read(path: str) -> WavAudio:
    try:
        return read_wav(path)
    except WavError as exc:
        raise CliError(f"{path}: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {_os_reason(exc)}") from None


def _write(path: str, writer: Callable[[str], None]) -> None:
    try:
        writer(path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {_os_reason(exc)}") from None


# --- output -----------------------------------------------------------------------------------


def key_presses(
    events: Sequence[DigitEvent], n_samples: int, sample_rate: int
) -> list[dict[str, Any]]:
    """One record per key press, in time order.

    A press that started but has no end event (the tone runs to the end of the file) ends
    at the last sample.
    """
    ended: dict[tuple[str, int, str], int] = {}
    started: list[tuple[str, int, str]] = []
    for event in events:
        match event:
            case DigitEnded(digit=digit, start=start, end=end, source=source):
                ended[(digit, start, source)] = end
            case DigitStarted(digit=digit, start=start, source=source):
                started.append((digit, start, source))
    presses = {key: end for key, end in ended.items()}
    for key in started:
        presses.setdefault(key, n_samples)
    ms = 1000.0 / sample_rate
    return [
        {
            "digit": digit,
            "start_ms": round(start * ms, 1),
            "end_ms": round(end * ms, 1),
            "source": source,
        }
        for (digit, start, source), end in sorted(presses.items(), key=lambda kv: kv[0][1])
    ]


def _print_presses(presses: list[dict[str, Any]], *, redact: bool = False) -> None:
    for press in presses:
        if redact:
            press = {**press, "digit": "*"}
        print(json.dumps(press), flush=False)
    sys.stdout.flush()


# --- commands ---------------------------------------------------------------------------------


def _run_detect(args: argparse.Namespace) -> int:
    audio = _read(args.file)
    events = detector.detect_signal(audio.samples)
    _print_presses(key_presses(events, len(audio.samples), audio.sample_rate))
    return EXIT_OK


def _run_mask(args: argparse.Namespace) -> int:
    try:
        config = masker.MaskConfig(lookahead_ms=args.lookahead_ms, style=args.style)
    except ValueError as exc:
        # Name the option the way the user typed it.
        message = str(exc).replace("lookahead_ms", "--lookahead-ms")
        raise CliError(f"bad masking option: {message}") from None

    audio = _read(args.input)
    masked, events = masker.mask_signal(audio.samples, config)
    out: npt.NDArray[np.int16] = np.asarray(masked, dtype=np.int16)
    if len(out) != len(audio.samples):
        raise RuntimeError(
            f"engine bug: masked audio has {len(out)} samples, input {len(audio.samples)}"
        )
    _write(args.output, lambda p: write_wav(p, out, audio.encoding, audio.sample_rate))
    if args.plot:
        from dtmfmask.spectrogram import write_spectrogram_png

        _write(
            args.plot,
            lambda p: write_spectrogram_png(p, audio.samples, out, audio.sample_rate),
        )
    presses = key_presses(events, len(audio.samples), audio.sample_rate)
    _print_presses(presses, redact=not args.show_digits)
    return EXIT_OK


# --- entry point ------------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"dtmfmask: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 2 error)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except CliError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except BrokenPipeError:
        # Reader went away (e.g. `dtmfmask detect x.wav | head -1`); stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
