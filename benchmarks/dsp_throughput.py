"""DSP throughput of the DTMF engine: audio-seconds processed per CPU-second.

Run: python benchmarks/dsp_throughput.py [--streams 1,100,1000,10000] [--seconds S]
                                         [--json] [--quick]

Two modes, each at every stream count:

* ``detect``      -- ``DtmfDetector.process`` only;
* ``detect+mask`` -- ``MaskingEngine.process`` (detector + look-ahead delay line + masking).

Every tick feeds every stream its next 20 ms frame (160 samples of 16-bit linear PCM at
8 kHz), all streams in one ``process`` call (batched), as the proxy does at load. Frames come
from a precomputed pool of continuous, varied audio: speech-like noise at about -20 dBm0,
silence and DTMF key presses (about 2 % of frames); each stream starts at its own offset in
the pool and moves through it one frame per tick, so streams differ and each one hears
continuous audio. Assembling each tick's batch (one gather from the pool) is inside the timed
loop, since the proxy must do it too; it is under 1 % of the cost.

CPU time is ``time.process_time()`` (all threads of this process), after a warm-up, over
enough ticks to take about ``--seconds`` of CPU; the figure is the best of 3 repeats. One
BLAS thread is forced (unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS are already set), so
the figure is per core. Results depend on the machine and on numpy's BLAS: both are printed.

Memory per stream is measured two ways (printed and in the JSON):

* ``bytes_per_stream``: tracemalloc peak while constructing an engine of capacity N, adding
  N streams and processing one tick for all of them, divided by N -- the engine's state
  plus its per-tick working arrays (fixed costs dominate at small N);
* ``state_bytes_per_stream``: sum of ``nbytes`` of the engine's per-stream numpy state
  arrays (rows = capacity), divided by the capacity.

The goal (DESIGN.md "Targets") is at least 20,000 audio-seconds per CPU-second at 1,000
batched streams; the script reports whether this run met it but asserts nothing and exits 0.
"""

from __future__ import annotations

import os

# One BLAS thread, so that CPU-seconds are one core's; must precede the numpy import.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dtmfmask.detector import DtmfDetector  # noqa: E402
from dtmfmask.events import DigitEvent, DigitStarted  # noqa: E402
from dtmfmask.masker import MaskingEngine  # noqa: E402
from dtmfmask.tones import DIGITS, SAMPLE_RATE, dbm0_to_amplitude, dtmf_tone  # noqa: E402

FRAME = 160  # 20 ms at 8 kHz
FRAME_S = FRAME / SAMPLE_RATE
GOAL = 20_000.0  # audio-s per CPU-s at 1,000 batched streams (DESIGN.md "Targets")
GOAL_STREAMS = 1000
MODES = ("detect", "detect+mask")
REPEATS = 3


# --- test signal ----------------------------------------------------------------------------
def _rms_for_dbm0(level_dbm0: float) -> float:
    """RMS (16-bit units) of a signal at ``level_dbm0``; a sine of peak A has RMS A/sqrt(2)."""
    return float(dbm0_to_amplitude(level_dbm0) / np.sqrt(2.0))


def _speech_like(n: int, rng: np.random.Generator, level_dbm0: float) -> np.ndarray:
    """Noise with a speech-like spectrum (voiced hump 200-1000 Hz, -6 dB/oct above) under a
    syllabic (3-6 Hz) envelope; active level about ``level_dbm0``."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    shape = (f / 200.0) ** 2 / (1.0 + (f / 200.0) ** 2)  # high-pass near 200 Hz
    shape /= np.sqrt(1.0 + (f / 800.0) ** 2)  # roll off above 800 Hz
    shape[f > 3400.0] = 0.0
    x = np.fft.irfft(spec * shape, n)
    t = np.arange(n) / SAMPLE_RATE
    rate = rng.uniform(3.0, 6.0)
    env = np.maximum(np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0.0) ** 1.5
    env *= 1.0 + 0.5 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
    x *= env
    active = x[env > 0.2]
    rms = float(np.sqrt(np.mean(active**2))) if active.size else 1.0
    return x * (_rms_for_dbm0(level_dbm0) / max(rms, 1e-9))


def make_pool(
    n_frames: int = 3000, seed: int = 20, dtmf_share: float = 0.02
) -> tuple[np.ndarray, int]:
    """A continuous signal of ``n_frames`` 20 ms frames, shape (n_frames, 160), int16.

    Alternates talk spurts (0.8-3 s of speech-like noise, -26 to -14 dBm0) with pauses
    (0.2-1 s of silence: digital zero or a faint noise floor). About 2 % of the frames hold
    DTMF: key presses of 60-120 ms at -20 to -4 dBm0, each in a pause of its own. Returns the
    pool and the number of key presses in it.
    """
    rng = np.random.default_rng(seed)
    total = n_frames * FRAME
    dtmf_target = round(dtmf_share * n_frames) * FRAME
    parts: list[np.ndarray] = []
    used = dtmf = presses = 0
    while used < total:
        # talk spurt
        n = int(rng.uniform(0.8, 3.0) * SAMPLE_RATE)
        parts.append(_speech_like(n, rng, rng.uniform(-26.0, -14.0)))
        used += n
        # pause; a key press in 60 % of them until 2 % of the pool is DTMF
        n = int(rng.uniform(0.2, 1.0) * SAMPLE_RATE)
        floor = _rms_for_dbm0(-65.0) if rng.random() < 0.5 else 0.0  # noise floor or zeros
        pause = rng.standard_normal(n) * floor
        if dtmf < dtmf_target and rng.random() < 0.6:
            k = int(rng.uniform(0.06, 0.12) * SAMPLE_RATE)
            at = int(rng.integers(0, max(n - k, 1)))
            tone = dtmf_tone(
                DIGITS[int(rng.integers(0, len(DIGITS)))],
                k,
                float(rng.uniform(-20.0, -4.0)),
                twist_db=float(rng.uniform(-2.0, 4.0)),
            )
            pause = np.concatenate([pause[:at], tone + pause[at : at + k], pause[at + k :]])
            dtmf += k
            presses += 1
        parts.append(pause)
        used += pause.size
    sig = np.concatenate(parts)[:total]
    pool = np.clip(np.rint(sig), -32768, 32767).astype(np.int16).reshape(n_frames, FRAME)
    return pool, presses


# --- measurement -----------------------------------------------------------------------------
@dataclass
class Result:
    streams: int
    mode: str
    ticks: int
    cpu_s: float  # best repeat
    digits: int  # DigitStarted events over all timed ticks (sanity: the detector works)
    bytes_per_stream: float
    state_bytes_per_stream: float

    @property
    def audio_s_per_cpu_s(self) -> float:
        return self.streams * self.ticks * FRAME_S / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def us_per_stream_frame(self) -> float:
        return self.cpu_s / (self.streams * self.ticks) * 1e6

    @property
    def ms_per_tick(self) -> float:
        return self.cpu_s / self.ticks * 1e3


def _engine(
    mode: str, n: int
) -> tuple[Any, np.ndarray, Callable[[np.ndarray, np.ndarray], list[DigitEvent]]]:
    if mode == "detect":
        det = DtmfDetector(capacity=n)
        sids = np.array([det.add_stream() for _ in range(n)], dtype=np.int64)
        return det, sids, det.process
    eng = MaskingEngine(capacity=n)
    sids = np.array([eng.add_stream() for _ in range(n)], dtype=np.int64)

    def run(s: np.ndarray, f: np.ndarray) -> list[DigitEvent]:
        _out, events = eng.process(s, f)
        return events

    return eng, sids, run


def _offsets(n: int, pool_frames: int) -> np.ndarray:
    # spread the streams over the pool (a stride coprime with typical pool sizes)
    return (np.arange(n, dtype=np.int64) * 7919 + 13) % pool_frames


def _state_bytes(engine: Any, capacity: int) -> int:
    """nbytes of the numpy arrays held by ``engine`` (and its sub-objects) with one row per
    stream slot."""
    seen: set[int] = set()
    total = 0
    stack = [engine]
    while stack:
        obj = stack.pop()
        for v in vars(obj).values() if hasattr(obj, "__dict__") else ():
            if isinstance(v, np.ndarray):
                if id(v) not in seen and v.ndim >= 1 and v.shape[0] == capacity:
                    seen.add(id(v))
                    total += v.nbytes
            elif isinstance(v, (DtmfDetector, MaskingEngine)):
                stack.append(v)
    return total


def measure_memory(mode: str, n: int, pool: np.ndarray) -> tuple[float, float]:
    frames = pool[_offsets(n, pool.shape[0])]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        engine, sids, run = _engine(mode, n)
        run(sids, frames)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak / n, _state_bytes(engine, n) / n


def measure(mode: str, n: int, pool: np.ndarray, budget_s: float, repeats: int) -> Result:
    p = pool.shape[0]
    off = _offsets(n, p)
    _engine_obj, sids, run = _engine(mode, n)
    tick = 0

    def go(ticks: int) -> tuple[float, int]:
        nonlocal tick
        digits = 0
        t0 = time.process_time()
        for _ in range(ticks):
            events = run(sids, pool[(off + tick) % p])
            tick += 1
            if events:
                digits += sum(isinstance(e, DigitStarted) for e in events)
        return time.process_time() - t0, digits

    # warm-up, which also estimates the cost of a tick (median: the first ticks are dearer)
    warm: list[float] = []
    while len(warm) < 3 or (sum(warm) < min(0.1, budget_s / 4) and len(warm) < 1000):
        warm.append(go(1)[0])
    per_tick = max(float(np.median(warm[1:])), 1e-7)
    ticks = int(min(max(budget_s / per_tick, 3), 1_000_000))

    best, digits = float("inf"), 0
    for _ in range(repeats):
        dt, d = go(ticks)
        digits += d
        best = min(best, dt)
    b_mem, s_mem = measure_memory(mode, n, pool)
    return Result(n, mode, ticks, best, digits, b_mem, s_mem)


# --- environment -----------------------------------------------------------------------------
def blas_name() -> str:
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_info  # type: ignore[import-not-found]

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if info:
            i = info[0]
            return f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
    with contextlib.suppress(Exception):
        cfg = np.show_config(mode="dicts")  # numpy >= 1.26
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    with contextlib.suppress(Exception):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            np.show_config()
        for line in buf.getvalue().splitlines():
            if "name" in line.lower():
                return line.split(":", 1)[-1].strip()
    return "unknown"


def env_info() -> dict[str, Any]:
    return {
        "numpy": np.__version__,
        "blas": blas_name(),
        "blas_threads_env": {
            k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
        },
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


# --- output -----------------------------------------------------------------------------------
def print_table(
    results: list[Result], info: dict[str, Any], presses: int, pool_frames: int
) -> None:
    print("dtmfmask DSP throughput (20 ms frames, all streams in one process() call per tick)")
    print(
        f"numpy {info['numpy']}, BLAS {info['blas']}, "
        f"OPENBLAS_NUM_THREADS={info['blas_threads_env']['OPENBLAS_NUM_THREADS']}, "
        f"Python {info['python']}, {info['machine']}, {info['cpus']} CPUs, "
        f"load average {info['load_avg_1min']} at start (a busy machine inflates CPU time)"
    )
    print("Results depend on the machine and on numpy's BLAS; CPU time = time.process_time(),")
    print(
        f"best of {REPEATS} repeats after a warm-up. Input: {pool_frames}-frame pool of "
        f"speech-like noise, silence and DTMF ({presses} key presses, ~2 % of frames)."
    )
    print()
    hdr = (
        f"{'streams':>7} {'mode':<12} {'ticks':>6} {'audio-s/CPU-s':>14} "
        f"{'CPU-us/strm/frame':>17} {'CPU-ms/tick':>11} {'peak B/strm':>11} "
        f"{'state B/strm':>12} {'digits':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(
            f"{r.streams:>7} {r.mode:<12} {r.ticks:>6} {r.audio_s_per_cpu_s:>14,.0f} "
            f"{r.us_per_stream_frame:>17.1f} {r.ms_per_tick:>11.3f} "
            f"{r.bytes_per_stream:>11,.0f} {r.state_bytes_per_stream:>12,.0f} {r.digits:>7}"
        )
    print()
    print("audio-s/CPU-s = streams x 20 ms x ticks / CPU-s (also: real-time streams per core).")
    print("peak B/strm   = tracemalloc peak of: construct engine (capacity N) + add N streams +")
    print("                one tick for all N, divided by N (includes per-tick working arrays).")
    print("state B/strm  = nbytes of the engine's per-stream numpy state arrays / capacity.")
    print("digits        = DTMF key presses reported (DigitStarted) over the timed ticks.")
    light = [r for r in results if r.streams == 1]
    for r in light:
        print(
            f"light load (1 stream, one frame per call), {r.mode}: "
            f"{r.us_per_stream_frame:.0f} CPU-us per 20 ms frame "
            f"= {r.audio_s_per_cpu_s:,.0f} audio-s/CPU-s"
        )
    goal = [r for r in results if r.streams == GOAL_STREAMS]
    for r in goal:
        verdict = "met" if r.audio_s_per_cpu_s >= GOAL else "NOT met"
        print(
            f"goal >= {GOAL:,.0f} audio-s/CPU-s at {GOAL_STREAMS:,} batched streams, "
            f"{r.mode}: {r.audio_s_per_cpu_s:,.0f} -> {verdict}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="DTMF engine throughput: audio-seconds per CPU-second and memory per stream."
    )
    ap.add_argument("--streams", default="1,100,1000,10000", help="comma-separated stream counts")
    ap.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="CPU-second budget per timed repeat of each configuration (3 repeats)",
    )
    ap.add_argument(
        "--dtmf-share",
        type=float,
        default=0.02,
        help="share of frames holding a key press (default 0.02: 2 %% of all streams are "
        "pressing a key at any moment, far more than live traffic)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object, no table")
    ap.add_argument("--quick", action="store_true", help="tiny run (CI smoke test)")
    args = ap.parse_args(argv)

    try:
        counts = [int(s.replace("_", "")) for s in args.streams.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--streams: not a list of integers: {args.streams!r}")
    if not counts or min(counts) < 1:
        ap.error("--streams: need stream counts >= 1")
    budget = args.seconds
    pool_frames = 3000
    if args.quick:
        if args.streams == ap.get_default("streams"):
            counts = [1, 100]
        budget = min(budget, 0.05)
        pool_frames = 500

    pool, presses = make_pool(pool_frames, dtmf_share=args.dtmf_share)
    info = env_info()
    results = [measure(mode, n, pool, budget, REPEATS) for n in counts for mode in MODES]

    if args.json:
        out = {
            "results": [
                {
                    "streams": r.streams,
                    "mode": r.mode,
                    "audio_s_per_cpu_s": round(r.audio_s_per_cpu_s, 1),
                    "bytes_per_stream": round(r.bytes_per_stream),
                    "state_bytes_per_stream": round(r.state_bytes_per_stream),
                    "cpu_us_per_stream_frame": round(r.us_per_stream_frame, 3),
                    "ticks": r.ticks,
                    "digits": r.digits,
                }
                for r in results
            ],
            "frame_ms": FRAME_S * 1e3,
            "repeats": REPEATS,
            "memory_measure": (
                "bytes_per_stream: tracemalloc peak (construct engine of capacity N + add N "
                "streams + one tick) / N; state_bytes_per_stream: nbytes of per-stream numpy "
                "state arrays / capacity"
            ),
            "goal": {"streams": GOAL_STREAMS, "audio_s_per_cpu_s": GOAL},
            "note": "results depend on the machine and numpy's BLAS; one BLAS thread",
            **info,
        }
        print(json.dumps(out))
    else:
        print_table(results, info, presses, pool_frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
