"""Goertzel-style DTMF detection, vectorised across many streams.

The unit of work is a 5 ms sub-block (40 samples at 8 kHz). One matrix product turns every
new sub-block of every stream into complex DFT coefficients at the eight DTMF frequencies;
longer windows are built from those by phase rotation, so a 20 ms window costs four complex
multiply-adds instead of 160 more samples of Goertzel.

Two sets of thresholds run over the same coefficients, on purpose:

* **strict** (20 ms windows, 5 ms hop): what ITU-T Q.24 accepts. Only these become digits.
  The frequency of each tone is measured from the phase advance between the two 10 ms halves
  of the window, which resolves the ±1.5 % accept / ±3.5 % reject figures that plain
  energy-per-bin detectors (spandsp's 102-sample Goertzel) cannot separate on the 697 Hz row.
* **loose** (10 ms and 20 ms windows): anything a decoder could read as a key, including
  off-frequency, weak, strongly twisted and short tones. These only drive the masker.

The core is sans-I/O: samples in, events and mask triggers out; positions are per-stream
sample indices counted from the stream's first sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .events import DigitEnded, DigitEvent, DigitStarted
from .tones import COL_FREQS, FULL_SCALE, FULL_SCALE_DBM0, KEYPAD, ROW_FREQS, SAMPLE_RATE

BLOCK = 40  # samples per sub-block (5 ms): the detector's time grid
# Bins 0-7 are the eight DTMF frequencies. Bins 8-15 sit 4 % below and above each column
# tone: a 10 ms window cannot measure a column tone 5 % off (80 Hz at 1633 Hz, near its
# first null) from the nominal bin alone, and such tones are still readable as keys.
_COL_SIDE = 0.04
_FREQS = np.array(
    ROW_FREQS
    + COL_FREQS
    + tuple(f * (1.0 - _COL_SIDE) for f in COL_FREQS)
    + tuple(f * (1.0 + _COL_SIDE) for f in COL_FREQS),
    dtype=np.float64,
)
NBINS = _FREQS.size
_W0 = 2.0 * np.pi * _FREQS / SAMPLE_RATE
_DIGIT_OF = np.array([KEYPAD[r][c] for r in range(4) for c in range(4)])

F32 = npt.NDArray[np.float32]
C64 = npt.NDArray[np.complex64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds. The strict ones are the Q.24 receiver; the ``mask_`` ones feed the masker."""

    # strict: Q.24 acceptance (count as a digit)
    min_level_dbm0: float = -41.0  # accept -36 and above, reject -45 and below
    max_normal_twist_db: float = 10.0  # high tone weaker than the low tone
    max_reverse_twist_db: float = 6.0  # high tone stronger
    freq_tolerance: float = 0.020  # accept ±1.5 %, reject ±3.5 %
    # Both tones off by nearly the tolerance in opposite directions is how harmonics of a
    # high-pitched voice (3rd and 4th of 307 Hz: 921 and 1228 Hz) pass as '*': a real
    # generator's two tones are at most ±1.5 % each, so at most 3 % apart in ratio.
    max_pair_spread: float = 0.033
    min_tone_ratio: float = 0.75  # the two tones' share of the window's energy
    max_half_imbalance_db: float = 3.0  # tone energy in the two 10 ms halves
    hits_to_start: int = 3  # consecutive 20 ms windows at 5 ms hop (≈30 ms of tone)
    misses_to_end: int = 6  # 30 ms: a 40 ms gap splits, a 10 ms interruption does not
    # loose: mask whatever any decoder could read
    mask_min_level_dbm0: float = -55.0
    mask_max_twist_db: float = 16.0
    mask_freq_tolerance_hz: float = 55.0  # what a 5-10 ms window can still read as a key
    mask_min_tone_ratio: float = 0.93
    mask_max_half_imbalance_db: float = 3.0
    # short bursts: a 10 ms window that is only partly filled, one of whose 5 ms halves is
    # almost nothing but the two tones
    burst_min_window_ratio: float = 0.45
    burst_min_half_ratio: float = 0.97
    burst_max_half_imbalance_db: float = 14.0

    def strict(self) -> _Limits:
        return _Limits(
            self.min_level_dbm0,
            self.max_normal_twist_db,
            self.max_reverse_twist_db,
            self.freq_tolerance,
            self.min_tone_ratio,
            self.max_half_imbalance_db,
            max_pair_spread=self.max_pair_spread,
        )

    def loose(self) -> _Limits:
        return _Limits(
            self.mask_min_level_dbm0,
            self.mask_max_twist_db,
            self.mask_max_twist_db,
            self.mask_freq_tolerance_hz,
            self.mask_min_tone_ratio,
            self.mask_max_half_imbalance_db,
            in_hz=True,
        )

    def burst(self) -> _Limits:
        return _Limits(
            self.mask_min_level_dbm0,
            self.mask_max_twist_db,
            self.mask_max_twist_db,
            self.mask_freq_tolerance_hz,
            self.burst_min_window_ratio,
            self.burst_max_half_imbalance_db,
            in_hz=True,
        )


def _basis() -> F32:
    n = np.arange(BLOCK, dtype=np.float64)[:, None]
    # columns alternate cos and -sin per frequency: x @ basis = Re, Im of the DFT, laid out
    # as complex64
    out = np.empty((BLOCK, 2 * NBINS), dtype=np.float32)
    out[:, 0::2] = np.cos(_W0 * n)
    out[:, 1::2] = -np.sin(_W0 * n)
    return out


_BASIS = _basis()
# rows: cos for every bin, then -sin for every bin (real and imaginary parts of the DFT)
_BASIS_T = np.ascontiguousarray(np.concatenate([_BASIS[:, 0::2], _BASIS[:, 1::2]], axis=1).T)


def _two_bins(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Strongest row bin plus strongest column bin of the 10 ms windows made of sub-blocks
    ``a`` then ``b`` (each (2, NBINS, n, s): real and imaginary planes)."""
    w_re = a[0] + b[0] * _ROT_RE - b[1] * _ROT_IM
    w_im = a[1] + b[0] * _ROT_IM + b[1] * _ROT_RE
    pw = w_re * w_re + w_im * w_im
    out: npt.NDArray[np.float32] = pw[:4].max(axis=0) + pw[4:].max(axis=0)
    return out


def _as_complex(ri: npt.NDArray[np.float32]) -> C64:
    """(2, NBINS, n, s) real/imaginary planes -> (s, n, NBINS) complex64."""
    out: C64 = (ri[0] + 1j * ri[1]).astype(np.complex64).transpose(2, 1, 0)
    return out


# gate: two bins must hold this share of a 10 ms window's energy (a key 5 % off frequency
# with 10 dB twist keeps about half), and the window must not be near-silence (about
# -60 dBm0 for one tone)
_GATE_SHARE = 0.4
# below this many streams with a key in progress, the state machine runs stream by stream
_FEW_STREAMS = 24
_GATE_FLOOR = 2.0e4
_ROT = np.exp(-1j * _W0 * BLOCK).astype(np.complex64)  # phase of f0 over one sub-block
_ROT2 = (_ROT * _ROT).astype(np.complex64)
_ROT_RE = _ROT.real.astype(np.float32)[:, None, None]
_ROT_IM = _ROT.imag.astype(np.float32)[:, None, None]


def _pair_gram_inverse(n: int) -> npt.NDArray[np.float64]:
    """Inverse Gram matrices of [cos, sin] at a row and a column frequency over n samples.

    Indexed [row, col]: turns the DFT projections of a window into a least-squares fit of
    two real sinusoids, which removes each tone's leakage (including the negative-frequency
    image) from the other tone's bin.
    """
    m = np.arange(n, dtype=np.float64)
    out = np.zeros((4, NBINS - 4, 4, 4))
    for r in range(4):
        for c in range(NBINS - 4):
            w = (_W0[r], _W0[4 + c])  # c spans the nominal and the side column bins
            basis = np.stack(
                [np.cos(w[0] * m), np.sin(w[0] * m), np.cos(w[1] * m), np.sin(w[1] * m)]
            )
            out[r, c] = np.linalg.inv(basis @ basis.T)
    return out


# indexed [log2(n / BLOCK), row, col - 4]: windows of 5, 10 and 20 ms
_GINV = np.stack([_pair_gram_inverse(n) for n in (BLOCK, 2 * BLOCK, 4 * BLOCK)])
Win = npt.NDArray[np.int64]  # window length in samples, per candidate


@dataclass(frozen=True, slots=True)
class _Fit:
    row: npt.NDArray[np.complex128]  # each tone as the DFT coefficient it would have alone
    col: npt.NDArray[np.complex128]
    explained: npt.NDArray[np.float64]  # window energy the two-tone fit accounts for


def _decouple(x_row: C64, x_col: C64, r: I64, c: I64, n: Win) -> _Fit:
    """Least-squares fit of both tones at their nominal frequencies.

    With a strong low tone (8 dB normal twist) the rectangular window's sidelobe at the
    column bin is large enough to swing the column's half-window energy by several dB and
    its phase by a quarter radian; the joint fit restores both. On 5 ms windows a sinusoid's
    energy depends on its phase, so the share of energy explained comes from the fit itself.
    """
    proj = np.stack([x_row.real, -x_row.imag, x_col.real, -x_col.imag], axis=-1).astype(np.float64)
    size = np.log2(n // BLOCK).astype(np.int64)
    beta = np.einsum("mij,mj->mi", _GINV[size, r, c - 4], proj)
    half = n / 2.0
    return _Fit(
        (beta[:, 0] - 1j * beta[:, 1]) * half,
        (beta[:, 2] - 1j * beta[:, 3]) * half,
        np.einsum("mi,mi->m", beta, proj),
    )


def _leak(df: npt.NDArray[np.float64], n: Win) -> npt.NDArray[np.float64]:
    """Magnitude response of an n-sample rectangular DFT to a tone ``df`` Hz off its bin."""
    x = np.pi * df / SAMPLE_RATE
    small = np.abs(x) < 1e-9
    num = np.sin(n * x)
    den = n * np.sin(np.where(small, 1.0, x))
    out: npt.NDArray[np.float64] = np.where(small, 1.0, np.abs(num / den))
    # beyond the first null the correction would only amplify noise
    return np.maximum(out, 0.3)


@dataclass(frozen=True, slots=True)
class _Limits:
    min_level_dbm0: float
    max_normal_twist_db: float
    max_reverse_twist_db: float
    freq_tolerance: float  # fraction of the nominal frequency, or Hz when ``in_hz``
    min_tone_ratio: float
    max_half_imbalance_db: float
    in_hz: bool = False
    max_pair_spread: float = 1.0


@dataclass(frozen=True, slots=True)
class _Measure:
    """Tone measurements for a set of candidate windows (flat arrays)."""

    ratio: npt.NDArray[np.float64]  # the two tones' share of the window's energy
    half_ratio: npt.NDArray[np.float64]  # the better of the two halves' shares
    lvl_row: npt.NDArray[np.float64]
    lvl_col: npt.NDArray[np.float64]
    df_row: npt.NDArray[np.float64]  # frequency offsets, Hz
    df_col: npt.NDArray[np.float64]
    f_row: npt.NDArray[np.float64]
    f_col: npt.NDArray[np.float64]
    imbalance_db: npt.NDArray[np.float64]  # worst tone-energy difference between the halves

    def take(self, part: slice) -> _Measure:
        return _Measure(*(getattr(self, f)[part] for f in self.__slots__))

    def accept(self, lim: _Limits) -> npt.NDArray[np.bool_]:
        twist = self.lvl_row - self.lvl_col
        ok: npt.NDArray[np.bool_] = (
            (self.ratio >= lim.min_tone_ratio)
            & (self.lvl_row >= lim.min_level_dbm0)
            & (self.lvl_col >= lim.min_level_dbm0)
            & (twist <= lim.max_normal_twist_db)
            & (twist >= -lim.max_reverse_twist_db)
            & (
                np.abs(self.df_row)
                <= (lim.freq_tolerance if lim.in_hz else lim.freq_tolerance * self.f_row)
            )
            & (
                np.abs(self.df_col)
                <= (lim.freq_tolerance if lim.in_hz else lim.freq_tolerance * self.f_col)
            )
            & (self.imbalance_db <= lim.max_half_imbalance_db)
            & (np.abs(self.df_row / self.f_row - self.df_col / self.f_col) <= lim.max_pair_spread)
        )
        return ok


def _level(p: npt.NDArray[np.float64], n: Win) -> npt.NDArray[np.float64]:
    """dBm0 of a tone whose energy over an n-sample window is ``p``."""
    out: npt.NDArray[np.float64] = FULL_SCALE_DBM0 + 10.0 * np.log10(
        np.maximum(2.0 * p / n, 1e-12) / FULL_SCALE**2
    )
    return out


def _measure(
    x_row: C64,
    x_col: C64,
    a_row: C64,
    b_row: C64,
    a_col: C64,
    b_col: C64,
    r: I64,
    c: I64,
    total_a: npt.NDArray[np.float64],
    total_b: npt.NDArray[np.float64],
    n: Win,
) -> _Measure:
    """Measure the chosen row/col pair in each candidate window (of ``n`` samples each).

    ``x_*`` is the window's coefficient at the chosen row/col bin; ``a_*``/``b_*`` are the
    coefficients of its two halves (each relative to its own first sample). The frequency
    offset comes from the phase advance between the halves, then the energy is corrected for
    the rectangular window's roll-off at that offset.
    """
    half = n // 2
    m = r.size
    f_row = _FREQS[r]
    f_col = _FREQS[c]
    fx = _decouple(x_row, x_col, r, c, n)
    # both halves in one fit
    fh = _decouple(
        np.concatenate([a_row, b_row]),
        np.concatenate([a_col, b_col]),
        np.concatenate([r, r]),
        np.concatenate([c, c]),
        np.concatenate([half, half]),
    )
    fa_row, fb_row = fh.row[:m], fh.row[m:]
    fa_col, fb_col = fh.col[:m], fh.col[m:]
    w_row = 2.0 * np.pi * f_row / SAMPLE_RATE
    w_col = 2.0 * np.pi * f_col / SAMPLE_RATE
    ph_row = np.angle(fb_row * np.conj(fa_row)) - w_row * half
    ph_col = np.angle(fb_col * np.conj(fa_col)) - w_col * half
    scale = SAMPLE_RATE / (2.0 * np.pi * half)
    df_row = ((ph_row + np.pi) % (2.0 * np.pi) - np.pi) * scale
    df_col = ((ph_col + np.pi) % (2.0 * np.pi) - np.pi) * scale
    # squared roll-off of each tone's bin at its measured offset, full window and halves
    g_row, g_col = _leak(df_row, n) ** 2, _leak(df_col, n) ** 2
    h_row, h_col = _leak(df_row, half) ** 2, _leak(df_col, half) ** 2
    pr = fx.row.real**2 + fx.row.imag**2
    pc = fx.col.real**2 + fx.col.imag**2
    pha_r = fa_row.real**2 + fa_row.imag**2
    phb_r = fb_row.real**2 + fb_row.imag**2
    pha_c = fa_col.real**2 + fa_col.imag**2
    phb_c = fb_col.real**2 + fb_col.imag**2

    def share(
        explained: npt.NDArray[np.float64],
        p_r: npt.NDArray[np.float64],
        p_c: npt.NDArray[np.float64],
        g_r: npt.NDArray[np.float64],
        g_c: npt.NDArray[np.float64],
        total: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float64]:
        """Explained share of the window energy, corrected for the tones' offsets."""
        gain = (p_r + p_c + 1e-12) / (p_r / g_r + p_c / g_c + 1e-12)
        out: npt.NDArray[np.float64] = explained / gain / np.maximum(total, 1e-9)
        return out

    p_row = 2.0 * pr / (n * g_row)
    p_col = 2.0 * pc / (n * g_col)
    half_ratio = np.maximum(
        share(fh.explained[:m], pha_r, pha_c, h_row, h_col, total_a),
        share(fh.explained[m:], phb_r, phb_c, h_row, h_col, total_b),
    )
    imb = np.maximum(
        np.abs(np.log10((pha_r + 1e-9) / (phb_r + 1e-9))),
        np.abs(np.log10((pha_c + 1e-9) / (phb_c + 1e-9))),
    )
    return _Measure(
        ratio=share(fx.explained, pr, pc, g_row, g_col, total_a + total_b),
        half_ratio=half_ratio,
        lvl_row=_level(p_row, n),
        lvl_col=_level(p_col, n),
        df_row=df_row,
        df_col=df_col,
        f_row=f_row,
        f_col=f_col,
        imbalance_db=10.0 * imb,
    )


@dataclass(frozen=True, slots=True)
class _Candidates:
    """Candidate windows gathered for measurement: where they are and what they hold."""

    i: I64  # stream row in the batch
    j: I64  # window (new sub-block) index
    row: I64
    col: I64
    coeffs: tuple[C64, C64, C64, C64, C64, C64]  # whole/first/second at row, then at col
    t_first: npt.NDArray[np.float64]
    t_second: npt.NDArray[np.float64]


def _gather(
    cand: npt.NDArray[np.bool_],
    row: I64,
    col: I64,
    whole: C64,
    first: C64,
    second: C64,
    t_first: npt.NDArray[np.float64],
    t_second: npt.NDArray[np.float64],
) -> _Candidates:
    """The candidate windows (stream i, window j) at their strongest row/col bins.

    ``whole``, ``first``, ``second`` are the (s, k, bins) coefficients of the window and of
    its two halves; ``t_*`` the halves' energies.
    """
    i, j = np.nonzero(cand)
    r = row[i, j]
    c = col[i, j]
    return _Candidates(
        i,
        j,
        r,
        c,
        (
            whole[i, j, r],
            first[i, j, r],
            second[i, j, r],
            whole[i, j, c],
            first[i, j, c],
            second[i, j, c],
        ),
        t_first[i, j],
        t_second[i, j],
    )


def selector(sids: I64) -> slice | I64:
    """Index for per-stream state: a slice (a view, no copy) when the batch is a run of
    consecutive stream ids, as it is when a caller batches all its streams in order."""
    first, last = int(sids[0]), int(sids[-1])
    if last - first + 1 == sids.size and (sids.size < 2 or bool((np.diff(sids) == 1).all())):
        return slice(first, last + 1)
    return sids


@dataclass(slots=True)
class BatchResult:
    """What one ``process`` call found: digit events and the windows that must be masked."""

    events: list[DigitEvent]
    # one row per window that the masker must cover: stream id, first and end sample
    mask_stream: I64
    mask_start: I64
    mask_end: I64


class DtmfDetector:
    """Streaming DTMF detector over many streams at once.

    ``process(streams, frames)`` takes a 2-D batch (one row per stream id, any common length);
    frames of any length are accepted, and the detector keeps each stream's partial sub-block.
    """

    # per-stream state, indexed by stream id (grown by doubling)
    _hist_ri: npt.NDArray[np.float32]
    _hist_t: npt.NDArray[np.float32]
    _hist_tonal: npt.NDArray[np.bool_]
    _pend: npt.NDArray[np.float32]
    _pend_len: I64
    _blocks: I64
    _cur: I64
    _cur_start: I64
    _last_hit_end: I64
    _run_digit: I64
    _run_len: I64
    _run_start: I64
    _misses: I64

    def __init__(self, config: DetectorConfig | None = None, capacity: int = 16) -> None:
        self.config = config or DetectorConfig()
        self._strict = self.config.strict()
        self._loose = self.config.loose()
        self._burst = self.config.burst()
        self._cap = 0
        self._free: list[int] = []
        self._next = 0
        self._grow(max(capacity, 1))

    # --- stream table -------------------------------------------------------------------
    def _grow(self, cap: int) -> None:
        old = self._cap

        def g(
            a: npt.NDArray[np.generic] | None, shape: tuple[int, ...], dtype: type, fill: float = 0
        ) -> Any:
            new: Any = np.full((cap, *shape), fill, dtype=dtype)
            if a is not None and old:
                new[:old] = a
            return new

        first = old == 0
        # sub-block history with streams on the last axis (see _run)
        ri = np.zeros((2, NBINS, 3, cap), dtype=np.float32)
        ht = np.zeros((3, cap), dtype=np.float32)
        hn = np.zeros((3, cap), dtype=np.bool_)
        if not first:
            ri[..., :old] = self._hist_ri
            ht[:, :old] = self._hist_t
            hn[:, :old] = self._hist_tonal
        self._hist_ri, self._hist_t, self._hist_tonal = ri, ht, hn
        self._pend = g(None if first else self._pend, (BLOCK,), np.float32)
        self._pend_len = g(None if first else self._pend_len, (), np.int64)
        self._blocks = g(None if first else self._blocks, (), np.int64)  # sub-blocks seen
        self._cur = g(None if first else self._cur, (), np.int64, -1)  # digit index or -1
        self._cur_start = g(None if first else self._cur_start, (), np.int64)
        self._last_hit_end = g(None if first else self._last_hit_end, (), np.int64)
        self._run_digit = g(None if first else self._run_digit, (), np.int64, -1)
        self._run_len = g(None if first else self._run_len, (), np.int64)
        self._run_start = g(None if first else self._run_start, (), np.int64)
        self._misses = g(None if first else self._misses, (), np.int64)
        self._cap = cap

    def add_stream(self) -> int:
        if self._free:
            sid = self._free.pop()
        else:
            if self._next >= self._cap:
                self._grow(self._cap * 2)
            sid = self._next
            self._next += 1
        self._reset(sid)
        return sid

    def _reset(self, sid: int) -> None:
        self._hist_ri[..., sid] = 0
        self._hist_t[:, sid] = 0
        self._hist_tonal[:, sid] = False
        self._pend_len[sid] = 0
        self._blocks[sid] = 0
        self._cur[sid] = -1
        self._run_digit[sid] = -1
        self._run_len[sid] = 0
        self._misses[sid] = 0

    def remove_stream(self, stream: int) -> None:
        self._reset(stream)
        self._free.append(stream)

    def position(self, stream: int) -> int:
        """Samples consumed so far (including the partial sub-block held back)."""
        return int(self._blocks[stream]) * BLOCK + int(self._pend_len[stream])

    # --- processing ---------------------------------------------------------------------
    def process(self, streams: Sequence[int] | I64, frames: npt.ArrayLike) -> list[DigitEvent]:
        return self.process_batch(streams, frames).events

    def process_batch(self, streams: Sequence[int] | I64, frames: npt.ArrayLike) -> BatchResult:
        sids = np.asarray(streams, dtype=np.int64).reshape(-1)
        x = np.asarray(frames, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.shape[0] != sids.shape[0]:
            raise ValueError(f"{x.shape[0]} frames for {sids.shape[0]} streams")
        n = x.shape[1]
        if sids.size == 0 or n == 0:
            return BatchResult([], *(np.zeros(0, np.int64),) * 3)
        if n % BLOCK == 0 and not self._pend_len[sids].any():
            return self._run(sids, x.reshape(sids.size, n // BLOCK, BLOCK))
        # general path: streams with a partial sub-block pending, or odd frame lengths
        parts = [self._run_ragged(int(s), x[i]) for i, s in enumerate(sids)]
        return BatchResult(
            [e for p in parts for e in p.events],
            np.concatenate([p.mask_stream for p in parts]),
            np.concatenate([p.mask_start for p in parts]),
            np.concatenate([p.mask_end for p in parts]),
        )

    def _run_ragged(self, sid: int, frame: F32) -> BatchResult:
        p = int(self._pend_len[sid])
        data = np.concatenate([self._pend[sid, :p], frame])
        k = data.size // BLOCK
        rest = data.size - k * BLOCK
        self._pend[sid, :rest] = data[k * BLOCK :]
        self._pend_len[sid] = 0
        if k == 0:
            self._pend_len[sid] = rest
            return BatchResult([], *(np.zeros(0, np.int64),) * 3)
        res = self._run(np.array([sid], dtype=np.int64), data[: k * BLOCK].reshape(1, k, BLOCK))
        self._pend_len[sid] = rest
        return res

    def _run(self, sids: I64, blocks: F32) -> BatchResult:
        s_all, k, _ = blocks.shape
        # Layout (re/im, bin, sub-block, stream): streams innermost, so every elementwise
        # step below runs over long contiguous rows, and reductions over bins are maxima of
        # whole arrays.
        by_time = np.ascontiguousarray(blocks.transpose(1, 0, 2)).reshape(k * s_all, BLOCK)
        ri = (_BASIS_T @ by_time.T).reshape(2, NBINS, k, s_all)
        t_new = np.einsum("ij,ij->i", by_time, by_time).reshape(k, s_all)
        sel = selector(sids)
        hist = self._hist_ri[..., sel]  # (2, NBINS, 3, s)
        hist_t = self._hist_t[:, sel]  # (3, s)
        # Gate: a 10 ms window can hold a key only if two bins (one per group) hold a good part
        # of its energy. Speech and silence mostly stop here, so the window analysis below
        # runs only on the few streams that have something tone-like.
        # the first window pairs the last stored sub-block with the first new one
        two = np.concatenate(
            [_two_bins(hist[:, :, 2:], ri[:, :, :1]), _two_bins(ri[:, :, :-1], ri[:, :, 1:])]
        )  # (k, s)
        t_prev = np.concatenate([hist_t[2:], t_new], axis=0)
        t10 = t_prev[:k] + t_prev[1:]
        tonal_new = (two * (2.0 / (2 * BLOCK)) >= _GATE_SHARE * t10) & (t10 >= _GATE_FLOOR)
        # a 20 ms window is looked at when either of its 10 ms halves passed (or the one
        # straddling them)
        tonal = np.concatenate([self._hist_tonal[:, sel], tonal_new], axis=0)  # (k+3, s)
        gate20 = tonal[1 : k + 1] | tonal[2 : k + 2] | tonal[3 : k + 3]
        base_all = self._blocks[sids].copy()  # absolute index of the first new sub-block
        self._blocks[sids] = base_all + k
        rows = np.flatnonzero(gate20.any(axis=0))
        old_ri = hist[..., rows] if rows.size else None
        old_t = hist_t[:, rows] if rows.size else None
        if k >= 3:
            self._hist_ri[..., sel] = ri[:, :, k - 3 :]
            self._hist_t[:, sel] = t_new[k - 3 :]
        else:
            self._hist_ri[..., sel] = np.concatenate([hist[:, :, k:], ri], axis=2)
            self._hist_t[:, sel] = np.concatenate([hist_t[k:], t_new], axis=0)
        self._hist_tonal[:, sel] = tonal[-3:]
        strict_all = np.full((s_all, k), -1, dtype=np.int64)
        if old_ri is None or old_t is None:
            events = self._advance(sids, base_all, strict_all)
            return BatchResult(events, *(np.zeros(0, np.int64),) * 3)
        strict_sub, mask = self._windows(
            sids[rows],
            base_all[rows],
            _as_complex(np.concatenate([old_ri, ri[..., rows]], axis=2)),
            np.concatenate([old_t, t_new[:, rows]], axis=0).T.astype(np.float64),
            gate20[:, rows].T,
            tonal_new[:, rows].T,
        )
        strict_all[rows] = strict_sub
        events = self._advance(sids, base_all, strict_all)
        return BatchResult(events, *mask)

    def _windows(
        self,
        sids: I64,
        base: I64,
        c: C64,
        t: npt.NDArray[np.float64],
        gate20: npt.NDArray[np.bool_],
        gate10: npt.NDArray[np.bool_],
    ) -> tuple[I64, tuple[I64, I64, I64]]:
        """Analyse the 20 ms and 10 ms windows ending at each new sub-block.

        ``c``/``t`` hold three sub-blocks of history then the new ones. Returns the strict
        digit index per window (-1 for none) and the mask triggers.
        """
        cfg = self.config
        s, k = gate20.shape
        c0, c1, c2, c3 = c[:, 0:k], c[:, 1 : k + 1], c[:, 2 : k + 2], c[:, 3 : k + 3]
        # 20 ms windows use the nominal bins only; 10 ms windows all of them
        h1 = c0[..., :8] + c1[..., :8] * _ROT[:8]  # first 10 ms half of the 20 ms window
        h2 = c2 + c3 * _ROT  # second half; also the 10 ms loose window
        x20 = h1 + h2[..., :8] * _ROT2[:8]
        t20 = t[:, 0:k] + t[:, 1 : k + 1] + t[:, 2 : k + 2] + t[:, 3 : k + 3]
        t10 = t[:, 2 : k + 2] + t[:, 3 : k + 3]
        p20 = x20.real**2 + x20.imag**2
        p10 = h2.real**2 + h2.imag**2
        row20 = p20[..., :4].argmax(-1)
        col20 = p20[..., 4:].argmax(-1) + 4
        row10 = p10[..., :4].argmax(-1)
        col10 = p10[..., 4:].argmax(-1) + 4
        pr20 = np.take_along_axis(p20, row20[..., None], -1)[..., 0]
        pc20 = np.take_along_axis(p20, col20[..., None], -1)[..., 0]
        pr10 = np.take_along_axis(p10, row10[..., None], -1)[..., 0]
        pc10 = np.take_along_axis(p10, col10[..., None], -1)[..., 0]
        # Cheap pre-filter: a DTMF pair puts most of the window's energy in two bins even
        # before the roll-off correction (which is at most ~0.17 within the loose tolerance).
        cand20 = (pr20 + pc20) * (2.0 / 160.0) >= 0.3 * t20
        cand10 = (pr10 + pc10) * (2.0 / 80.0) >= 0.25 * t10
        cand20 &= gate20
        cand10 &= gate10

        strict_digit = np.full((s, k), -1, dtype=np.int64)
        loose = np.zeros((s, k), dtype=np.bool_)
        loose10 = np.zeros((s, k), dtype=np.bool_)
        t0, t1, t2, t3 = t[:, 0:k], t[:, 1 : k + 1], t[:, 2 : k + 2], t[:, 3 : k + 3]
        w20 = _gather(cand20, row20, col20, x20, h1, h2, t0 + t1, t2 + t3)
        w10 = _gather(cand10, row10, col10, h2, c2, c3, t2, t3)
        n20, n10 = w20.i.size, w10.i.size
        if n20 + n10:
            # one measurement pass over both window lengths: its cost is mostly per call
            cat = [np.concatenate([u, v]) for u, v in zip(w20.coeffs, w10.coeffs, strict=True)]
            m = _measure(
                cat[0],
                cat[3],
                cat[1],
                cat[2],
                cat[4],
                cat[5],
                np.concatenate([w20.row, w10.row]),
                np.concatenate([w20.col, w10.col]),
                np.concatenate([w20.t_first, w10.t_first]),
                np.concatenate([w20.t_second, w10.t_second]),
                np.concatenate([np.full(n20, 4 * BLOCK), np.full(n10, 2 * BLOCK)]),
            )
            if n20:
                m20 = m.take(slice(0, n20))
                ok = m20.accept(self._strict)
                strict_digit[w20.i[ok], w20.j[ok]] = w20.row[ok] * 4 + (w20.col[ok] - 4)
                lok = m20.accept(self._loose)
                loose[w20.i[lok], w20.j[lok]] = True
            if n10:
                m10 = m.take(slice(n20, None))
                lok = m10.accept(self._loose) | (
                    m10.accept(self._burst) & (m10.half_ratio >= cfg.burst_min_half_ratio)
                )
                loose10[w10.i[lok], w10.j[lok]] = True

        # mask triggers: window [first sample, end sample) per hit
        ms: list[I64] = []
        mst: list[I64] = []
        men: list[I64] = []
        for hits, span in ((loose | (strict_digit >= 0), 4), (loose10, 2)):
            ii, jj = np.nonzero(hits)
            if ii.size:
                end_block = base[ii] + jj + 1
                ms.append(sids[ii])
                mst.append((end_block - span) * BLOCK)
                men.append(end_block * BLOCK)
        if ms:
            return strict_digit, (np.concatenate(ms), np.concatenate(mst), np.concatenate(men))
        return strict_digit, (np.zeros(0, np.int64),) * 3

    def _advance_few(self, sids: I64, base: I64, strict_digit: I64, idx: I64) -> list[DigitEvent]:
        """The state machine stream by stream: cheaper than array steps for a few streams."""
        cfg = self.config
        events: list[DigitEvent] = []
        k = strict_digit.shape[1]
        for i in idx.tolist():
            sid = int(sids[i])
            cur = int(self._cur[sid])
            run_d = int(self._run_digit[sid])
            run_n = int(self._run_len[sid])
            run_s = int(self._run_start[sid])
            misses = int(self._misses[sid])
            last_end = int(self._last_hit_end[sid])
            cur_start = int(self._cur_start[sid])
            for j in range(k):
                d = int(strict_digit[i, j])
                end_sample = (int(base[i]) + j + 1) * BLOCK
                if cur >= 0:
                    if d == cur:
                        misses = 0
                        last_end = end_sample
                        continue
                    misses += 1
                    if misses >= cfg.misses_to_end:
                        events.append(DigitEnded(sid, str(_DIGIT_OF[cur]), cur_start, last_end))
                        cur = -1
                        run_d, run_n = -1, 0
                    else:
                        continue
                if d < 0:
                    run_d, run_n = -1, 0
                    continue
                if d == run_d:
                    run_n += 1
                else:
                    run_d, run_n, run_s = d, 1, end_sample - 4 * BLOCK
                if run_n >= cfg.hits_to_start:
                    cur, cur_start, last_end, misses = d, run_s, end_sample, 0
                    run_d, run_n = -1, 0
                    events.append(DigitStarted(sid, str(_DIGIT_OF[cur]), cur_start))
            self._cur[sid] = cur
            self._run_digit[sid] = run_d
            self._run_len[sid] = run_n
            self._run_start[sid] = run_s
            self._misses[sid] = misses
            self._last_hit_end[sid] = last_end
            self._cur_start[sid] = cur_start
        return events

    def _advance(self, sids: I64, base: I64, strict_digit: I64) -> list[DigitEvent]:
        """Run the digit state machine over this batch's windows.

        Vectorised over the streams that have anything going on; a Python loop runs only over
        the few sub-blocks of the batch and over the events themselves.
        """
        active = (
            (self._cur[sids] >= 0) | (self._run_len[sids] > 0) | (strict_digit >= 0).any(axis=1)
        )
        idx = np.flatnonzero(active)
        if idx.size == 0:
            return []
        if idx.size <= _FEW_STREAMS:
            return self._advance_few(sids, base, strict_digit, idx)
        cfg = self.config
        sid = sids[idx]
        cur = self._cur[sid]
        run_d = self._run_digit[sid]
        run_n = self._run_len[sid]
        run_s = self._run_start[sid]
        misses = self._misses[sid]
        last_end = self._last_hit_end[sid]
        cur_start = self._cur_start[sid]
        found: list[tuple[int, int, DigitEvent]] = []  # (position in batch, order, event)
        for j in range(strict_digit.shape[1]):
            d = strict_digit[idx, j]
            end_sample = (base[idx] + j + 1) * BLOCK
            has = cur >= 0
            same = has & (d == cur)
            misses[same] = 0
            last_end[same] = end_sample[same]
            miss = has & ~same
            misses[miss] += 1
            ending = miss & (misses >= cfg.misses_to_end)
            for i in np.flatnonzero(ending).tolist():
                ev: DigitEvent = DigitEnded(
                    int(sid[i]), str(_DIGIT_OF[cur[i]]), int(cur_start[i]), int(last_end[i])
                )
                found.append((i, len(found), ev))
            cur[ending] = -1
            free = ~has | ending
            quiet = free & (d < 0)
            run_d[quiet] = -1
            run_n[quiet] = 0
            tone = free & (d >= 0)
            cont = tone & (d == run_d)
            run_n[cont] += 1
            new = tone & ~cont
            run_d[new] = d[new]
            run_n[new] = 1
            run_s[new] = end_sample[new] - 4 * BLOCK
            start = tone & (run_n >= cfg.hits_to_start)
            if start.any():
                cur[start] = d[start]
                cur_start[start] = run_s[start]
                last_end[start] = end_sample[start]
                misses[start] = 0
                run_d[start] = -1
                run_n[start] = 0
                for i in np.flatnonzero(start).tolist():
                    ev = DigitStarted(int(sid[i]), str(_DIGIT_OF[cur[i]]), int(cur_start[i]))
                    found.append((i, len(found), ev))
        self._cur[sid] = cur
        self._run_digit[sid] = run_d
        self._run_len[sid] = run_n
        self._run_start[sid] = run_s
        self._misses[sid] = misses
        self._last_hit_end[sid] = last_end
        self._cur_start[sid] = cur_start
        found.sort(key=lambda item: (item[0], item[1]))  # per stream, in time order
        return [ev for _, _, ev in found]

    def finish(self, stream: int) -> list[DigitEvent]:
        """End of input for ``stream``: close a digit still in progress."""
        events: list[DigitEvent] = []
        cur = int(self._cur[stream])
        if cur >= 0:
            events.append(
                DigitEnded(
                    stream,
                    str(_DIGIT_OF[cur]),
                    int(self._cur_start[stream]),
                    int(self._last_hit_end[stream]),
                )
            )
            self._cur[stream] = -1
        self._run_len[stream] = 0
        return events


def detect_signal(samples: npt.ArrayLike, config: DetectorConfig | None = None) -> list[DigitEvent]:
    """Detect the digits of one whole recording (16-bit linear samples at 8 kHz)."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    det = DtmfDetector(config, capacity=1)
    sid = det.add_stream()
    events = det.process([sid], x.reshape(1, -1))
    # run a little silence through so a tone that ends with the file is closed cleanly
    events += det.process([sid], np.zeros((1, 8 * BLOCK), dtype=np.float32))
    events += det.finish(sid)
    return events
