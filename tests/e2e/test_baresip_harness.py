"""The baresip harness itself: two real baresip UAs call each other directly (no proxy).

What these establish for the proxy's end-to-end tests (see tests/e2e/baresip.py):
(a) a direct call carries each side's source audio into the other side's recording;
(b) Debian's baresip sends ``sndcode`` keys as RFC 2833 telephone-events only (PT 101,
    12 packets / 240 ms per key, 3 end packets), no in-band tone, and reports received ones
    as CALL_DTMF_START events;
(c) in-band DTMF put in the source WAV (or switched in mid-call) reaches the far end's
    recording and ``dtmfmask.detector.detect_signal`` finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from dtmfmask.detector import detect_signal
from dtmfmask.events import DigitStarted
from dtmfmask.rfc4733 import TelephoneEvent
from dtmfmask.tones import SAMPLE_RATE, dbm0_to_amplitude, dtmf_tone
from tests.e2e.baresip import BaresipError, BaresipUA, align, overlap
from tests.e2e.rtpsniff import LoopbackSniffer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60), pytest.mark.usefixtures("baresip_exe")]

TELEPHONE_EVENT_PT = 101  # what baresip 1.0.0 offers


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run one scenario on a fresh loop, bounded as a whole."""
    asyncio.run(asyncio.wait_for(coro, timeout=45))


def speech_like(seconds: float, seed: int, level_dbm0: float = -20.0) -> npt.NDArray[np.float64]:
    """Noise shaped like telephone speech: 300-3400 Hz, a spectral tilt, syllable-rate
    (3-6 Hz) amplitude envelope with pauses. Distinct per seed (for cross-correlation)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec *= ((f > 300) & (f < 3400)) / np.maximum(f, 300) ** 0.5
    x = np.fft.irfft(spec, n)
    t = np.arange(n) / SAMPLE_RATE
    env = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)), 0.15, None)
    x *= env
    rms = float(np.sqrt(np.mean(x**2)))
    return x * (dbm0_to_amplitude(level_dbm0) / np.sqrt(2) / rms)


def rms(x: npt.ArrayLike) -> float:
    a = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(a**2)))


def digits_of(events: list[Any]) -> str:
    return "".join(e.digit for e in events if isinstance(e, DigitStarted))


def assert_reaped(*uas: BaresipUA) -> None:
    for ua in uas:
        assert ua.proc is not None and ua.returncode is not None, f"{ua.name} still running"
        with pytest.raises(ProcessLookupError):  # exited and reaped: no zombie left
            os.kill(ua.proc.pid, 0)


async def establish(a: BaresipUA, b: BaresipUA) -> None:
    await a.dial(b)
    await a.wait_for("CALL_ESTABLISHED")
    await b.wait_for("CALL_ESTABLISHED")
    await b.wait_for("CALL_RTPESTAB")  # B has received A's first RTP packet


# --------------------------------------------------------------------------- (a)


def test_direct_call_carries_audio_both_ways_and_hangs_up(tmp_path: Path) -> None:
    talk_s = 2.0
    src_a = speech_like(talk_s, seed=1)
    src_b = speech_like(talk_s, seed=2)
    ua_a = BaresipUA("alice", workdir=tmp_path / "a", source=src_a)
    ua_b = BaresipUA("bob", workdir=tmp_path / "b", source=src_b, auto_answer=True)

    async def scenario() -> None:
        async with ua_a as a, ua_b as b:
            await establish(a, b)
            assert a.event_types().count("CALL_RINGING") == 1
            await asyncio.sleep(talk_s + 0.5)
            closed = await a.hangup()
            assert closed is not None and closed["param"] == "Connection reset by user"
            closed_b = await b.wait_for("CALL_CLOSED")
            assert closed_b["param"] == "Connection reset by peer"
            heard_b = await b.recording()
            heard_a = await a.recording()
            sent_a = await a.recording("enc")
        # after the context: both quit on their own (exit 0) and were reaped
        assert ua_a.returncode == 0 and ua_b.returncode == 0
        assert_reaped(ua_a, ua_b)

        for src, heard, who in ((src_a, heard_b, "B hears A"), (src_b, heard_a, "A hears B")):
            lag, corr = align(src, heard, max_lag=SAMPLE_RATE)
            # the callee's first packet or two may beat the 200 OK to the caller (dropped)
            assert -3 * 160 <= lag <= 3 * 160, f"{who}: lag {lag}"
            # G.711 round trip of speech-like noise: correlation ~0.9999
            assert corr > 0.99, f"{who}: correlation {corr:.4f} at lag {lag}"
            ref, got = overlap(src, heard, lag)
            assert len(got) >= len(src) - 3 * 160, f"{who}: only {len(got)} samples heard"
            level_db = 20 * np.log10(rms(got) / rms(ref))
            assert abs(level_db) < 0.5, f"{who}: level off by {level_db:.2f} dB"
        # what A sent is what B heard, sample for sample (no loss on loopback)
        lag, corr = align(sent_a[: len(src_a)], heard_b, max_lag=SAMPLE_RATE)
        assert lag == 0 and corr > 0.999, (lag, corr)

    run(scenario())


# --------------------------------------------------------------------------- (b)


def test_sndcode_sends_rfc2833_events_only(tmp_path: Path) -> None:
    keys = "4111#"
    ua_a = BaresipUA(
        "alice", workdir=tmp_path / "a", source=speech_like(1.0, 3, -30.0), sip_trace=True
    )
    ua_b = BaresipUA("bob", workdir=tmp_path / "b", auto_answer=True)
    sniff_ok = LoopbackSniffer.available()
    packets: list[LoopbackSniffer] = []

    async def scenario() -> None:
        async with ua_a as a, ua_b as b:
            with contextlib.ExitStack() as stack:
                if sniff_ok:  # B's RTP ports, so each packet A sends is seen once
                    ports = range(b.rtp_ports[0], b.rtp_ports[1] + 1)
                    packets.append(stack.enter_context(LoopbackSniffer(ports)))
                await establish(a, b)
                await a.send_dtmf(keys, interval=0.3)
                for k in keys:
                    await b.wait_for("CALL_DTMF_START", param=k)
                    await b.wait_for("CALL_DTMF_END")
                await asyncio.sleep(0.3)  # the last end packets
                await a.hangup()
                await b.wait_for("CALL_CLOSED")
                heard = await b.recording()
        assert b.dtmf_received() == keys
        assert a.dtmf_received() == ""
        # no tone in the audio: baresip sends the keys out of band only
        assert digits_of(detect_signal(heard)) == ""
        log_a = a.log_text()
        assert "a=rtpmap:101 telephone-event/8000" in log_a  # offered in the SDP (-s trace)
        assert "INFO sip:" not in log_a  # and no SIP INFO
        assert "received event: '4' (end=0)" in b.log_text()

    run(scenario())
    if not sniff_ok:
        pytest.skip("RFC 2833 checked via events; wire check needs CAP_NET_RAW (AF_PACKET)")
    captured = packets[0].packets
    events = [p for p in captured if p.pt == TELEPHONE_EVENT_PT]
    audio = [p for p in captured if p.pt == 0]
    assert audio, "no PCMU audio captured"
    assert {p.ssrc for p in events} == {p.ssrc for p in audio}, "events on the audio SSRC"
    presses: dict[int, list[tuple[Any, TelephoneEvent]]] = {}
    for p in events:
        (ev,) = TelephoneEvent.parse(p.payload)
        presses.setdefault(p.ts, []).append((p, ev))
    assert len(presses) == len(keys), sorted(presses)
    for (_ts, group), key in zip(sorted(presses.items()), keys, strict=True):
        first, evs = group[0][0], [ev for _, ev in group]
        assert first.marker and not any(p.marker for p, _ in group[1:])
        assert {ev.digit for ev in evs} == {key}
        assert all(ev.volume == 10 for ev in evs)
        ends = [ev for ev in evs if ev.end]
        assert len(ends) == 3 and all(ev.end for ev in evs[-3:])
        assert ends[0].duration == 1440  # 180 ms
        durs = [ev.duration for ev in evs if not ev.end]
        assert durs == list(range(160, 1441, 160))


# --------------------------------------------------------------------------- (c)


def _tones_in_noise(
    digits: str, seconds: float, starts_s: list[float], tone_ms: float = 80.0
) -> npt.NDArray[np.float64]:
    x = speech_like(seconds, seed=7, level_dbm0=-25.0)
    n = int(tone_ms * SAMPLE_RATE / 1000)
    for d, s in zip(digits, starts_s, strict=True):
        i = int(s * SAMPLE_RATE)
        x[i : i + n] += dtmf_tone(d, n, level_dbm0=-12.0)
    return x


def test_inband_dtmf_in_source_reaches_the_far_end(tmp_path: Path) -> None:
    first, later = "159#", "0*"
    src = _tones_in_noise(first, 2.0, [0.4, 0.7, 1.0, 1.3])
    assert digits_of(detect_signal(src)) == first  # the source itself is clean
    ua_a = BaresipUA("alice", workdir=tmp_path / "a", source=src)
    ua_b = BaresipUA("bob", workdir=tmp_path / "b", auto_answer=True)

    async def scenario() -> None:
        async with ua_a as a, ua_b as b:
            await establish(a, b)
            await asyncio.sleep(2.2)  # the source's digits are through
            await a.send_dtmf_inband(later, tone_ms=100, gap_ms=100)  # switch source mid-call
            await asyncio.sleep(0.8)
            await a.hangup()
            await b.wait_for("CALL_CLOSED")
            heard = await b.recording()
            sent = await a.recording("enc")
        assert b.dtmf_received() == ""  # nothing out of band
        for what, x in (("sent by A", sent), ("heard by B", heard)):
            found = detect_signal(x)
            assert digits_of(found) == first + later, f"{what}: {found}"

    run(scenario())


# --------------------------------------------------------------------------- options


def test_outbound_route_manual_answer_and_codec_choice(tmp_path: Path) -> None:
    """A routes through an outbound "proxy" (here B itself) with an arbitrary request URI;
    B answers by hand; only PCMA is allowed on A."""
    ua_b = BaresipUA("bob", workdir=tmp_path / "b")

    async def scenario() -> None:
        async with ua_b as b:
            async with BaresipUA(
                "alice",
                workdir=tmp_path / "a",
                codecs=("PCMA",),
                outbound=f"127.0.0.1:{b.sip_port}",
            ) as a:
                await a.dial("sip:bob@example.invalid")
                incoming = await b.wait_for("CALL_INCOMING")
                assert incoming["peeruri"] == a.aor
                await b.accept()
                await a.wait_for("CALL_ESTABLISHED")
                await b.wait_for("CALL_ESTABLISHED")
                await a.hangup()
                await b.wait_for("CALL_CLOSED")
            assert "Set audio encoder: PCMA" in b.log_text()
            # timeouts are bounded and explain themselves
            with pytest.raises(BaresipError, match="CALL_ESTABLISHED"):
                await b.wait_for("CALL_ESTABLISHED", timeout=0.2)
            with pytest.raises(BaresipError, match="command not found"):
                await b.command("nosuchcommand")
        assert ua_b.returncode == 0

    run(scenario())


def test_stop_is_bounded_and_reaps_when_the_peer_is_frozen(tmp_path: Path) -> None:
    """quit waits for the BYE's transaction; with the peer frozen, stop() falls back to
    SIGTERM (twice) within its bounds and still reaps the process."""
    ua_a = BaresipUA("alice", workdir=tmp_path / "a", quit_timeout=0.5)
    ua_b = BaresipUA("bob", workdir=tmp_path / "b", auto_answer=True)

    async def scenario() -> None:
        async with ua_b as b:
            async with ua_a as a:
                await establish(a, b)
                assert b.proc is not None
                os.kill(b.proc.pid, signal.SIGSTOP)
                t0 = time.monotonic()
            try:
                assert time.monotonic() - t0 < 5.0
                assert_reaped(ua_a)
                assert "terminated by signal 15" in ua_a.log_text()
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
        assert_reaped(ua_b)

    run(scenario())
