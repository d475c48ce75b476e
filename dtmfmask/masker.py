"""The masker: a look-ahead delay line per stream, then DTMF replaced by one flat tone.

Every sample leaves ``lookahead`` samples after it arrived. By then the detector has seen
enough of what follows to know whether the sample belongs to a key press, so masking can
start before the tone's first sample: the cross-fade into the masking tone happens in the
guard interval *before* the tone, and no fragment of the real tone reaches the output.

Sans-I/O like the detector: a batch of frames (one row per stream) in, the same-shaped batch
of masked, delayed frames out, plus digit events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .detector import BLOCK, BatchResult, DetectorConfig, DtmfDetector, selector
from .events import DigitEnded, DigitEvent
from .tones import SAMPLE_RATE, dbm0_to_amplitude

MaskStyle = Literal["tone", "silence", "noise"]
MASK_STYLES: tuple[MaskStyle, ...] = ("tone", "silence", "noise")

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class MaskConfig:
    """How key presses are hidden. Times in ms, levels in dBm0."""

    lookahead_ms: float = 15.0
    style: MaskStyle = "tone"
    # One tone for every key. 500 Hz is far enough from the 697 Hz row that a short-window
    # decoder sees almost nothing of it in any DTMF bin, and it is not a network signalling
    # frequency (400/425/440 are dial and call-progress tones, 2100/2600 modem and SF).
    tone_hz: float = 500.0
    tone_level_dbm0: float = -20.0
    noise_level_dbm0: float = -50.0
    crossfade_ms: float = 2.0
    # masking extends this far before the first and after the last window that held a tone
    guard_ms: float = 5.0
    # gaps shorter than this between masked spans are masked too
    bridge_ms: float = 25.0
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.lookahead_ms <= 500.0:
            raise ValueError(f"lookahead_ms must be within 0..500, got {self.lookahead_ms}")
        if self.style not in MASK_STYLES:
            raise ValueError(f"style must be one of {', '.join(MASK_STYLES)}, got {self.style!r}")
        if not 50.0 <= self.tone_hz <= 3900.0:
            raise ValueError(f"tone_hz must be within 50..3900, got {self.tone_hz}")
        if self.tone_level_dbm0 > 3.0 or self.noise_level_dbm0 > 3.0:
            raise ValueError("masking levels must be at most +3 dBm0")
        if not 0.0 <= self.crossfade_ms <= 20.0:
            raise ValueError(f"crossfade_ms must be within 0..20, got {self.crossfade_ms}")
        if not 0.0 <= self.bridge_ms <= 200.0:
            raise ValueError(f"bridge_ms must be within 0..200, got {self.bridge_ms}")
        if not 0.0 <= self.guard_ms <= 100.0:
            raise ValueError(f"guard_ms must be within 0..100, got {self.guard_ms}")


def _ms(ms: float) -> int:
    return round(ms * SAMPLE_RATE / 1000.0)


class MaskingEngine:
    """Detector + delay line + masking for many streams, processed in batches.

    Output row ``i`` of ``process`` is stream ``streams[i]`` delayed by ``lookahead``
    samples (the first ``lookahead`` output samples of a stream are silence), with every
    DTMF tone replaced.
    """

    _delay: npt.NDArray[np.int16]
    _env: F32
    _n_in: I64
    _forced: npt.NDArray[np.bool_]
    _env_on: npt.NDArray[np.bool_]
    _row_of: I64
    _last_end: I64
    _bypass: npt.NDArray[np.bool_]
    _unmask_at: I64

    def __init__(self, config: MaskConfig | None = None, capacity: int = 16) -> None:
        self.config = cfg = config or MaskConfig()
        self.detector = DtmfDetector(cfg.detector, capacity)
        self.lookahead = _ms(cfg.lookahead_ms)
        self._xf = max(_ms(cfg.crossfade_ms), 1)
        self._guard = _ms(cfg.guard_ms)
        self._bridge = _ms(cfg.bridge_ms)
        # the envelope reaches this far past the newest input sample
        self._future = self._guard + self._xf + 2 * BLOCK
        self._ramp = (np.arange(1, self._xf + 1, dtype=np.float32) / (self._xf + 1)).astype(
            np.float32
        )
        self._amp = dbm0_to_amplitude(cfg.tone_level_dbm0)
        self._noise_sigma = dbm0_to_amplitude(cfg.noise_level_dbm0) / np.sqrt(2.0)
        self._w = 2.0 * np.pi * cfg.tone_hz / SAMPLE_RATE
        self._rng = np.random.default_rng(0x5EED)
        self._cap = 0
        self._grow(max(capacity, 1))
        self._n_unmask_pending = 0  # streams whose masking goes off once settled
        self.late_mask_samples = 0  # mask that came after its samples had left: leak risk
        self.masked_samples = 0

    def _grow(self, cap: int) -> None:
        old = self._cap
        span = self.lookahead + self._future

        def g(a: npt.NDArray[np.generic] | None, shape: tuple[int, ...], dtype: type) -> Any:
            new: Any = np.zeros((cap, *shape), dtype=dtype)
            if a is not None and old:
                new[:old] = a
            return new

        first = old == 0
        self._delay = g(None if first else self._delay, (self.lookahead,), np.int16)
        self._env = g(None if first else self._env, (span,), np.float32)
        self._n_in = g(None if first else self._n_in, (), np.int64)
        self._forced = g(None if first else self._forced, (), np.bool_)
        self._env_on = g(None if first else self._env_on, (), np.bool_)
        self._row_of = g(None if first else self._row_of, (), np.int64)
        self._last_end = g(None if first else self._last_end, (), np.int64)
        self._bypass = g(None if first else self._bypass, (), np.bool_)
        self._unmask_at = g(None if first else self._unmask_at, (), np.int64)
        self._cap = cap

    # --- streams ------------------------------------------------------------------------
    def add_stream(self) -> int:
        sid = self.detector.add_stream()
        while sid >= self._cap:
            self._grow(self._cap * 2)
        self._delay[sid] = 0
        self._env[sid] = 0
        self._n_in[sid] = 0
        self._forced[sid] = False
        self._env_on[sid] = False
        self._last_end[sid] = -(10**9)
        self._bypass[sid] = False
        self._unmask_at[sid] = -1
        return sid

    def remove_stream(self, stream: int) -> None:
        if self._unmask_at[stream] >= 0:
            self._unmask_at[stream] = -1
            self._n_unmask_pending -= 1
        self.detector.remove_stream(stream)

    def position(self, stream: int) -> int:
        """Input samples received so far on ``stream``."""
        return int(self._n_in[stream])

    def force_mask(self, stream: int, start: int, end: int | None = None) -> None:
        """Mask input samples [start, end) whatever the audio holds (an RFC 4733 event).

        ``end=None`` masks from ``start`` until ``release_mask``. Positions already sent
        (older than the look-ahead) cannot be recalled; they are counted in
        ``late_mask_samples``.
        """
        if end is None:
            self._forced[stream] = True
            end = int(self._n_in[stream])
        self._mark(stream, int(self._n_in[stream]), start, end)

    def set_masking(self, stream: int, on: bool, *, settle_samples: int = SAMPLE_RATE) -> None:
        """Mask ``stream``'s key presses (the default) or let them through (``mask:
        during_payment`` outside a payment: IVR menus). Detection, digit events and the
        delay line run either way, so turning masking on covers a key already under way
        from the samples still in the look-ahead.

        Turning it off takes effect only after ``settle_samples`` more input and at a moment
        no masking is under way: the payment's last key is usually still sounding (and
        partly in the look-ahead) when its digit completes the card, and must not be
        cut loose half way.
        """
        pending = self._unmask_at[stream] >= 0
        if on:
            self._bypass[stream] = False
            self._unmask_at[stream] = -1
            self._n_unmask_pending -= int(pending)
        elif not self._bypass[stream]:
            self._unmask_at[stream] = self._n_in[stream] + max(settle_samples, 0)
            self._n_unmask_pending += int(not pending)

    def release_mask(self, stream: int, end: int) -> None:
        """End an open-ended ``force_mask`` at input position ``end`` (plus the guard)."""
        if self._forced[stream]:
            self._forced[stream] = False
            n_in = int(self._n_in[stream])
            self._mark(stream, n_in, n_in - self.lookahead, end)

    # --- processing ---------------------------------------------------------------------
    def process(
        self, streams: Sequence[int] | I64, frames: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int16], list[DigitEvent]]:
        sids = np.asarray(streams, dtype=np.int64).reshape(-1)
        x = np.asarray(frames)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        s, n = x.shape
        if s != sids.size:
            raise ValueError(f"{s} frames for {sids.size} streams")
        if x.dtype != np.int16:
            x = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
        res = self.detector.process_batch(sids, x)
        la = self.lookahead
        if self._n_unmask_pending:
            self._settle_unmask(sids)
        # Unmasked audio leaves exactly as it came in, so the delay line holds int16.
        sel = selector(sids)
        if la:
            joined = np.concatenate([self._delay[sel], x], axis=1)
            out = joined[:, :n]
            self._delay[sel] = joined[:, n:]
        else:
            out = x.copy()
        n_before = self._n_in[sel].copy()
        self._n_in[sel] += n
        marked = res.mask_stream.size or res.events
        busy = self._env_on[sel] | self._forced[sel]
        if marked:
            self._row_of[sids] = np.arange(s)
            extra = np.array([ev.stream for ev in res.events], dtype=np.int64)
            busy[self._row_of[np.concatenate([res.mask_stream, extra])]] = True
        rows = np.flatnonzero(busy)
        if rows.size == 0:
            return out, res.events
        # only streams that are masking, or about to, carry an envelope through this call
        rs = sids[rows]
        env = np.concatenate([self._env[rs], np.zeros((rows.size, n), np.float32)], axis=1)
        self._apply_marks(rows, rs, n_before[rows], env, res)
        gain = env[:, :n]
        self._env[rs] = env[:, n:]
        self._env_on[rs] = env[:, n:].any(axis=1)
        on = np.flatnonzero(gain.any(axis=1) & ~self._bypass[rs])
        if on.size:
            g = gain[on]
            r = rows[on]
            out_pos = n_before[r] - la  # absolute output index of each row's first sample
            mixed = out[r] * (1.0 - g) + self._masking_signal(out_pos, n) * g
            out[r] = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
            self.masked_samples += int(np.count_nonzero(g))
        return out, res.events

    def _settle_unmask(self, sids: I64) -> None:
        """Masking goes off where it was asked to, once settled and quiet."""
        due = sids[
            (self._unmask_at[sids] >= 0)
            & (self._n_in[sids] >= self._unmask_at[sids])
            & ~self._env_on[sids]
            & ~self._forced[sids]
        ]
        if due.size:
            self._bypass[due] = True
            self._unmask_at[due] = -1
            self._n_unmask_pending -= int(due.size)

    def _masking_signal(self, start: I64, n: int) -> F32:
        style = self.config.style
        if style == "silence":
            return np.zeros((start.size, n), np.float32)
        if style == "noise":
            noise: F32 = (self._rng.standard_normal((start.size, n)) * self._noise_sigma).astype(
                np.float32
            )
            return noise
        t = (start[:, None] + np.arange(n)[None, :]).astype(np.float64)
        return (self._amp * np.sin(self._w * t)).astype(np.float32)

    def _apply_marks(self, rows: I64, rs: I64, n_before: I64, env: F32, res: BatchResult) -> None:
        """Paint this call's mask spans into the envelopes of the streams in ``rs``.

        One span per stream and call: the union of its windows (a call covers a few tens of
        ms, shorter than the bridge, so nothing between them would stay unmasked anyway).
        Painting is vectorised over the streams.
        """
        n_new = env.shape[1] - self.lookahead - self._future
        for i in np.flatnonzero(self._forced[rs]).tolist():
            # an RFC 4733 event still in progress: everything that arrived is masked
            a0 = int(n_before[i])
            self._paint(env[i], a0, a0, a0 + n_new, guard=False)
        m_stream, m_start, m_end = res.mask_stream, res.mask_start, res.mask_end
        if res.events:
            ev_s = np.array([e.stream for e in res.events], dtype=np.int64)
            ev_a = np.array([e.start for e in res.events], dtype=np.int64)
            ev_b = np.array(
                [e.end if isinstance(e, DigitEnded) else e.start + BLOCK for e in res.events],
                dtype=np.int64,
            )
            m_stream = np.concatenate([m_stream, ev_s])
            m_start = np.concatenate([m_start, ev_a])
            m_end = np.concatenate([m_end, ev_b])
        if m_stream.size == 0:
            return
        # row of each span in env, then per-row union
        self._row_of[rs] = np.arange(rs.size)
        row = self._row_of[m_stream]
        first = np.full(rs.size, np.iinfo(np.int64).max, dtype=np.int64)
        last = np.full(rs.size, np.iinfo(np.int64).min, dtype=np.int64)
        np.minimum.at(first, row, m_start)
        np.maximum.at(last, row, m_end)
        hit = np.flatnonzero(last > np.iinfo(np.int64).min)
        a, b = first[hit], last[hit]
        sids = rs[hit]
        origin = n_before[hit] - self.lookahead
        # A key under loud speech trips the loose thresholds only now and then: a span that
        # starts within the bridge of the previous one (also from an earlier call) joins it.
        prev = self._last_end[sids]
        join = a - prev <= 2 * self._guard + self._bridge
        a = np.where(join, np.maximum(np.minimum(a, prev), origin + self._guard + self._xf), a)
        self._last_end[sids] = np.maximum(prev, b)
        lo = (a - self._guard - origin)[:, None]
        hi = (b + self._guard - origin)[:, None]
        late = np.minimum(hi[:, 0], 0) - lo[:, 0]
        self.late_mask_samples += int(late[lo[:, 0] < 0].sum())
        xf = self._xf
        idx = np.arange(env.shape[1])[None, :]
        # 1 inside [lo, hi), linear ramps over the xf samples outside it on both sides
        gain = np.where(
            idx < lo,
            (idx - lo + xf + 1) / (xf + 1),
            np.where(idx < hi, 1.0, (hi + xf - idx) / (xf + 1)),
        )
        env[hit] = np.maximum(env[hit], np.clip(gain, 0.0, 1.0))

    def _mark(self, sid: int, n_in: int, a: int, b: int) -> None:
        """Paint a mask span into a stream's stored envelope between calls."""
        env = self._env[sid]
        self._paint(env, n_in, a, b, guard=False)
        self._env_on[sid] = bool(env.any())

    def _paint(self, env: F32, n_in: int, a: int, b: int, guard: bool = True) -> None:
        """Set the masking gain to 1 over [a - guard, b + guard) with ramps outside it.

        ``env`` index 0 is input position ``n_in - lookahead``.
        """
        g = self._guard if guard else 0
        origin = n_in - self.lookahead
        lo = a - g - origin
        hi = b + g - origin
        xf = self._xf
        if lo < 0:
            self.late_mask_samples += min(hi, 0) - lo
        size = env.shape[0]
        lo_c, hi_c = max(lo, 0), min(hi, size)
        if hi_c > lo_c:
            env[lo_c:hi_c] = 1.0
        # ramps sit outside the span so the real tone never shares a sample with a fade
        up_lo, up_hi = max(lo - xf, 0), min(max(lo, 0), size)
        if up_hi > up_lo:
            r = self._ramp[up_lo - (lo - xf) : up_hi - (lo - xf)]
            np.maximum(env[up_lo:up_hi], r, out=env[up_lo:up_hi])
        dn_lo, dn_hi = min(max(hi, 0), size), min(max(hi + xf, 0), size)
        if dn_hi > dn_lo:
            r = self._ramp[::-1][dn_lo - hi : dn_hi - hi]
            np.maximum(env[dn_lo:dn_hi], r, out=env[dn_lo:dn_hi])

    def finish(self, stream: int) -> tuple[npt.NDArray[np.int16], list[DigitEvent]]:
        """Drain ``stream``: the last ``lookahead`` samples (masked) and closing events."""
        la = self.lookahead
        tail = np.zeros((1, la + self._future), np.float32)
        out, events = self.process([stream], tail)
        events += self.detector.finish(stream)
        return out[0, :la], events


def mask_signal(
    samples: npt.ArrayLike, config: MaskConfig | None = None, frame_ms: float = 20.0
) -> tuple[npt.NDArray[np.int16], list[DigitEvent]]:
    """Mask one whole recording; the output is time-aligned with the input (delay removed).

    The recording is fed in ``frame_ms`` frames, as RTP would bring it, so the look-ahead
    behaves exactly as it does on a live call.
    """
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    eng = MaskingEngine(config, capacity=1)
    sid = eng.add_stream()
    la = eng.lookahead
    step = max(_ms(frame_ms), 1)
    outs: list[npt.NDArray[np.int16]] = []
    events: list[DigitEvent] = []
    for i in range(0, x.size, step):
        out, ev = eng.process([sid], x[i : i + step].reshape(1, -1))
        outs.append(out[0])
        events += ev
    tail, more = eng.finish(sid)
    outs.append(tail)
    events += more
    aligned = np.concatenate(outs)[la : la + x.size]
    return aligned, events
