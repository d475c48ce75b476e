"""An adversarial DTMF decoder: proves that masked audio leaks no digit.

It is deliberately far more sensitive than any real receiver (Q.24 receivers want 40 ms
tones at -36 dBm0 or louder, within ±1.5 % and 8/4 dB twist): it finds keys of 10 ms or more,
down to -50 dBm0, ±5 % off frequency, 10 dB of twist either way, in 15 dB S/N. It must never
fire on silence, noise or a single steady tone (a flat masking tone, starting or stopping
abruptly or crossfaded), so a detection in masked output means the masker let a key through.

Two independent methods, each vectorised over all windows of the signal:

``lsq``: a least-squares two-tone fit on 5 ms windows (40 samples, hop 10). For every window
and every frequency of a grid it fits a*cos + b*sin; the best grid frequency in the row band
and in the column band are then fitted jointly (four basis columns, precomputed inverse Gram
matrices). A window votes for the key nearest those frequencies when the joint fit explains
>= 90 % of the window's energy, both tone amplitudes are above -63 dBm0 and within 12 dB of
each other, and the pair explains clearly more than the best single tone anywhere in
200-3600 Hz (so one tone between the groups, which two close grid tones can mimic over 5 ms,
does not vote). A detection is a run of consecutive votes spanning >= 8 ms.

``goertzel``: DFT bins (a Goertzel filter is one DFT bin) on 10 ms windows (80 samples, hop
20) at each DTMF frequency and ±2.5 %, ±5 % off it. A window votes when the strongest row and
column tones are above -63 dBm0, each 3 dB above the other tones of its group that are not
its neighbours (neighbouring tones are 10 % apart, inside one bin's main lobe at 10 ms), within
12 dB of each other, and carry >= 80 % of the window energy, clearly more than the strongest
single bin between 500 and 2000 Hz (a tone between the groups lights a row and a column bin
through their main lobes). A detection is >= 2 consecutive votes. On its own it finds keys
from about 15 ms; the 10 ms ones rest on ``lsq``. (At a 50 % share it would take 10 ms keys
too, but speech then makes it fire about 150 times a minute.)

Consecutive votes may flip between keypad neighbours, diagonals included (a tone 5 % off lies
nearly halfway to the next one); a run is reported as its most frequent key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from dtmfmask.tones import COL_FREQS, KEYPAD, ROW_FREQS, SAMPLE_RATE, dbm0_to_amplitude

Method = Literal["lsq", "goertzel"]
METHODS: tuple[Method, ...] = ("lsq", "goertzel")
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Detection:
    """A key found in samples ``start`` up to ``end`` (exclusive) by ``method``."""

    digit: str
    start: int
    end: int
    method: Method


# Thresholds (see the module docstring).
AMPLITUDE_FLOOR = dbm0_to_amplitude(-63.0)
MAX_TWIST_DB = 12.0

LSQ_WINDOW = 40
LSQ_HOP = 10
LSQ_GRID_STEP_HZ = 12.5
LSQ_GRID = (200.0, 3600.0)
LSQ_BAND_MARGIN = 0.06  # row/col search bands extend 6 % beyond the outer tones
LSQ_MIN_EXPLAINED = 0.90
LSQ_MIN_GAIN_OVER_SINGLE = 0.03  # pair explains at least this much more than one tone
LSQ_MIN_RESIDUAL_RATIO = 2.0  # and leaves at most half the single tone's residual
LSQ_MIN_SPAN = 64  # samples (8 ms)
LSQ_PREFILTER = 0.5  # row-band best + col-band best single fits, fraction of energy

GOERTZEL_WINDOW = 80
GOERTZEL_HOP = 20
GOERTZEL_OFFSETS = tuple(np.linspace(-0.05, 0.05, 9).tolist())  # 1.25 % steps
GOERTZEL_SINGLE_GRID = (500.0, 2000.0, 12.5)  # where one tone can light both groups' bins
GOERTZEL_MIN_GAIN_OVER_SINGLE = 0.03
GOERTZEL_DOMINANCE = 2.0  # 3 dB
GOERTZEL_MIN_SHARE = 0.8  # 0.5 gave ~150 false keys per minute of speech
GOERTZEL_MIN_RUN = 2

CHUNK_WINDOWS = 8192
_EPS = 1e-9


def _windows(signal: FloatArray, width: int, hop: int) -> FloatArray:
    if signal.size < width:
        return np.zeros((0, width))
    view: FloatArray = sliding_window_view(signal, width)[::hop]
    return view


def _cos_sin(freqs: FloatArray, width: int) -> FloatArray:
    """Basis matrix (width, 2 * len(freqs)): columns cos f0, sin f0, cos f1, sin f1, ..."""
    n = np.arange(width, dtype=np.float64)[:, None]
    w = 2.0 * np.pi * freqs[None, :] / SAMPLE_RATE * n
    basis = np.empty((width, 2 * freqs.size))
    basis[:, 0::2] = np.cos(w)
    basis[:, 1::2] = np.sin(w)
    return basis


def _nearest(freqs: FloatArray, targets: Sequence[float]) -> IntArray:
    idx: IntArray = np.argmin(np.abs(np.log(freqs[:, None] / np.asarray(targets))), axis=1)
    return idx


# --------------------------------------------------------------------------------------------
# Method a: least-squares two-tone fit


@dataclass(frozen=True)
class _LsqTables:
    basis: FloatArray  # (W, 2F): per grid frequency an orthonormal pair spanning cos, sin
    r_inv: FloatArray  # (F, 2, 2): orthonormal coefficients to cos/sin coefficients
    row_idx: IntArray  # grid indices of the row band
    col_idx: IntArray
    pair_inv: FloatArray  # (R, C, 4, 4): inverse Gram of each (row-band, col-band) pair
    row_key: IntArray  # keypad row of each row-band frequency
    col_key: IntArray


@cache
def _lsq_tables() -> _LsqTables:
    freqs = np.arange(LSQ_GRID[0], LSQ_GRID[1] + 1e-9, LSQ_GRID_STEP_HZ)
    raw = _cos_sin(freqs, LSQ_WINDOW).reshape(LSQ_WINDOW, freqs.size, 2).transpose(1, 0, 2)
    q, r = np.linalg.qr(raw)  # (F, W, 2), (F, 2, 2)
    lo = 1.0 - LSQ_BAND_MARGIN
    hi = 1.0 + LSQ_BAND_MARGIN
    row_idx = np.flatnonzero((freqs >= ROW_FREQS[0] * lo) & (freqs <= ROW_FREQS[-1] * hi))
    col_idx = np.flatnonzero((freqs >= COL_FREQS[0] * lo) & (freqs <= COL_FREQS[-1] * hi))
    shape = (row_idx.size, col_idx.size, LSQ_WINDOW, 2)
    joint = np.concatenate(
        [np.broadcast_to(q[row_idx][:, None], shape), np.broadcast_to(q[col_idx][None], shape)],
        axis=3,
    )  # (R, C, W, 4)
    return _LsqTables(
        basis=np.ascontiguousarray(q.transpose(1, 0, 2).reshape(LSQ_WINDOW, -1)),
        r_inv=np.linalg.inv(r),
        row_idx=row_idx,
        col_idx=col_idx,
        pair_inv=np.linalg.inv(np.einsum("rcwi,rcwj->rcij", joint, joint)),
        row_key=_nearest(freqs[row_idx], ROW_FREQS),
        col_key=_nearest(freqs[col_idx], COL_FREQS),
    )


@dataclass(frozen=True)
class WindowVotes:
    """Per-window results of one method: ``key`` is row*4+col or -1 (no vote); window i covers
    samples i*hop .. i*hop+width."""

    key: IntArray
    width: int
    hop: int
    explained: FloatArray  # lsq: fraction explained by the pair; goertzel: tones' share


def _best_partner(
    fixed: FloatArray, others: FloatArray, inv: FloatArray, row_fixed: bool
) -> IntArray:
    """Index of the grid frequency in ``others`` (N, K, 2) that, fitted jointly with the
    ``fixed`` tone (N, 2), explains most energy. ``inv`` is (N, K, 4, 4), ordered row, col."""
    f = np.broadcast_to(fixed[:, None, :], others.shape)
    cv = np.concatenate([f, others] if row_fixed else [others, f], axis=2)  # (N, K, 4)
    explained = np.einsum("nki,nkij,nkj->nk", cv, inv, cv, optimize=False)
    best: IntArray = np.argmax(explained, axis=1)
    return best


def lsq_votes(signal: npt.ArrayLike) -> WindowVotes:
    """Method a, per window."""
    x = np.asarray(signal, dtype=np.float64)
    t = _lsq_tables()
    wins = _windows(x, LSQ_WINDOW, LSQ_HOP)
    keys = np.full(len(wins), -1, dtype=np.int64)
    explained = np.zeros(len(wins))
    for s in range(0, len(wins), CHUNK_WINDOWS):
        xw = np.ascontiguousarray(wins[s : s + CHUNK_WINDOWS])
        energy = np.einsum("ij,ij->i", xw, xw) + _EPS
        flat = xw @ t.basis  # (N, 2F), orthonormal coefficients
        c = flat.reshape(len(xw), -1, 2)
        sq = flat * flat
        single = sq[:, 0::2] + sq[:, 1::2]
        frac_single = single.max(axis=1) / energy
        row_single, col_single = single[:, t.row_idx], single[:, t.col_idx]
        # Cheap necessary conditions first; only candidates get the joint fit. Two tones at
        # the floor carry 40 * floor^2; row and column tones are nearly orthogonal over 5 ms,
        # so a pair explaining >= 90 % shows in the bands' single fits (bound checked in tests).
        cand = np.flatnonzero(
            (energy >= LSQ_WINDOW * AMPLITUDE_FLOOR**2 * 0.5)
            & (frac_single <= 1.0 - LSQ_MIN_GAIN_OVER_SINGLE)
            & ((row_single.max(axis=1) + col_single.max(axis=1)) >= LSQ_PREFILTER * energy)
        )
        if cand.size == 0:
            continue
        idx = np.arange(cand.size)
        c_row = c[cand][:, t.row_idx]  # (M, R, 2)
        c_col = c[cand][:, t.col_idx]  # (M, C, 2)
        # coordinate ascent over the two grids: the strong tone's sidelobes can outweigh the
        # weak tone in its own band, so each tone is chosen jointly given the other
        ir = np.argmax(row_single[cand], axis=1)
        ic = _best_partner(c_row[idx, ir], c_col, t.pair_inv[ir], row_fixed=True)
        ir = _best_partner(c_col[idx, ic], c_row, t.pair_inv[:, ic].swapaxes(0, 1), False)
        ic = _best_partner(c_row[idx, ir], c_col, t.pair_inv[ir], row_fixed=True)
        cv = np.concatenate([c_row[idx, ir], c_col[idx, ic]], axis=1)  # (M, 4)
        theta = np.einsum("nij,nj->ni", t.pair_inv[ir, ic], cv)
        frac_pair = np.einsum("ni,ni->n", cv, theta) / energy[cand]
        raw_r = np.einsum("nij,nj->ni", t.r_inv[t.row_idx[ir]], theta[:, :2])
        raw_c = np.einsum("nij,nj->ni", t.r_inv[t.col_idx[ic]], theta[:, 2:])
        amp_r = np.hypot(raw_r[:, 0], raw_r[:, 1])
        amp_c = np.hypot(raw_c[:, 0], raw_c[:, 1])
        fs = frac_single[cand]
        twist = np.abs(20.0 * np.log10((amp_r + _EPS) / (amp_c + _EPS)))
        vote = (
            (frac_pair >= LSQ_MIN_EXPLAINED)
            & (amp_r >= AMPLITUDE_FLOOR)
            & (amp_c >= AMPLITUDE_FLOOR)
            & (twist <= MAX_TWIST_DB)
            & (frac_pair - fs >= LSQ_MIN_GAIN_OVER_SINGLE)
            & (1.0 - fs >= LSQ_MIN_RESIDUAL_RATIO * (1.0 - frac_pair))
        )
        key = t.row_key[ir] * 4 + t.col_key[ic]
        keys[s + cand] = np.where(vote, key, -1)
        explained[s + cand] = frac_pair
    return WindowVotes(keys, LSQ_WINDOW, LSQ_HOP, explained)


# --------------------------------------------------------------------------------------------
# Method b: low-threshold Goertzel


@cache
def _goertzel_basis() -> FloatArray:
    """Bins: 8 tones x offsets, then the single-tone grid."""
    tones = np.asarray(ROW_FREQS + COL_FREQS)
    freqs = (tones[:, None] * (1.0 + np.asarray(GOERTZEL_OFFSETS))[None, :]).ravel()
    lo, hi, step = GOERTZEL_SINGLE_GRID
    grid = np.arange(lo, hi + 1e-9, step)
    return _cos_sin(np.concatenate([freqs, grid]), GOERTZEL_WINDOW)


def _group_pick(power: FloatArray) -> tuple[IntArray, FloatArray, npt.NDArray[np.bool_]]:
    """For (N, 4) tone powers of one group: best tone, its power, and whether it is
    dominant over the group's non-neighbouring tones by GOERTZEL_DOMINANCE."""
    best = np.argmax(power, axis=1)
    p_best = power[np.arange(len(power)), best]
    far = np.abs(np.arange(4)[None, :] - best[:, None]) >= 2
    rival = np.where(far, power, 0.0).max(axis=1)
    return best, p_best, p_best >= GOERTZEL_DOMINANCE * rival


def goertzel_votes(signal: npt.ArrayLike) -> WindowVotes:
    """Method b, per window."""
    x = np.asarray(signal, dtype=np.float64)
    basis = _goertzel_basis()
    n = GOERTZEL_WINDOW
    wins = _windows(x, n, GOERTZEL_HOP)
    keys = np.full(len(wins), -1, dtype=np.int64)
    share = np.zeros(len(wins))
    for s in range(0, len(wins), CHUNK_WINDOWS):
        xw = np.ascontiguousarray(wins[s : s + CHUNK_WINDOWS])
        energy = np.einsum("ij,ij->i", xw, xw) + _EPS
        c = xw @ basis
        sq = c * c
        mag2_all = sq[:, 0::2] + sq[:, 1::2]  # |X|^2 per bin
        n_tone_bins = 8 * len(GOERTZEL_OFFSETS)
        mag2 = mag2_all[:, :n_tone_bins].reshape(len(xw), 8, -1).max(axis=2)  # best offset
        single_share = 2.0 * mag2_all.max(axis=1) / (n * energy)
        r, p_r, dom_r = _group_pick(mag2[:, :4])
        k, p_c, dom_c = _group_pick(mag2[:, 4:])
        amp_r = 2.0 * np.sqrt(p_r) / n
        amp_c = 2.0 * np.sqrt(p_c) / n
        tone_share = 2.0 * (p_r + p_c) / (n * energy)
        twist = np.abs(20.0 * np.log10((amp_r + _EPS) / (amp_c + _EPS)))
        vote = (
            (amp_r >= AMPLITUDE_FLOOR)
            & (amp_c >= AMPLITUDE_FLOOR)
            & dom_r
            & dom_c
            & (twist <= MAX_TWIST_DB)
            & (tone_share >= GOERTZEL_MIN_SHARE)
            & (tone_share - single_share >= GOERTZEL_MIN_GAIN_OVER_SINGLE)
        )
        keys[s : s + len(xw)] = np.where(vote, r * 4 + k, -1)
        share[s : s + len(xw)] = tone_share
    return WindowVotes(keys, n, GOERTZEL_HOP, share)


# --------------------------------------------------------------------------------------------
# Runs of votes to detections


def _runs(votes: WindowVotes, method: Method, min_windows: int, min_span: int) -> list[Detection]:
    key = votes.key
    if key.size == 0:
        return []
    on = key >= 0
    r, c = key // 4, key % 4
    compatible = np.zeros(key.size, dtype=bool)  # window i continues the run of window i-1
    compatible[1:] = (
        on[1:] & on[:-1] & (np.abs(r[1:] - r[:-1]) <= 1) & (np.abs(c[1:] - c[:-1]) <= 1)
    )
    starts = np.flatnonzero(on & ~compatible)
    stops = np.flatnonzero(on & ~np.append(compatible[1:], False)) + 1  # exclusive
    out: list[Detection] = []
    for a, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        n_win = stop - a
        first, last = a * votes.hop, (stop - 1) * votes.hop + votes.width
        if n_win < min_windows or last - first < min_span:
            continue
        best = int(np.bincount(key[a:stop], minlength=16).argmax())
        out.append(Detection(KEYPAD[best // 4][best % 4], first, last, method))
    return out


def decode(signal: npt.ArrayLike, methods: Iterable[Method] = METHODS) -> list[Detection]:
    """All keys either method finds in ``signal`` (16-bit linear units, 8 kHz), by start."""
    found: list[Detection] = []
    for method in methods:
        if method == "lsq":
            found += _runs(lsq_votes(signal), "lsq", 1, LSQ_MIN_SPAN)
        elif method == "goertzel":
            found += _runs(goertzel_votes(signal), "goertzel", GOERTZEL_MIN_RUN, 0)
        else:
            raise ValueError(f"unknown method {method!r}: expected one of {METHODS}")
    return sorted(found, key=lambda d: (d.start, d.method))


def any_detection(masked_output: npt.ArrayLike) -> list[Detection]:
    """Every detection in a pure test signal's masked output (should be empty: falsy)."""
    return decode(masked_output)


class _HasSpan(Protocol):  # tests.signals.Press or anything with digit/start/end
    digit: str
    start: int
    end: int


def leaks(
    masked_output: npt.ArrayLike,
    presses: Iterable[_HasSpan],
    tolerance_ms: float = 20.0,
    *,
    delay: int = 0,
) -> list[Detection]:
    """Detections in ``masked_output`` that overlap a true press (for speech-mixed material,
    where the speech itself may trigger the decoder elsewhere). ``delay`` is the masker's
    latency in samples (presses move by it); ``tolerance_ms`` widens each press both ways."""
    tol = round(tolerance_ms * SAMPLE_RATE / 1000.0)
    spans = [(p.start + delay - tol, p.end + delay + tol) for p in presses]
    return [d for d in decode(masked_output) if any(d.start < e and d.end > s for s, e in spans)]
