"""Relay load: N concurrent calls of 20 ms PCMU both ways through the media relay on loopback.

The relay runs in a child process (uvloop unless --loop asyncio), every call masked on the
caller->agent side. This process plays both phones of every call (uvloop when installed),
sends one packet per direction per call every 20 ms, and prints packets/s, loss, the added
latency (p50/p99, send to receive, matched by RTP timestamp, on a sample of calls) and the
relay's CPU time per relayed packet.

With two or more cores the relay is pinned to core 0 and this load generator to core 1
(``--no-pin`` to leave both to the scheduler), so neither steals the other's CPU. The
generator sends with the sockets' own ``sendto`` from prebuilt packets (two struct writes
per packet) and counts what it receives, timing only the sampled calls, so one Python
process keeps up with 1,000 calls.

    python benchmarks/relay_load.py --calls 200 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing as mp
import os
import resource
import socket
import struct
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

HOST = "127.0.0.1"
FRAME = 160


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# --------------------------------------------------------------------------- relay side


class _Bare(asyncio.DatagramProtocol):
    """The reference: a bare uvloop relay, datagram in, same bytes out to the other phone."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts
        self.peer: Any = None  # (the other socket's sendto, the other phone's address)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.counts[0] += 1
        sendto, dest = self.peer
        sendto(data, dest)


def bare_main(
    conn: Connection, kind: str, addrs: list[tuple[Any, Any]], port_min: int, cpu: int | None
) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        counts = [0]
        ports = []
        for caller, agent in addrs:
            ends = []
            for _ in range(2):
                t, p = await loop.create_datagram_endpoint(
                    lambda: _Bare(counts), local_addr=(HOST, 0)
                )
                ends.append((t, p))
            (tc, pc), (ta, pa) = ends
            pc.peer = (ta.sendto, tuple(agent))
            pa.peer = (tc.sendto, tuple(caller))
            ports.append((tc.get_extra_info("sockname")[1], ta.get_extra_info("sockname")[1]))
        conn.send(ports)
        await loop.run_in_executor(None, conn.recv)  # "start"
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        rx0 = counts[0]
        await loop.run_in_executor(None, conn.recv)  # "stop"
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        rx = counts[0] - rx0
        conn.send({"cpu_s": cpu_s, "rx": rx, "tx": rx, "flushes": 0, "frames_per_pass": 0.0})

    loop = _new_loop(kind)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def relay_main(
    conn: Connection, kind: str, addrs: list[tuple[Any, Any]], port_min: int, cpu: int | None
) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from sipproxy.media import LegName, LegParams
    from sipproxy.relay import MediaRelay, RelayConfig

    async def main() -> None:
        relay = MediaRelay(
            config=RelayConfig(HOST, port_min, min(port_min + 8 * len(addrs) + 1000, 65535))
        )
        ports = []
        for i, (caller, agent) in enumerate(addrs):
            h = await relay.open_call(
                f"call-{i}", LegParams(remote=tuple(caller)), LegParams(remote=tuple(agent))
            )
            ports.append((h.caller_port, h.agent_port))
        conn.send(ports)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "start"
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        rx0, tx0 = relay.counters.datagrams_rx, relay.counters.datagrams_tx
        await loop.run_in_executor(None, conn.recv)  # "stop"
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        eng = relay.engine
        legs: tuple[LegName, ...] = ("caller", "agent")
        conn.send(
            {
                "cpu_s": cpu,
                "rx": relay.counters.datagrams_rx - rx0,
                "tx": relay.counters.datagrams_tx - tx0,
                "flushes": relay.counters.flushes,
                "frames_per_pass": eng.batched_frames / max(eng.passes, 1),
                "fail_closed": sum(c.counters.fail_closed_frames for c in eng.calls.values()),
                "drops": {
                    k: sum(getattr(c.leg(g).counters, k) for c in eng.calls.values() for g in legs)
                    for k in ("flood", "late", "hijack", "no_destination", "unknown_pt")
                },
            }
        )
        await relay.close()

    loop = _new_loop(kind)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


# --------------------------------------------------------------------------- load side


class Phone(asyncio.DatagramProtocol):
    def __init__(self, timed: bool) -> None:
        self.timed = timed  # record (ts offset, arrival) of what arrives, for latency
        self.recv: list[tuple[int, float]] = []
        self.count = 0
        self.first_ts: int | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.count += 1
        if self.timed:
            ts = int.from_bytes(data[4:8], "big")
            if self.first_ts is None:
                self.first_ts = ts
            self.recv.append(((ts - self.first_ts) % 2**32, time.perf_counter()))


async def load(
    calls: int,
    seconds: float,
    kind_relay: str,
    port_min: int,
    pin: bool,
    sample: int,
    bare: bool = False,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    phones: list[tuple[Phone, Phone]] = []
    for i in range(calls):
        pair = []
        timed = i % sample == 0
        for _side in range(2):
            _, p = await loop.create_datagram_endpoint(
                functools.partial(Phone, timed), local_addr=(HOST, 0)
            )
            sock = p.transport.get_extra_info("socket")  # type: ignore[union-attr]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            pair.append(p)
        phones.append((pair[0], pair[1]))
    addrs = [
        (c.transport.get_extra_info("sockname")[:2], a.transport.get_extra_info("sockname")[:2])  # type: ignore[union-attr]
        for c, a in phones
    ]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    relay_cpu = 0 if pin else None
    target = bare_main if bare else relay_main
    proc = ctx.Process(target=target, args=(child, kind_relay, addrs, port_min, relay_cpu))
    proc.start()
    ports = await loop.run_in_executor(None, parent.recv)
    # prebuilt packets and raw non-blocking sendto: per packet, only seq and ts are written
    payload = bytes(np.full(FRAME, 0xFF, np.uint8))  # µ-law silence
    ssrc = 0x10000
    senders: list[tuple[Any, bytearray, tuple[str, int], bool]] = []
    for i, ((caller, agent), (cport, aport)) in enumerate(zip(phones, ports, strict=True)):
        for side, (phone, port) in enumerate(((caller, cport), (agent, aport))):
            buf = bytearray(
                b"\x80\x00\x00\x00" + bytes(4) + (ssrc + 2 * i + side).to_bytes(4, "big")
            )
            buf += payload
            sock = phone.transport.get_extra_info("socket")  # type: ignore[union-attr]
            raw = socket.socket(fileno=os.dup(sock.fileno()))
            raw.setblocking(False)
            senders.append((raw.sendto, buf, (HOST, port), i % sample == 0))
    pack_into = struct.Struct("!HI").pack_into
    parent.send("start")
    n_ticks = int(seconds / 0.02)
    t0 = loop.time() + 0.05
    sent_at: dict[int, list[float]] = {}  # ts -> send times of the sampled phones, in order
    not_sent = 0
    for k in range(n_ticks):
        await asyncio.sleep(max(t0 + k * 0.02 - loop.time(), 0))
        ts = k * FRAME
        seq = k & 0xFFFF
        times: list[float] = []
        for sendto, buf, dest, timed in senders:
            pack_into(buf, 2, seq, ts)
            if timed:
                times.append(time.perf_counter())
            try:
                sendto(buf, dest)
            except BlockingIOError:
                not_sent += 1
        sent_at[ts] = times
    await asyncio.sleep(0.3)
    parent.send("stop")
    relay_stats = await loop.run_in_executor(None, parent.recv)
    proc.join(10)
    for sendto, *_ in senders:
        sendto.__self__.close()
    for c, a in phones:
        c.transport.close()  # type: ignore[union-attr]
        a.transport.close()  # type: ignore[union-attr]
    # latency: what a sampled phone received was sent by the other phone of its call; the
    # sampled phones are senders 2j (caller) and 2j+1 (agent) of sampled call j, in order
    lat = []
    received = 0
    sampled = [i for i in range(calls) if i % sample == 0]
    for j, i in enumerate(sampled):
        caller, agent = phones[i]
        for me, other_idx in ((caller, 2 * j + 1), (agent, 2 * j)):
            for ts, at in me.recv:
                if ts in sent_at:
                    lat.append(at - sent_at[ts][other_idx])
    for c, a in phones:
        received += c.count + a.count
    sent_total = 2 * calls * n_ticks - not_sent
    arr = np.array(lat) * 1e6 if lat else np.zeros(1)
    return {
        "calls": calls,
        "seconds": seconds,
        "sent": sent_total,
        "received": received,
        "loss": 1.0 - received / max(sent_total, 1),
        "pps": sent_total / seconds,
        "p50_us": float(np.percentile(arr, 50)),
        "p99_us": float(np.percentile(arr, 99)),
        **relay_stats,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--port-min", type=int, default=20000)
    ap.add_argument("--no-pin", action="store_true", help="do not pin relay/generator to cores")
    ap.add_argument("--sample", type=int, default=10, help="time one call in this many")
    ap.add_argument(
        "--bare", action="store_true", help="the reference: a bare relay, no media code at all"
    )
    args = ap.parse_args(argv)
    pin = not args.no_pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {1})  # the generator; the relay goes to core 0
    # one loop, one core: BLAS worker threads only spin (they doubled the CPU figure here)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        args.loop = "asyncio"
    print(
        f"{'calls':>6} {'loop':>8} {'pkt/s':>8} {'loss %':>7} {'p50 µs':>8} {'p99 µs':>8}"
        f" {'CPU µs/pkt':>10} {'relay CPU %':>11} {'frames/pass':>11}"
    )
    for n in args.calls:
        load_loop = _new_loop("uvloop" if args.loop == "uvloop" else "asyncio")
        try:
            r = load_loop.run_until_complete(
                load(n, args.seconds, args.loop, args.port_min, pin, max(args.sample, 1), args.bare)
            )
        finally:
            load_loop.close()
        per_pkt = r["cpu_s"] / max(r["rx"], 1) * 1e6
        print(
            f"{n:>6} {args.loop:>8} {r['pps']:>8.0f} {100 * r['loss']:>7.2f} {r['p50_us']:>8.0f}"
            f" {r['p99_us']:>8.0f} {per_pkt:>10.1f} {100 * r['cpu_s'] / args.seconds:>11.1f}"
            f" {r['frames_per_pass']:>11.1f}" + (f"  drops={r['drops']}" if r.get("drops") else "")
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
