"""The ``dtmfmask-proxy`` console script as a process: SIGTERM drain with a call in progress,
start-up errors (bad config, port taken), and /metrics counting a real baresip call."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from sipproxy.app import Proxy
from sipproxy.config import parse_config
from sipproxy.sipmessage import SipRequest, SipResponse, build_response
from tests.e2e.baresip import BaresipUA
from tests.e2e.test_proxy_calls import speech
from tests.sipproxy.sippeers import FakePbx, UdpPeer, in_dialog, invite

pytestmark = pytest.mark.e2e

PROXY_YAML = """proxy:
  sip: {listen: 127.0.0.1, udp_port: %(udp)d, tcp_port: 0}
  media: {address: 127.0.0.1, port_min: 23000, port_max: 23998, timeout_s: 30}
  upstream: {pbx: "127.0.0.1:%(pbx)d"}
  trunks: {allow: [127.0.0.0/8]}
  metrics: {listen: null}
  drain_grace_s: %(grace)s
payments:
  api: {listen: "127.0.0.1:0"}
  storage: {path: ":memory:"}
"""


def script() -> list[str]:
    exe = shutil.which("dtmfmask-proxy", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "control_api.node"]


def run_script(config: Path) -> tuple[int, str]:
    import subprocess

    done = subprocess.run([*script(), "--config", str(config)], capture_output=True, text=True,
                          timeout=20)  # fmt: skip
    return done.returncode, done.stderr


def test_bad_config_exits_2_with_one_line_naming_file_line_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(PROXY_YAML % {"udp": 0, "pbx": 5070, "grace": "'soon'"})
    rc, err = run_script(cfg)
    assert rc == 2
    (line,) = err.strip().splitlines()
    assert f"{cfg}:7:" in line and "proxy.drain_grace_s" in line


def test_a_port_in_use_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        cfg = tmp_path / "busy.yaml"
        cfg.write_text(PROXY_YAML % {"udp": port, "pbx": 5070, "grace": 1})
        rc, err = run_script(cfg)
    assert rc == 2
    assert f"cannot start: SIP UDP 127.0.0.1:{port}: address already in use" in err
    assert "Traceback" not in err


def test_sigterm_drains_503_to_new_calls_then_byes_both_legs_and_exits_0(tmp_path: Path) -> None:
    async def scenario() -> None:
        pbx = await FakePbx.open()
        caller = await UdpPeer.open()
        cfg = tmp_path / "proxy.yaml"
        cfg.write_text(PROXY_YAML % {"udp": 0, "pbx": pbx.port, "grace": 1.5})
        proc = await asyncio.create_subprocess_exec(
            *script(), "--config", str(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line.startswith("dtmfmask-proxy: ready sip=127.0.0.1:")
            proxy = ("127.0.0.1", int(line.split()[2].rsplit(":", 1)[1]))
            inv = invite(proxy, via=caller.via)
            caller.send(inv, proxy)
            ok = await caller.expect(200, timeout=5, call_id=inv.call_id)
            assert isinstance(ok, SipResponse)
            caller.send(in_dialog("ACK", inv, ok, via=caller.via), proxy)
            await pbx.expect("ACK")
            loop = asyncio.get_running_loop()
            proc.send_signal(signal.SIGTERM)
            t0 = loop.time()
            await asyncio.sleep(0.3)
            # a new call during the drain: 503 with Retry-After
            late = invite(proxy, via=caller.via)
            caller.send(late, proxy)
            refused = await caller.expect(503, call_id=late.call_id)
            assert refused.headers.get("Retry-After")
            # the call in progress goes on: an in-dialog request is still answered
            opt = in_dialog("OPTIONS", inv, ok, via=caller.via, cseq=2)
            caller.send(opt, proxy)
            await caller.expect(200, call_id=inv.call_id)
            # the grace period ends: BYE on both legs, then exit 0
            bye_a = await caller.expect("BYE", timeout=4, call_id=inv.call_id)
            assert isinstance(bye_a, SipRequest)
            assert loop.time() - t0 >= 1.4
            caller.send(build_response(bye_a, 200), proxy)
            await pbx.expect("BYE", timeout=2)
            assert await asyncio.wait_for(proc.wait(), 8) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            caller.close()
            pbx.close()

    asyncio.run(scenario())


METRICS_YAML = """proxy:
  sip: {listen: 127.0.0.1, udp_port: 0, tcp_port: 0}
  media: {address: 127.0.0.1, port_min: 24000, port_max: 24998, timeout_s: 30}
  upstream: {pbx: "127.0.0.1:%d"}
  trunks: {allow: [127.0.0.0/8]}
  metrics: {listen: "127.0.0.1:%d"}
"""


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_count_the_calls_and_digits_of_a_real_call(
    baresip_exe: str, tmp_path: Path
) -> None:
    async def scenario() -> tuple[dict[str, float], dict[str, float]]:
        agent = BaresipUA("agent", workdir=tmp_path / "agent", auto_answer=True)
        await agent.start()
        mport = _free_tcp_port()
        proxy = Proxy(parse_config(METRICS_YAML % (agent.sip_port, mport)))
        await proxy.start()
        try:
            async with BaresipUA("caller", workdir=tmp_path / "caller", source=speech(2.0),
                                 outbound=f"127.0.0.1:{proxy.sip.udp_port}") as caller:  # fmt: skip
                await caller.dial(agent.uri())
                await caller.wait_for("CALL_ESTABLISHED", 10)
                await agent.wait_for("CALL_ESTABLISHED", 10)
                await caller.send_dtmf("42")
                await asyncio.sleep(1.0)
                during = await asyncio.to_thread(_scrape, mport)
                await caller.hangup()
                await agent.wait_for("CALL_CLOSED", 10)
            after = await asyncio.to_thread(_scrape, mport)
        finally:
            await proxy.stop(grace_s=0)
            await agent.stop()
        return during, after

    during, after = asyncio.run(scenario())
    assert during["dtmfmask_calls"] == 1 and after["dtmfmask_calls"] == 0
    assert during['dtmfmask_calls_total{outcome="answered"}'] == 1
    assert after['dtmfmask_calls_total{outcome="started"}'] == 1
    assert after['dtmfmask_calls_total{outcome="ended"}'] == 1
    assert after["dtmfmask_digits_masked_total"] == 2  # totals survive the call's end
    assert after["dtmfmask_rtp_packets_received_total"] > 50
    assert after["dtmfmask_sip_parse_errors_total"] == 0


def test_hold_and_resume_by_baresip_reinvite_through_the_proxy(
    baresip_exe: str, tmp_path: Path
) -> None:
    """The caller holds (re-INVITE, a=sendonly) and resumes: each offer reaches the agent
    anchored on the proxy, the answer comes back, the media follows, and a key pressed after
    the resume is still detected (and kept from the agent)."""

    def directions(proxy: Proxy) -> tuple[str, str]:
        (call,) = proxy.b2bua.calls
        assert call.a_sdp is not None and call.b_sdp is not None
        return (
            call.a_sdp.media_direction(call.a_sdp.media[0]),
            call.b_sdp.media_direction(call.b_sdp.media[0]),
        )

    async def scenario() -> tuple[list[str], str]:
        agent = BaresipUA("agent", workdir=tmp_path / "agent", auto_answer=True)
        await agent.start()
        proxy = Proxy(parse_config(METRICS_YAML % (agent.sip_port, _free_tcp_port())))
        await proxy.start()
        try:
            async with BaresipUA("caller", workdir=tmp_path / "caller", source=speech(2.0),
                                 outbound=f"127.0.0.1:{proxy.sip.udp_port}") as caller:  # fmt: skip
                await caller.dial(agent.uri())
                await caller.wait_for("CALL_ESTABLISHED", 10)
                await agent.wait_for("CALL_ESTABLISHED", 10)
                (call,) = proxy.b2bua.calls
                digits = proxy.events.subscribe(call.id)
                await caller.command("hold")
                await asyncio.sleep(0.5)
                assert directions(proxy) == ("sendonly", "recvonly")
                await caller.command("resume")
                await asyncio.sleep(0.5)
                assert directions(proxy) == ("sendrecv", "sendrecv")
                assert proxy.b2bua.counters.glare == 0
                await caller.send_dtmf("7")
                await asyncio.sleep(0.8)
                await caller.hangup()
                await agent.wait_for("CALL_CLOSED", 10)
            got = []
            while not digits.empty():
                got.append(digits.get_nowait().digit)
            assert proxy.b2bua.calls == [] and proxy.relay.calls == {}
        finally:
            await proxy.stop(grace_s=0)
            await agent.stop()
        return got, agent.dtmf_received()

    got, agent_heard = asyncio.run(scenario())
    assert got == ["7"] and agent_heard == ""
