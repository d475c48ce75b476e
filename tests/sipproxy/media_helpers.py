"""Test peers for the media plane: a phone that packetises audio and RFC 4733 events, and
checks on what an agent received (one SSRC, contiguous sequence, 160-step timestamps)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dtmfmask.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from dtmfmask.rfc4733 import EventGenerator
from sipproxy.rtp import build_rtp, parse_rtp
from tests.signals import Press, dtmf_burst, ms_to_samples

FRAME = 160


def speechish(seconds: float, seed: int = 0, level: float = 1500.0) -> npt.NDArray[np.float64]:
    """Speech-like noise: coloured noise under a 3-5 Hz syllable envelope with pauses.
    The adversarial decoder finds nothing in it (checked in the tests that use it)."""
    gen = np.random.default_rng(seed)
    n = int(seconds * 8000)
    white = gen.standard_normal(n + 2)
    coloured = white[2:] + 0.6 * white[1:-1] - 0.3 * white[:-2]  # a gentle low-pass tilt
    t = np.arange(n) / 8000.0
    env = np.clip(np.sin(2 * np.pi * 3.7 * t + 1.0) + 0.3, 0.0, None)
    out: npt.NDArray[np.float64] = level * coloured * env
    return out


def with_keys(
    base: npt.NDArray[np.float64],
    keys: str,
    *,
    first_ms: float = 300.0,
    every_ms: float = 400.0,
    on_ms: float = 60.0,
    level_dbm0: float = -8.0,
) -> tuple[npt.NDArray[np.float64], list[Press]]:
    """``base`` with key presses added on top at regular places."""
    out = base.copy()
    presses = []
    for i, digit in enumerate(keys):
        a = ms_to_samples(first_ms + i * every_ms)
        n = ms_to_samples(on_ms)
        out[a : a + n] += dtmf_burst(digit, n, level_dbm0, phases=(0.3 * i, 1.1 * i))
        presses.append(Press(digit, a, a + n))
    return np.clip(out, -32768, 32767), presses


def encode(codec: str, pcm: npt.ArrayLike) -> bytes:
    return bytes((ulaw_encode(pcm) if codec == "PCMU" else alaw_encode(pcm)).tobytes())


def decode(codec: str, payload: bytes) -> npt.NDArray[np.int16]:
    return ulaw_decode(payload) if codec == "PCMU" else alaw_decode(payload)


@dataclass
class Phone:
    """Packetises audio into 20 ms RTP packets and key presses into RFC 4733 packets."""

    ssrc: int = 0x1234ABCD
    seq: int = 65530  # wraps early on purpose
    ts: int = 2**32 - 800
    pt: int = 0
    event_pt: int = 101
    codec: str = "PCMU"

    def audio(self, frame: npt.ArrayLike) -> bytes:
        pcm = np.asarray(frame)
        pkt = build_rtp(self.pt, self.seq, self.ts, self.ssrc, encode(self.codec, pcm))
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + pcm.size) % 2**32
        return pkt

    def frames(self, signal: npt.ArrayLike) -> Iterator[bytes]:
        x = np.asarray(signal)
        for a in range(0, x.size - FRAME + 1, FRAME):
            yield self.audio(x[a : a + FRAME])

    def event_packets(self, digit: str, duration: int) -> list[tuple[int, bytes]]:
        """(send offset in samples, packet) for one press starting at the current ts."""
        gen = EventGenerator()
        out = []
        for p in gen.digit(digit, self.ts, duration):
            out.append(
                (
                    p.send_offset,
                    build_rtp(
                        self.event_pt, self.seq, p.timestamp, self.ssrc, p.payload, marker=p.marker
                    ),
                )
            )
            self.seq = (self.seq + 1) & 0xFFFF
        return out

    def skip(self, samples: int) -> None:
        """The phone sent no audio for ``samples`` (e.g. during an event)."""
        self.ts = (self.ts + samples) % 2**32


def check_stream(packets: Sequence[bytes], pt: int, step: int = FRAME) -> int:
    """Invariant 6 on one received stream: one SSRC, sequence +1 each packet, timestamp
    +``step`` each packet. Returns the SSRC."""
    assert packets, "nothing received"
    parsed = [parse_rtp(p) for p in packets]
    ssrcs = {p.ssrc for p in parsed}
    assert len(ssrcs) == 1, f"{len(ssrcs)} SSRCs"
    assert {p.payload_type for p in parsed} == {pt}
    for a, b in itertools.pairwise(parsed):
        assert (b.sequence - a.sequence) & 0xFFFF == 1, (a.sequence, b.sequence)
        assert (b.timestamp - a.timestamp) % 2**32 == step, (a.timestamp, b.timestamp)
    return ssrcs.pop()


def audio_of(packets: Sequence[bytes], codec: str = "PCMU") -> npt.NDArray[np.int16]:
    return np.concatenate([decode(codec, parse_rtp(p).payload) for p in packets])


def tone_power(x: npt.ArrayLike, hz: float) -> float:
    """Share of the energy of ``x`` within ±30 Hz of ``hz``."""
    y = np.asarray(x, dtype=np.float64)
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size))) ** 2
    f = np.fft.rfftfreq(y.size, 1 / 8000)
    total = float(spec.sum()) or 1.0
    return float(spec[np.abs(f - hz) <= 30].sum()) / total
