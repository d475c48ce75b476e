"""Calls through the proxy between real SIP user agents (Debian's baresip) on 127.0.0.1.

The caller dials the agent through the proxy (baresip's outbound proxy); the agent UA
stands in for the PBX (auto-answer) and records what it hears. Each case checks that every
key was detected once by the proxy, that the agent's recording gives nothing to the
adversarial leak decoder, and that the caller's speech between the keys reached the agent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from dtmfmask.tones import dtmf_tone
from sipproxy.app import Proxy
from sipproxy.config import parse_config
from sipproxy.media import CallDigit
from tests.e2e.baresip import BaresipUA, align, overlap
from tests.leakdecoder import decode

pytestmark = pytest.mark.e2e

CONFIG = """
proxy:
  sip: {listen: 127.0.0.1, udp_port: 0, tcp_port: 0}
  media: {address: 127.0.0.1, port_min: 10000, port_max: 10998, timeout_s: 30}
  upstream: {pbx: "127.0.0.1:%d"}
  trunks: {allow: [127.0.0.0/8]}
  metrics: {listen: null}
"""


def speech(seconds: float, seed: int = 3) -> np.ndarray:
    """Voice-like audio (harmonics of a gliding pitch under a syllable envelope)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    t = np.arange(n) / 8000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 8000
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.maximum(np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6)), 0) ** 1.5
    return 2500 * voice * env


async def run_call(
    tmp: Path, source: np.ndarray, rfc2833: str = "", settle_s: float = 1.0, both: str = ""
) -> tuple[list[CallDigit], np.ndarray, BaresipUA]:
    """One call; ``rfc2833`` keys are sent as events during it, ``both`` keys at the end as
    an in-band tone and an RFC 2833 event at the same moment (a phone that sends both)."""
    agent_ua = BaresipUA("agent", workdir=tmp / "agent", auto_answer=True)
    await agent_ua.start()
    try:
        config = parse_config(CONFIG % agent_ua.sip_port)
        proxy = Proxy(config)
        await proxy.start()
        try:
            async with BaresipUA(
                "caller",
                workdir=tmp / "caller",
                source=source,
                outbound=f"127.0.0.1:{proxy.sip.udp_port}",
            ) as caller:
                await caller.dial(agent_ua.uri())
                await caller.wait_for("CALL_ESTABLISHED", 10)
                await agent_ua.wait_for("CALL_ESTABLISHED", 10)
                (call,) = proxy.b2bua.calls
                digits = proxy.events.subscribe(call.id)
                if rfc2833:
                    await caller.send_dtmf(rfc2833)
                await asyncio.sleep(len(source) / 8000 + settle_s)
                for key in both:
                    await asyncio.gather(
                        caller.send_dtmf_inband(key, lead_ms=0.0, tone_ms=180.0),
                        caller.send_dtmf(key),
                    )
                    await asyncio.sleep(0.6)
                await caller.hangup()
                await agent_ua.wait_for("CALL_CLOSED", 10)
            heard = await agent_ua.recording()
            got = []
            while not digits.empty():
                got.append(digits.get_nowait())
            assert proxy.b2bua.calls == [] and proxy.relay.calls == {}
        finally:
            await proxy.stop(grace_s=0)
    finally:
        await agent_ua.stop()
    return got, heard, agent_ua


def keyed(speech_s: float, digits: str, at_s: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Speech with in-band key presses from ``at_s``: 100 ms tones, 150 ms apart."""
    x = speech(speech_s)
    spans = []
    pos = int(at_s * 8000)
    for d in digits:
        tone = dtmf_tone(d, 800, -8.0)
        x[pos : pos + 800] = tone
        spans.append((pos, pos + 800))
        pos += 1200
    return x, spans


def speech_reached_agent(
    source: np.ndarray, heard: np.ndarray, spans: list[tuple[int, int]]
) -> float:
    """Correlation between the caller's speech and what the agent heard, keys cut out."""
    lag, _ = align(source, heard)
    cut = source.astype(np.float64).copy()
    for a, b in spans:
        cut[max(a - 400, 0) : b + 400] = 0
    ref, rec = overlap(cut, heard, lag)
    return float(np.dot(ref, rec) / (np.linalg.norm(ref) * np.linalg.norm(rec) + 1e-9))


def test_rfc2833_keys_are_counted_once_and_never_reach_the_agent(
    baresip_exe: str, tmp_path: Path
) -> None:
    source = speech(4.0)
    got, heard, agent = asyncio.run(run_call(tmp_path, source, rfc2833="4111"))
    assert "".join(d.digit for d in got) == "4111"
    assert {d.source for d in got} == {"rfc4733"}
    assert agent.dtmf_received() == ""  # no telephone-event reached the agent
    assert decode(heard) == []
    assert speech_reached_agent(source, heard, []) > 0.5


def test_inband_keys_are_masked(baresip_exe: str, tmp_path: Path) -> None:
    source, spans = keyed(5.0, "5412", 1.5)
    got, heard, _ = asyncio.run(run_call(tmp_path, source))
    assert "".join(d.digit for d in got) == "5412"
    assert decode(heard) == []
    assert speech_reached_agent(source, heard, spans) > 0.5


def test_the_same_key_inband_and_rfc2833_counts_once(baresip_exe: str, tmp_path: Path) -> None:
    source, _ = keyed(3.0, "99", 1.0)
    got, heard, agent = asyncio.run(run_call(tmp_path, source, both="73"))
    assert "".join(d.digit for d in got) == "9973"
    assert agent.dtmf_received() == ""
    assert decode(heard) == []
