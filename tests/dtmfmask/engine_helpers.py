"""Run many recordings through one engine at once, the way the proxy batches calls."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from dtmfmask.detector import DetectorConfig, DtmfDetector
from dtmfmask.events import DigitEvent, DigitStarted
from dtmfmask.masker import MaskConfig, MaskingEngine

FRAME = 160  # 20 ms


def _pad(signals: Sequence[npt.ArrayLike], extra: int) -> tuple[npt.NDArray[np.int16], list[int]]:
    arrays = [np.clip(np.rint(np.asarray(s, dtype=np.float64)), -32768, 32767) for s in signals]
    lengths = [a.size for a in arrays]
    total = -(-(max(lengths) + extra) // FRAME) * FRAME
    out = np.zeros((len(arrays), total), dtype=np.int16)
    for i, a in enumerate(arrays):
        out[i, : a.size] = a
    return out, lengths


def detect_many(
    signals: Sequence[npt.ArrayLike], config: DetectorConfig | None = None
) -> list[list[DigitEvent]]:
    """Events per signal, every signal a stream of one batched detector, 20 ms frames."""
    x, _ = _pad(signals, 8 * FRAME)
    det = DtmfDetector(config, capacity=len(signals))
    sids = np.array([det.add_stream() for _ in signals])
    per: list[list[DigitEvent]] = [[] for _ in signals]
    index = {int(s): i for i, s in enumerate(sids)}
    for a in range(0, x.shape[1], FRAME):
        for ev in det.process(sids, x[:, a : a + FRAME]):
            per[index[ev.stream]].append(ev)
    for s in sids:
        per[index[int(s)]] += det.finish(int(s))
    return per


def mask_many(
    signals: Sequence[npt.ArrayLike], config: MaskConfig | None = None, frame: int = FRAME
) -> tuple[list[npt.NDArray[np.int16]], list[list[DigitEvent]]]:
    """Masked copies (time-aligned with the inputs) and events, all signals in one batch.

    ``frame`` is the packetisation (samples per call); the engine also sees nothing of a
    frame before it arrives, so small frames test the look-ahead alone.
    """
    eng = MaskingEngine(config, capacity=len(signals))
    la = eng.lookahead
    x, lengths = _pad(signals, la + 8 * FRAME)
    sids = np.array([eng.add_stream() for _ in signals])
    index = {int(s): i for i, s in enumerate(sids)}
    outs = []
    per: list[list[DigitEvent]] = [[] for _ in signals]
    for a in range(0, x.shape[1], frame):
        out, events = eng.process(sids, x[:, a : a + frame])
        outs.append(out)
        for ev in events:
            per[index[ev.stream]].append(ev)
    y = np.concatenate(outs, axis=1)
    return [y[i, la : la + n] for i, n in enumerate(lengths)], per


def digits(events: Sequence[DigitEvent]) -> str:
    return "".join(e.digit for e in events if isinstance(e, DigitStarted))
