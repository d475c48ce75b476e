"""Hostile datagrams against a running proxy (hypothesis, bounded): it never crashes or
stalls, answers what it can, counts the rest, and a normal call works afterwards."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipproxy.app import Proxy
from sipproxy.config import parse_config
from sipproxy.sipmessage import SipResponse, parse_message
from tests.sipproxy.sippeers import FakePbx, UdpPeer, in_dialog, invite, options
from tests.sipproxy.test_server import CONFIG

VALID = invite(("127.0.0.1", 5060), via="127.0.0.1:5999").serialize()


class Running:
    """A proxy (and its fake PBX) on an event loop in a thread, for synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pbx: FakePbx = self.run(FakePbx.open())
        self.proxy = Proxy(parse_config(CONFIG % (30, self.pbx.port)))
        self.run(self.proxy.start())
        self.addr = ("127.0.0.1", self.proxy.sip.udp_port)

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.run(self.proxy.stop(grace_s=0))
        self.pbx.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    r = Running()
    yield r
    r.close()


@pytest.fixture(scope="module")
def client() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    yield s
    s.close()


def ping(running: Running, client: socket.socket) -> None:
    """The proxy still answers (drains whatever it sent before)."""
    via = f"127.0.0.1:{client.getsockname()[1]}"
    probe = options(running.addr, via=via)
    client.sendto(probe.serialize(), running.addr)
    while True:
        data, _ = client.recvfrom(65536)
        try:
            msg = parse_message(data)
        except ValueError:
            continue  # a 400 echoing a broken header back
        if isinstance(msg, SipResponse) and msg.call_id == probe.call_id:
            assert msg.status == 200
            return


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 40))]
        elif op == "insert":
            data[pos:pos] = draw(
                st.sampled_from([b"\r\n", b":", b";", b"\x00", b" ", b"<", b"\xff"])
            )
        else:
            end = pos + draw(st.integers(1, 60))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(mutated(), st.binary(max_size=300)))
def test_hostile_datagrams_never_break_the_proxy(
    running: Running, client: socket.socket, data: bytes
) -> None:
    client.sendto(data, running.addr)
    ping(running, client)
    assert running.proxy.sip.counters.internal_errors == 0


def test_after_the_fuzzing_counters_add_up_and_a_call_still_works(running: Running) -> None:
    c = running.proxy.sip.counters
    assert c.parse_errors > 0 and c.answered_400 > 0 and c.internal_errors == 0
    # leftovers of fuzzed INVITEs that parsed (calls set up with the fake PBX): hang up
    for call in list(running.proxy.b2bua.calls):
        running.loop.call_soon_threadsafe(
            lambda call=call: running.proxy.sip.dispatch(
                running.proxy.b2bua.hangup(call, running.proxy.sip.now(), "test")
            )
        )

    async def call() -> None:
        caller = await UdpPeer.open()
        inv = invite(running.addr, via=caller.via)
        caller.send(inv, running.addr)
        ok = await caller.expect(200, call_id=inv.call_id)
        assert isinstance(ok, SipResponse)
        caller.send(in_dialog("ACK", inv, ok, via=caller.via), running.addr)
        caller.send(in_dialog("BYE", inv, ok, via=caller.via), running.addr)
        assert (await caller.expect(200, call_id=inv.call_id)).cseq.method == "BYE"
        caller.close()

    running.run(call())
    assert running.proxy.b2bua.calls == []
