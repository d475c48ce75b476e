"""ITU-T Q.24 battery, detector limits, talk-off and masking figures of the DTMF engine.

Run: PYTHONPATH=. python benchmarks/q24_battery.py [--quick] [--json] [--workers N]

Everything goes through the batched engine helpers (``tests.dtmfmask.engine_helpers``):
every signal of a section is one stream of one engine. The adversarial decoder
(``tests.leakdecoder``) is single-threaded numpy, so its runs are spread over ``--workers``
processes (default: up to 2).

Sections (each timed):

1. ``battery``: the full Q.24 battery (``tests.signals.q24_battery``, every case linear, μ-law
   and A-law). A case passes when the digits reported equal ``expected`` (cases whose count
   is not checked are counted apart). The report-only heavy-noise cases are reported per S/N
   as the fraction of keys found and the extra digits.
2. ``sweeps``: detector limits. Sequences of all 16 keys (40 ms on / 40 ms off, -10 dBm0,
   linear, a few seeds for the random start phases) with one parameter swept; a key is
   accepted when it is reported exactly once. Twist (normal 0..14 dB, reverse 0..10 dB,
   0.5 dB steps; the stronger tone at -10 dBm0), frequency offset of each row and column
   tone alone (-5..+5 % in 0.25 % steps; only the 4 keys using that tone are scored), level
   of each tone (0..-50 dBm0, 1 dB steps), tone duration (10..50 ms, 1 ms steps) and the
   gap between two presses of the same key (10..60 ms, 1 ms steps; scored on two digits).
   Noise: S/N 24..3 dB in 3 dB steps (white noise, S/N of the key over the noise across the
   band), keys found (time-matched, ±20 ms) and extra digits.
   Limits are read from contiguous runs: the accept limit is the farthest step from nominal
   up to which every step has all keys found; the reject limit is the nearest step from
   which on every step has none found.
3. ``talkoff``: digits reported on the 30-minute espeak-ng corpus and 10 minutes of
   music-like signals, as counts and per hour (Bellcore's talk-off limit is about 157/h).
4. ``masking``: share of talk-off speech samples altered by the masker (default config);
   adversarial decoder detections in the masked output of every battery case (should be 0);
   keys mixed into speech (24 x 20 s, default levels), split into keys at least 6 dB above
   the speech under them and the rest, with the decoder's detections over each key.
5. ``lookahead``: look-ahead 0..30 ms, 5 ms frames (so only the look-ahead lets the masker
   see ahead), style "silence": must_mask battery cases with any tone sample left non-zero
   (a covered tone is masked from its first sample), and decoder detections in the masked
   output of every battery case.

``--quick`` is a CI-sized run (small battery, one seed, coarser steps, 1 minute of speech).
``--json`` prints one JSON object instead of the tables. Nothing is asserted; exit 0.
"""

from __future__ import annotations

import os

# One BLAS thread per process (unless already set): the engine's and the decoder's matrices are
# small, and threaded BLAS on top of the decoder's worker processes oversubscribes the cores
# (measured: several times slower on 2 cores). Must precede the numpy import.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable, Iterable, Sequence  # noqa: E402
from concurrent.futures import Executor, ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dtmfmask.events import DigitStarted  # noqa: E402
from dtmfmask.masker import MaskConfig  # noqa: E402
from dtmfmask.tones import COL_FREQS, DIGITS, KEYPAD, ROW_FREQS, SAMPLE_RATE  # noqa: E402
from tests.dtmfmask.engine_helpers import detect_many, digits, mask_many  # noqa: E402
from tests.leakdecoder import decode  # noqa: E402
from tests.signals import (  # noqa: E402
    Case,
    KeySpec,
    Press,
    add_white_noise,
    build_sequence,
    mix_presses_into_speech,
    music_like,
    q24_battery,
)
from tests.speech import SpeechUnavailable, talkoff_corpus  # noqa: E402

BELLCORE_TALKOFF_PER_HOUR = 157.0
MATCH_TOLERANCE = round(0.020 * SAMPLE_RATE)  # a reported key within 20 ms of a press
SWEEP_ON_MS = 40.0
SWEEP_OFF_MS = 40.0
SWEEP_LEVEL = -10.0
LOOKAHEADS_MS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)


@dataclass(frozen=True)
class Size:
    quick: bool
    seeds: int
    twist_step: float
    offset_step: float  # percent
    level_step: float
    duration_step: float
    gap_step: float
    noise_seeds: int
    speech_minutes: float
    speech_seed: int
    music_minutes: float
    mixed_clips: int


FULL = Size(False, 4, 0.5, 0.25, 1.0, 1.0, 1.0, 8, 30.0, 0, 10.0, 24)
QUICK = Size(True, 1, 2.0, 1.0, 5.0, 5.0, 5.0, 1, 1.0, 11, 1.0, 3)


# --------------------------------------------------------------------------------------------
# Helpers


def steps(lo: float, hi: float, step: float) -> list[float]:
    n = round((hi - lo) / step)
    return [round(lo + i * step, 6) for i in range(n + 1)]


def _decode_spans(signal: np.ndarray) -> list[tuple[str, int, int, str]]:
    return [(d.digit, d.start, d.end, d.method) for d in decode(signal)]


def decode_all(pool: Executor | None, signals: Sequence[np.ndarray]) -> list[list[tuple]]:
    """The adversarial decoder over every signal, spread over the pool's processes."""
    if pool is None:
        return [_decode_spans(s) for s in signals]
    chunk = max(1, len(signals) // 32)
    return list(pool.map(_decode_spans, signals, chunksize=chunk))


def match_presses(events: Iterable[Any], presses: Sequence[Press]) -> tuple[int, int]:
    """(presses found, extra digits): a reported key matches an unmatched press of the same
    digit whose span, widened by 20 ms both ways, holds its start."""
    used = [False] * len(presses)
    found = extra = 0
    for ev in events:
        if not isinstance(ev, DigitStarted):
            continue
        for i, p in enumerate(presses):
            if (
                not used[i]
                and p.digit == ev.digit
                and p.start - MATCH_TOLERANCE <= ev.start < p.end + MATCH_TOLERANCE
            ):
                used[i] = True
                found += 1
                break
        else:
            extra += 1
    return found, extra


def accept_limit(values: Sequence[float], all_found: Sequence[bool]) -> float | None:
    """Walking ``values`` (ordered outward from nominal): the last value of the leading run
    where every key was found (None if the first already fails)."""
    last = None
    for v, ok in zip(values, all_found, strict=True):
        if not ok:
            break
        last = v
    return last


def reject_limit(values: Sequence[float], none_found: Sequence[bool]) -> float | None:
    """Walking ``values`` outward: the first value from which on no key was found at any
    further step (None if the last step still found some)."""
    first = None
    for v, none in zip(reversed(values), reversed(none_found), strict=True):
        if not none:
            break
        first = v
    return first


def fmt(v: float | None, spec: str = "g", unit: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{unit}"


# --------------------------------------------------------------------------------------------
# 1. Battery


def run_battery(cases: Sequence[Case]) -> dict[str, Any]:
    events = detect_many([c.signal for c in cases])
    groups: dict[str, dict[str, Any]] = {}
    noise: dict[float, dict[str, int]] = defaultdict(lambda: Counter())  # type: ignore[arg-type]
    for case, ev in zip(cases, events, strict=True):
        got = digits(ev)
        if case.report_only:
            snr = float(case.name.split("/")[1].removesuffix("dB"))
            found, extra = match_presses(ev, case.presses)
            n = noise[snr]
            n["cases"] += 1
            n["keys"] += len(case.presses)
            n["found"] += found
            n["extra"] += extra
            n["exact"] += got == case.expected
            continue
        g = groups.setdefault(
            case.group,
            {"cases": 0, "checked": 0, "pass": 0, "fail": 0, "not_checked": 0, "failures": []},
        )
        g["cases"] += 1
        if case.expected is None:
            g["not_checked"] += 1
            continue
        g["checked"] += 1
        if got == case.expected:
            g["pass"] += 1
        else:
            g["fail"] += 1
            g["failures"].append({"name": case.name, "expected": case.expected, "got": got})
    report_only = {
        f"{snr:g}": {
            "cases": n["cases"],
            "keys": n["keys"],
            "found": n["found"],
            "found_fraction": n["found"] / n["keys"] if n["keys"] else None,
            "extra_digits": n["extra"],
            "exact_cases": n["exact"],
        }
        for snr, n in sorted(noise.items(), reverse=True)
    }
    total = {k: sum(g[k] for g in groups.values()) for k in ("cases", "checked", "pass", "fail")}
    return {"groups": groups, "total": total, "report_only_noise": report_only}


def print_battery(r: dict[str, Any]) -> None:
    print("\n== 1. Q.24 battery (linear, μ-law, A-law) ==")
    print(f"{'group':<10}{'cases':>7}{'checked':>9}{'pass':>7}{'fail':>6}{'not checked':>13}")
    for name, g in r["groups"].items():
        print(
            f"{name:<10}{g['cases']:>7}{g['checked']:>9}{g['pass']:>7}{g['fail']:>6}"
            f"{g['not_checked']:>13}"
        )
    t = r["total"]
    print(f"{'total':<10}{t['cases']:>7}{t['checked']:>9}{t['pass']:>7}{t['fail']:>6}")
    fails = [f for g in r["groups"].values() for f in g["failures"]]
    print(f"failures: {len(fails)}")
    for f in fails:
        print(f"  {f['name']}: expected {f['expected']!r}, got {f['got']!r}")
    print("report-only noise cases (16 keys each):")
    print(f"{'S/N dB':>7}{'cases':>7}{'keys':>7}{'found':>7}{'found %':>9}{'extra':>7}{'exact':>7}")
    for snr, n in r["report_only_noise"].items():
        frac = n["found_fraction"]
        print(
            f"{snr:>7}{n['cases']:>7}{n['keys']:>7}{n['found']:>7}"
            f"{fmt(None if frac is None else 100 * frac, '.1f'):>9}"
            f"{n['extra_digits']:>7}{n['exact_cases']:>7}"
        )


# --------------------------------------------------------------------------------------------
# 2. Sweeps


@dataclass
class Item:
    signal: np.ndarray
    presses: list[Press]
    scored: str  # digits scored in this signal
    want: int = 1  # times each scored digit must be reported


def score(items: Sequence[Item]) -> list[tuple[int, int, int]]:
    """Per item: (scored keys accepted, scored keys with nothing reported, extra digits).
    Extra = reports of a digit beyond the number of its presses in the item."""
    events = detect_many([it.signal for it in items])
    out = []
    for it, ev in zip(items, events, strict=True):
        got = Counter(digits(ev))
        present = Counter(p.digit for p in it.presses)
        accepted = sum(got[d] == it.want for d in it.scored)
        missing = sum(got[d] == 0 for d in it.scored)
        extra = sum(max(0, n - present[d]) for d, n in got.items())
        out.append((accepted, missing, extra))
    return out


def sweep_table(
    values: Sequence[float],
    make: Callable[[float, int], Item],
    seeds: int,
) -> list[dict[str, Any]]:
    items = [make(v, s) for v in values for s in range(seeds)]
    scores = score(items)
    rows = []
    for i, v in enumerate(values):
        part = scores[i * seeds : (i + 1) * seeds]
        its = items[i * seeds : (i + 1) * seeds]
        keys = sum(len(it.scored) for it in its)
        acc = sum(a for a, _, _ in part)
        miss = sum(m for _, m, _ in part)
        rows.append(
            {
                "value": v,
                "keys": keys,
                "accepted": acc,
                "none_reported": miss,
                "extra_digits": sum(e for _, _, e in part),
                "all": acc == keys,
                "none": miss == keys,
            }
        )
    return rows


def seq(
    keys: str | Sequence[str | KeySpec],
    seed: int,
    scored: str | None = None,
    want: int = 1,
    **kw: float,
) -> Item:
    opts: dict[str, float] = {
        "on_ms": SWEEP_ON_MS,
        "off_ms": SWEEP_OFF_MS,
        "level_dbm0": SWEEP_LEVEL,
        **kw,
    }
    signal, presses = build_sequence(keys, rng=1000 + seed, **opts)  # type: ignore[arg-type]
    return Item(signal, presses, DIGITS if scored is None else scored, want)


def limits(rows: list[dict[str, Any]], values: Sequence[float]) -> tuple[Any, Any]:
    by = {r["value"]: r for r in rows}
    return (
        accept_limit(values, [by[v]["all"] for v in values]),
        reject_limit(values, [by[v]["none"] for v in values]),
    )


def run_sweeps(size: Size) -> dict[str, Any]:
    out: dict[str, Any] = {"on_ms": SWEEP_ON_MS, "off_ms": SWEEP_OFF_MS, "seeds": size.seeds}

    # twist: positive = high tone weaker; the stronger tone at -10 dBm0
    normal = steps(0.0, 14.0, size.twist_step)
    reverse = steps(0.0, 10.0, size.twist_step)
    rows_n = sweep_table(normal, lambda t, s: seq(DIGITS, s, twist_db=t), size.seeds)
    rows_r = sweep_table(
        reverse,
        lambda t, s: seq(DIGITS, s, twist_db=-t, level_dbm0=SWEEP_LEVEL - t),
        size.seeds,
    )
    out["twist"] = {}
    for kind, vals, rows in (("normal", normal, rows_n), ("reverse", reverse, rows_r)):
        acc, rej = limits(rows, vals)
        out["twist"][kind] = {"rows": rows, "accept_limit_db": acc, "reject_from_db": rej}

    # frequency offset of one tone: keys using it are shifted, the other 12 are controls
    offsets = steps(-5.0, 5.0, size.offset_step)
    off_out: dict[str, Any] = {}
    for group, freqs in (("row", ROW_FREQS), ("col", COL_FREQS)):
        for i, freq in enumerate(freqs):
            keys = KEYPAD[i] if group == "row" else "".join(row[i] for row in KEYPAD)
            field = "row_offset" if group == "row" else "col_offset"

            def make(o: float, s: int, keys: str = keys, field: str = field) -> Item:
                specs = [
                    KeySpec(d, **{field: o / 100.0}) if d in keys else KeySpec(d) for d in DIGITS
                ]
                return seq(specs, s, scored=keys)

            rows = sweep_table(offsets, make, size.seeds)
            pos = [v for v in offsets if v >= 0]
            neg = sorted((v for v in offsets if v <= 0), reverse=True)
            acc_p, rej_p = limits(rows, pos)
            acc_n, rej_n = limits(rows, neg)
            off_out[f"{group}{freq:g}"] = {
                "freq_hz": freq,
                "keys": keys,
                "rows": rows,
                "accept_band_pct": [acc_n, acc_p],
                "reject_from_pct": [rej_n, rej_p],
            }
    out["offset"] = off_out

    # level of each tone (no twist)
    levels = steps(-50.0, 0.0, size.level_step)[::-1]
    rows = sweep_table(levels, lambda lv, s: seq(DIGITS, s, level_dbm0=lv), size.seeds)
    by = {r["value"]: r for r in rows}
    down = [v for v in levels if v <= SWEEP_LEVEL]  # outward from nominal, downwards
    up = sorted(v for v in levels if v >= SWEEP_LEVEL)
    out["level"] = {
        "rows": rows,
        "weakest_all_found_dbm0": accept_limit(down, [by[v]["all"] for v in down]),
        "strongest_none_found_dbm0": reject_limit(down, [by[v]["none"] for v in down]),
        "loudest_all_found_dbm0": accept_limit(up, [by[v]["all"] for v in up]),
    }

    # tone duration
    durs = steps(10.0, 50.0, size.duration_step)
    rows = sweep_table(durs, lambda d, s: seq(DIGITS, s, on_ms=d), size.seeds)
    by = {r["value"]: r for r in rows}
    down = durs[::-1]
    out["duration"] = {
        "rows": rows,
        "shortest_always_found_ms": accept_limit(down, [by[v]["all"] for v in down]),
        "longest_never_found_ms": reject_limit(down, [by[v]["none"] for v in down]),
    }

    # the same key twice: two 40 ms tones `gap` apart, 60 ms to the next pair
    gaps = steps(10.0, 60.0, size.gap_step)

    def make_gap(g: float, s: int) -> Item:
        specs = [KeySpec(d, off_ms=o) for d in DIGITS for o in (g, 60.0)]
        return seq(specs, s, want=2)

    rows = sweep_table(gaps, make_gap, size.seeds)
    by = {r["value"]: r for r in rows}
    down = gaps[::-1]
    out["gap"] = {
        "rows": rows,
        "shortest_gap_two_digits_ms": accept_limit(down, [by[v]["all"] for v in down]),
        "shortest_gap_any_two_digits_ms": next((v for v in gaps if by[v]["accepted"]), None),
    }

    # white noise
    snrs = steps(3.0, 24.0, 3.0)[::-1]
    noise_rows = []
    for snr in snrs:
        items = []
        for s in range(size.noise_seeds):
            for level in (SWEEP_LEVEL, -25.0):
                gen = np.random.default_rng([int(snr), s, int(-level)])
                keys = "".join(gen.permutation(list(DIGITS)))
                sig, presses = build_sequence(
                    keys, on_ms=SWEEP_ON_MS, off_ms=SWEEP_OFF_MS, level_dbm0=level, rng=gen
                )
                items.append(
                    Item(add_white_noise(sig, snr, rng=gen, presses=presses), presses, keys)
                )
        events = detect_many([it.signal for it in items])
        found = extra = keys_n = 0
        for it, ev in zip(items, events, strict=True):
            f, e = match_presses(ev, it.presses)
            found += f
            extra += e
            keys_n += len(it.presses)
        noise_rows.append(
            {
                "snr_db": snr,
                "keys": keys_n,
                "found": found,
                "found_fraction": found / keys_n,
                "extra_digits": extra,
            }
        )
    out["noise"] = {"levels_dbm0": [SWEEP_LEVEL, -25.0], "rows": noise_rows}
    return out


def _pct(r: dict[str, Any]) -> str:
    return f"{100.0 * r['accepted'] / r['keys']:.0f}"


def print_sweeps(r: dict[str, Any]) -> None:
    print(
        f"\n== 2. Detector limits (16 keys, {r['on_ms']:g}/{r['off_ms']:g} ms, "
        f"{r['seeds']} seed(s); % of keys reported exactly once) =="
    )
    tw = r["twist"]
    print("twist (dB): % accepted, normal (high tone weaker) | reverse (high tone stronger)")
    n_rows = {x["value"]: x for x in tw["normal"]["rows"]}
    r_rows = {x["value"]: x for x in tw["reverse"]["rows"]}
    print(f"{'twist':>7}{'normal':>8}{'extra':>7}{'reverse':>9}{'extra':>7}")
    for v in sorted(set(n_rows) | set(r_rows)):
        a, b = n_rows.get(v), r_rows.get(v)
        print(
            f"{v:>7.1f}{_pct(a) if a else '':>8}{a['extra_digits'] if a else '':>7}"
            f"{_pct(b) if b else '':>9}{b['extra_digits'] if b else '':>7}"
        )
    for kind in ("normal", "reverse"):
        print(
            f"{kind} twist: all keys found up to {fmt(tw[kind]['accept_limit_db'], '.1f')} dB, "
            f"none found from {fmt(tw[kind]['reject_from_db'], '.1f')} dB"
        )

    off = r["offset"]
    names = list(off)
    print("\nfrequency offset of one tone (%): % of that tone's 4 keys accepted")
    print(f"{'offset':>7}" + "".join(f"{n:>9}" for n in names))
    values = [x["value"] for x in off[names[0]]["rows"]]
    for i, v in enumerate(values):
        print(f"{v:>+7.2f}" + "".join(f"{_pct(off[n]['rows'][i]):>9}" for n in names))
    print(f"{'freq':<9}{'accept band (all found)':>26}{'reject (none found) from':>28}")
    for n in names:
        o = off[n]
        a_lo, a_hi = o["accept_band_pct"]
        r_lo, r_hi = o["reject_from_pct"]
        print(
            f"{n:<9}{fmt(a_lo, '+.2f', ' %'):>13} ..{fmt(a_hi, '+.2f', ' %'):>10}"
            f"{'<= ' + fmt(r_lo, '+.2f', ' %'):>16}, >= {fmt(r_hi, '+.2f', ' %'):<9}"
        )

    lv = r["level"]
    print("\nlevel of each tone (dBm0): % accepted")
    _columns(lv["rows"], "{:+.0f}")
    print(
        f"all keys found from {fmt(lv['loudest_all_found_dbm0'], '+.0f')} down to "
        f"{fmt(lv['weakest_all_found_dbm0'], '+.0f')} dBm0; none found at "
        f"{fmt(lv['strongest_none_found_dbm0'], '+.0f')} dBm0 and below"
    )

    du = r["duration"]
    print("\ntone duration (ms): % accepted")
    _columns(du["rows"], "{:.0f}")
    print(
        f"shortest always found: {fmt(du['shortest_always_found_ms'], 'g')} ms; "
        f"longest never found: {fmt(du['longest_never_found_ms'], 'g')} ms"
    )

    gp = r["gap"]
    print("\ngap between two presses of the same key (ms): % of keys reported twice")
    _columns(gp["rows"], "{:.0f}")
    print(
        f"shortest gap giving two digits for every key (and every longer gap): "
        f"{fmt(gp['shortest_gap_two_digits_ms'], 'g')} ms; for any key: "
        f"{fmt(gp['shortest_gap_any_two_digits_ms'], 'g')} ms"
    )

    nz = r["noise"]
    lv_txt = " and ".join(f"{x:+.0f}" for x in nz["levels_dbm0"])
    print(f"\nwhite noise (keys at {lv_txt} dBm0): keys found (±20 ms) and extra digits")
    print(f"{'S/N dB':>7}{'keys':>7}{'found':>7}{'found %':>9}{'extra':>7}")
    for x in nz["rows"]:
        print(
            f"{x['snr_db']:>7g}{x['keys']:>7}{x['found']:>7}"
            f"{100 * x['found_fraction']:>9.1f}{x['extra_digits']:>7}"
        )


def _columns(rows: list[dict[str, Any]], vfmt: str, per_line: int = 13) -> None:
    for a in range(0, len(rows), per_line):
        part = rows[a : a + per_line]
        print("  value " + "".join(f"{vfmt.format(x['value']):>5}" for x in part))
        print("  %     " + "".join(f"{_pct(x):>5}" for x in part))
        if any(x["extra_digits"] for x in part):
            print("  extra " + "".join(f"{x['extra_digits']:>5}" for x in part))


# --------------------------------------------------------------------------------------------
# 3. Talk-off


def load_speech(size: Size) -> tuple[np.ndarray | None, str | None]:
    try:
        return talkoff_corpus(size.speech_minutes, seed=size.speech_seed), None
    except SpeechUnavailable as exc:
        return None, str(exc)


def talkoff_figures(chunks: Sequence[np.ndarray], minutes: float) -> dict[str, Any]:
    events = detect_many(chunks)
    found = "".join(digits(ev) for ev in events)
    return {
        "minutes": minutes,
        "digits": len(found),
        "per_hour": len(found) * 60.0 / minutes,
        "which": dict(Counter(found)),
    }


def run_talkoff(size: Size, speech: np.ndarray | None, why: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"bellcore_limit_per_hour": BELLCORE_TALKOFF_PER_HOUR}
    if speech is None:
        out["speech"] = {"unavailable": why}
    else:
        chunks = np.array_split(speech, max(1, round(speech.size / (30 * SAMPLE_RATE))))
        out["speech"] = talkoff_figures(chunks, speech.size / SAMPLE_RATE / 60.0)
    music = music_like(size.music_minutes, seed=0)
    chunks = np.array_split(music, max(1, round(music.size / (30 * SAMPLE_RATE))))
    out["music"] = talkoff_figures(chunks, music.size / SAMPLE_RATE / 60.0)
    return out


def print_talkoff(r: dict[str, Any]) -> None:
    print(f"\n== 3. Talk-off (Bellcore limit ≈ {r['bellcore_limit_per_hour']:g}/h) ==")
    print(f"{'material':<10}{'minutes':>9}{'digits':>8}{'per hour':>10}  digits seen")
    for name in ("speech", "music"):
        x = r[name]
        if "unavailable" in x:
            print(f"{name:<10} unavailable: {x['unavailable']}")
            continue
        seen = " ".join(f"{d}x{n}" for d, n in sorted(x["which"].items())) or "-"
        print(f"{name:<10}{x['minutes']:>9.1f}{x['digits']:>8}{x['per_hour']:>10.1f}  {seen}")


# --------------------------------------------------------------------------------------------
# 4. Masking


def run_masking(
    cases: Sequence[Case],
    speech: np.ndarray | None,
    why: str | None,
    size: Size,
    pool: Executor | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # speech alteration
    if speech is None:
        out["speech"] = {"unavailable": why}
    else:
        chunks = np.array_split(speech, max(1, round(speech.size / (30 * SAMPLE_RATE))))
        outs, events = mask_many(chunks)
        changed = sum(int(np.count_nonzero(o != c)) for o, c in zip(outs, chunks, strict=True))
        out["speech"] = {
            "minutes": speech.size / SAMPLE_RATE / 60.0,
            "samples_altered": changed,
            "altered_percent": 100.0 * changed / speech.size,
            "digits_reported": sum(isinstance(e, DigitStarted) for ev in events for e in ev),
        }
    # battery, default config (tone style, 20 ms frames)
    outs, _ = mask_many([c.signal for c in cases])
    found = decode_all(pool, outs)
    leaky = [(c.name, len(f)) for c, f in zip(cases, found, strict=True) if f]
    out["battery"] = {
        "cases": len(cases),
        "detections": sum(n for _, n in leaky),
        "cases_with_detections": len(leaky),
        "leaky_cases": [n for n, _ in leaky],
    }
    # keys mixed into speech
    if speech is None:
        out["mixed"] = {"unavailable": why}
        return out
    clip = 20 * SAMPLE_RATE
    signals, truths, speeches = [], [], []
    for i in range(min(size.mixed_clips, speech.size // clip)):
        sp = speech[i * clip : (i + 1) * clip].astype(np.float64)
        mixed, presses = mix_presses_into_speech(sp, "0123456789*#ABCD", rng=200 + i)
        signals.append(mixed)
        truths.append(presses)
        speeches.append(sp)
    outs, events = mask_many(signals)
    found = decode_all(pool, outs)
    tally = {k: Counter() for k in ("clear", "buried")}  # type: ignore[var-annotated]
    for presses, sp, mixed, dets, ev in zip(truths, speeches, signals, found, events, strict=True):
        reported = [e for e in ev if isinstance(e, DigitStarted)]
        for p in presses:
            key = mixed[p.start : p.end] - sp[p.start : p.end]
            clear = np.mean(key**2) >= 4.0 * np.mean(sp[p.start : p.end] ** 2)
            t = tally["clear" if clear else "buried"]
            t["presses"] += 1
            mine = [d for d in dets if d[1] < p.end and d[2] > p.start]
            t["detections"] += len(mine)
            t["presses_leaked"] += bool(mine)
            t["reported"] += any(
                e.digit == p.digit
                and p.start - MATCH_TOLERANCE <= e.start < p.end + MATCH_TOLERANCE
                for e in reported
            )
    out["mixed"] = {
        "clips": len(signals),
        "clip_s": 20,
        "clear_presses": tally["clear"]["presses"],
        "clear_detections": tally["clear"]["detections"],
        "clear_presses_leaked": tally["clear"]["presses_leaked"],
        "clear_reported": tally["clear"]["reported"],
        "buried_presses": tally["buried"]["presses"],
        "buried_detections": tally["buried"]["detections"],
        "buried_presses_leaked": tally["buried"]["presses_leaked"],
        "buried_reported": tally["buried"]["reported"],
    }
    return out


def print_masking(r: dict[str, Any]) -> None:
    print("\n== 4. Masking (default config) ==")
    sp = r["speech"]
    if "unavailable" in sp:
        print(f"speech: unavailable: {sp['unavailable']}")
    else:
        print(
            f"talk-off speech altered: {sp['samples_altered']} of "
            f"{round(sp['minutes'] * 60 * SAMPLE_RATE)} samples = {sp['altered_percent']:.4f} % "
            f"({sp['minutes']:.1f} min; digits reported {sp['digits_reported']})"
        )
    b = r["battery"]
    print(
        f"battery, masked output: {b['detections']} decoder detections in "
        f"{b['cases_with_detections']} of {b['cases']} cases"
    )
    for name in b["leaky_cases"]:
        print(f"  leaks: {name}")
    m = r["mixed"]
    if "unavailable" in m:
        print(f"keys over speech: unavailable: {m['unavailable']}")
        return
    print(f"keys over speech ({m['clips']} x {m['clip_s']} s, default levels -25..-4 dBm0):")
    print(f"{'keys':<26}{'presses':>9}{'reported':>10}{'leaked':>8}{'detections':>12}")
    for k, label in (("clear", ">= 6 dB above speech"), ("buried", "the rest")):
        print(
            f"{label:<26}{m[k + '_presses']:>9}{m[k + '_reported']:>10}"
            f"{m[k + '_presses_leaked']:>8}{m[k + '_detections']:>12}"
        )


# --------------------------------------------------------------------------------------------
# 5. Look-ahead


def run_lookahead(cases: Sequence[Case], pool: Executor | None) -> dict[str, Any]:
    rows = []
    for la in LOOKAHEADS_MS:
        outs, _ = mask_many(
            [c.signal for c in cases], MaskConfig(lookahead_ms=la, style="silence"), frame=40
        )
        unc_cases = unc_cases_ro = unc_samples = unc_samples_ro = 0
        names: list[str] = []
        for c, o in zip(cases, outs, strict=True):
            if not c.must_mask:
                continue
            n = sum(int(np.count_nonzero(o[p.start : p.end])) for p in c.presses)
            if n:
                names.append(f"{c.name} ({n})")
                if c.report_only:
                    unc_cases_ro += 1
                    unc_samples_ro += n
                else:
                    unc_cases += 1
                    unc_samples += n
        found = decode_all(pool, outs)
        rows.append(
            {
                "lookahead_ms": la,
                "uncovered_cases": unc_cases,
                "uncovered_samples": unc_samples,
                "uncovered_report_only_cases": unc_cases_ro,
                "uncovered_report_only_samples": unc_samples_ro,
                "detections": sum(len(f) for f in found),
                "cases_with_detections": sum(bool(f) for f in found),
                "uncovered_names": names[:20],  # name (uncovered samples), first 20
            }
        )
    return {
        "frame_ms": 5,
        "style": "silence",
        "must_mask_cases": sum(c.must_mask and not c.report_only for c in cases),
        "must_mask_report_only_cases": sum(c.must_mask and c.report_only for c in cases),
        "cases": len(cases),
        "rows": rows,
        "shortest_covering_except_report_only_ms": next(
            (x["lookahead_ms"] for x in rows if x["uncovered_cases"] == 0), None
        ),
        "shortest_covering_all_ms": next(
            (
                x["lookahead_ms"]
                for x in rows
                if x["uncovered_cases"] == 0 and x["uncovered_report_only_cases"] == 0
            ),
            None,
        ),
    }


def print_lookahead(r: dict[str, Any]) -> None:
    print(
        f"\n== 5. Look-ahead sweep ({r['frame_ms']} ms frames, style {r['style']}; "
        f"{r['must_mask_cases']} must-mask cases + {r['must_mask_report_only_cases']} "
        f"report-only; decoder over all {r['cases']} cases) =="
    )
    print(
        f"{'look-ahead':>10}{'uncovered cases':>17}{'samples':>9}"
        f"{'report-only cases':>19}{'samples':>9}{'detections':>12}{'in cases':>10}"
    )
    for x in r["rows"]:
        print(
            f"{x['lookahead_ms']:>7g} ms{x['uncovered_cases']:>17}{x['uncovered_samples']:>9}"
            f"{x['uncovered_report_only_cases']:>19}{x['uncovered_report_only_samples']:>9}"
            f"{x['detections']:>12}{x['cases_with_detections']:>10}"
        )
    for x in r["rows"]:
        if 0 < len(x["uncovered_names"]) <= 6:
            print(f"  uncovered at {x['lookahead_ms']:g} ms: " + ", ".join(x["uncovered_names"]))
    print(
        "shortest look-ahead with every tone covered: "
        f"{fmt(r['shortest_covering_except_report_only_ms'], 'g', ' ms')} (all but report-only), "
        f"{fmt(r['shortest_covering_all_ms'], 'g', ' ms')} (all cases; — = none up to "
        f"{LOOKAHEADS_MS[-1]:g} ms)"
    )


# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes for the adversarial decoder (1 = in process)",
    )
    args = ap.parse_args(argv)
    size = QUICK if args.quick else FULL
    show = not args.json
    timing: dict[str, float] = {}
    result: dict[str, Any] = {"quick": size.quick, "timing_s": timing}
    pool: Executor | None = None
    if args.workers > 1:
        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork"))
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        r = fn()
        timing[name] = round(time.perf_counter() - t0, 2)
        if show:
            print(f"[{name}: {timing[name]:.1f} s]", flush=True)
        return r

    try:
        cases = timed("setup", lambda: list(q24_battery(ci_sized=size.quick)))
        speech, why = load_speech(size)
        if show:
            print(
                f"battery: {len(cases)} cases ({'CI-sized' if size.quick else 'full'}); "
                f"speech: {'unavailable' if speech is None else f'{speech.size / 480000:.1f} min'}"
            )
        result["battery"] = timed("battery", lambda: run_battery(cases))
        if show:
            print_battery(result["battery"])
        result["sweeps"] = timed("sweeps", lambda: run_sweeps(size))
        if show:
            print_sweeps(result["sweeps"])
        result["talkoff"] = timed("talkoff", lambda: run_talkoff(size, speech, why))
        if show:
            print_talkoff(result["talkoff"])
        result["masking"] = timed("masking", lambda: run_masking(cases, speech, why, size, pool))
        if show:
            print_masking(result["masking"])
        result["lookahead"] = timed("lookahead", lambda: run_lookahead(cases, pool))
        if show:
            print_lookahead(result["lookahead"])
    finally:
        if pool is not None:
            pool.shutdown()
    timing["total"] = round(time.perf_counter() - t_all, 2)
    if show:
        print("\ntiming (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    else:
        print(json.dumps(result, default=_json_default))
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.bool_):
        return o.item()
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    sys.exit(main())
